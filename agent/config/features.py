"""What this build of trackd does not do yet.

The schema models the whole SPEC §9 from the start; a valid key whose feature is not built yet is
rejected here with a clear "not supported yet" error (exit 3) instead of being silently ignored.
Each entry is removed by the change that builds the feature (the last one, the Redis identity
store, is built: the list is empty, and stays the place for the next such key).
"""

from __future__ import annotations

from agent.config.schema import Config
from agent.config.yamlmarks import Path


def _later(what: str) -> str:
    return f"{what} is not supported yet by this version of trackd"


def not_supported_yet(config: Config) -> list[tuple[Path, str]]:
    return []
