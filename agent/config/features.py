"""What this build of trackd does not do yet.

The schema models the whole SPEC §9 from the start; a valid key whose feature is not built yet is
rejected here with a clear "not supported yet" error (exit 3) instead of being silently ignored.
Each entry is removed by the change that builds the feature.
"""

from __future__ import annotations

from agent.config.schema import Config
from agent.config.yamlmarks import Path

SUPPORTED_ACCESS_FORMATS = frozenset({"combined", "common", "combined_cookie", "nginx"})
SUPPORTED_APP_FORMATS = frozenset({"json"})


def _later(what: str) -> str:
    return f"{what} is not supported yet by this version of trackd"


def not_supported_yet(config: Config) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    for i, src in enumerate(config.sources):
        if src.kind == "app":
            if src.format not in SUPPORTED_APP_FORMATS:
                out.append((("sources", i, "format"), _later(f"app format: {src.format}")))
        elif src.format not in SUPPORTED_ACCESS_FORMATS:
            out.append((("sources", i, "format"), _later(f"format: {src.format}")))
    if config.sink.type != "file":
        out.append((("sink", "type"), _later(f"sink type {config.sink.type!r}")))
    if config.identity.store != "sqlite":
        out.append((("identity", "store"), _later("a Redis identity store")))
    return out
