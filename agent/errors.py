"""trackd's error tree: every error says what happened, where, and what would fix it.

    TrackdError                 base; carries an exit code (SPEC §6)
    ├── ConfigError             invalid config: a list of ConfigIssue (YAML path, line, message); exit 3
    ├── StartupError            cannot start: state locked, state corrupt, unwritable dir; exit 3
    ├── StateError              the state database failed while running; exit 1
    ├── SinkError               the sink cannot be opened or written; exit 1
    └── OutboxFull              a batch read waited too long for the outbox to drain; exit 1

Nothing below the CLI prints: errors carry their message and the CLI decides how to show it.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3


class TrackdError(Exception):
    """Base of every error trackd raises on purpose."""

    exit_code = EXIT_RUNTIME


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file: where (YAML path, line) and what."""

    path: str
    message: str
    line: int | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = self.path or "(top level)"
        if self.line is not None:
            loc = f"{self.file}:{self.line}: " if self.file else f"line {self.line}: "
        else:
            loc = f"{self.file}: " if self.file else ""
        return f"{loc}{where}: {self.message}"


class ConfigError(TrackdError):
    """The config is invalid; `issues` lists every problem found, not only the first."""

    exit_code = EXIT_CONFIG

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class StartupError(TrackdError):
    """trackd cannot start (lock held, state unreadable or corrupt, directory not writable)."""

    exit_code = EXIT_CONFIG


class StateError(TrackdError):
    """The state database failed while running (disk full, read-only, locked)."""


class SinkError(TrackdError):
    """The sink cannot be opened or written."""


class OutboxFull(TrackdError):
    """`run --once`/backfill: the outbox stayed at its limit (the endpoint takes nothing) for
    as long as the read may wait; what was read is committed, the rest waits for the next run."""
