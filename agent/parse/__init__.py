"""Parsers: a log line in, an `AccessRecord` (or None when the line is not of the format) out.

Parsers are callable classes that never raise on input: any byte sequence either parses or is
reported as not parsed (`explain` says why, for `trackd check`).
"""

from __future__ import annotations

from agent.parse.registry import AccessParser, AppParser, build_access_parser, build_app_parser

__all__ = ["AccessParser", "AppParser", "build_access_parser", "build_app_parser"]
