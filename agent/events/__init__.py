"""Events: which records become messages, and the messages' exact shape (SPEC §3)."""
