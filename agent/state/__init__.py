"""State: the single SQLite database under `state_dir` (SPEC §5)."""
