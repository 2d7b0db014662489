"""From a source's config to its parser."""

from __future__ import annotations

from typing import Protocol

from agent.parse.clf import ClfParser
from agent.parse.nginx import compile_nginx
from agent.records import AccessRecord


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
