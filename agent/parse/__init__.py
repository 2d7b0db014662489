"""Parsers: a log line in, an `AccessRecord` / `AppRecord` (or None when the line is not of the
format) out; app parsers also say CONTINUATION for the lines of a multi-line entry.

Parsers are callable classes that never raise on input: any text either parses or is reported as
not parsed (`explain` says why, for `trackd check`). Building one from a bad config raises
`FormatError` naming the config key at fault.
"""

from __future__ import annotations

from agent.parse.layout import FormatError
from agent.parse.registry import (
    AccessParser,
    AppParser,
    SourceSpec,
    build_access_parser,
    build_app_parser,
    build_parser,
)

__all__ = [
    "AccessParser",
    "AppParser",
    "FormatError",
    "SourceSpec",
    "build_access_parser",
    "build_app_parser",
    "build_parser",
]
