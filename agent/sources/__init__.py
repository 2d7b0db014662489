"""Sources: finding files, knowing them across renames and restarts, reading complete lines."""
