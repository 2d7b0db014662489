"""From a source's config to its parser."""

from __future__ import annotations

from typing import Protocol

from agent.parse.app import JsonAppParser
from agent.parse.clf import ClfParser
from agent.parse.nginx import compile_nginx
from agent.records import AccessRecord, AppRecord, Continuation


class AccessParser(Protocol):
    """A line (decoded text, no newline) in; a record, or None when the line is not of the format."""

    def __call__(self, line: str) -> AccessRecord | None: ...

    def explain(self, line: str) -> str:
        """Why `line` did not parse, in words an operator can act on."""
        ...


def build_access_parser(fmt: str, log_format: str | None = None) -> AccessParser:
    """The parser for an access source's `format` (and `log_format`). Raises ValueError if invalid."""
    if fmt in ("combined", "common", "combined_cookie"):
        return ClfParser(fmt)
    if fmt == "nginx":
        if not log_format:
            raise ValueError("format nginx needs log_format")
        return compile_nginx(log_format)
    raise ValueError(f"format {fmt!r} is not supported yet")


class AppParser(Protocol):
    """An app log line in; an entry, CONTINUATION (the line continues the previous entry), or
    None when the line is not of the format."""

    def __call__(self, line: str) -> AppRecord | Continuation | None: ...

    def explain(self, line: str) -> str:
        """Why `line` did not parse, in words an operator can act on."""
        ...


def build_app_parser(
    fmt: str, *, time_field: str | None, time_format: str | None, timezone: str = "UTC"
) -> AppParser:
    """The parser for an app source's `format`. Raises ValueError if not available."""
    if fmt == "json":
        return JsonAppParser(time_field, time_format, timezone)
    raise ValueError(f"app format {fmt!r} is not supported yet")
