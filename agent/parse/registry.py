"""From a source's config to its parser: every access and app format of SPEC §2.

`build_parser(src)` is what the pipeline, `trackd check` and config validation call; it reads
only the attributes of `SourceSpec`, so this package does not depend on the config package.
Every builder raises `FormatError` (a ValueError) whose `key` names the config key at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from agent.parse.apache import compile_apache
from agent.parse.app import JsonAppParser, LogfmtAppParser, RegexAppParser
from agent.parse.clf import ClfParser
from agent.parse.jsonaccess import JsonAccessParser
from agent.parse.layout import FormatError
from agent.parse.nginx import compile_nginx
from agent.parse.regexfmt import compile_regex
from agent.records import AccessRecord, AppRecord, Continuation

ACCESS_FORMATS = ("combined", "common", "combined_cookie", "nginx", "apache", "json", "regex")
APP_FORMATS = ("json", "logfmt", "regex")


class AccessParser(Protocol):
    """A line (decoded text, no newline) in; a record, or None when the line is not of the format."""

    def __call__(self, line: str) -> AccessRecord | None: ...

    def explain(self, line: str) -> str:
        """Why `line` did not parse, in words an operator can act on."""
        ...


class AppParser(Protocol):
    """An app log line in; an entry, CONTINUATION (the line continues the previous entry), or
    None when the line is not of the format."""

    def __call__(self, line: str) -> AppRecord | Continuation | None: ...

    def explain(self, line: str) -> str:
        """Why `line` did not parse, in words an operator can act on."""
        ...


class SourceSpec(Protocol):
    """The parts of a source's config that choose and configure its parser."""

    @property
    def kind(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def log_format(self) -> str | None: ...
    @property
    def regex(self) -> str | None: ...
    @property
    def fields(self) -> Mapping[str, str] | None: ...
    @property
    def time_field(self) -> str | None: ...
    @property
    def time_format(self) -> str | None: ...
    @property
    def timezone(self) -> str: ...


def build_parser(src: SourceSpec) -> AccessParser | AppParser:
    """The parser for a source (access or app). Raises FormatError if the config cannot work."""
    if src.kind == "app":
        return build_app_parser(
            src.format,
            time_field=src.time_field,
            time_format=src.time_format,
            timezone=src.timezone,
            regex=src.regex,
        )
    return build_access_parser(
        src.format,
        src.log_format,
        regex=src.regex,
        fields=src.fields,
        time_field=src.time_field,
        time_format=src.time_format,
        timezone=src.timezone,
    )


def build_access_parser(
    fmt: str,
    log_format: str | None = None,
    *,
    regex: str | None = None,
    fields: Mapping[str, str] | None = None,
    time_field: str | None = None,
    time_format: str | None = None,
    timezone: str = "UTC",
) -> AccessParser:
    """The parser for an access source's `format` and its options. Raises FormatError."""
    if fmt in ("combined", "common", "combined_cookie"):
        return ClfParser(fmt)
    if fmt in ("nginx", "apache"):
        if not log_format or not log_format.strip():
            raise FormatError(f"format {fmt} needs log_format", key="log_format")
        try:
            if fmt == "nginx":
                return compile_nginx(log_format)
            return compile_apache(log_format, timezone)
        except FormatError as exc:
            exc.key = exc.key or "log_format"
            raise
    if fmt == "json":
        return JsonAccessParser(fields, time_field, time_format, timezone)
    if fmt == "regex":
        if not regex:
            raise FormatError("format regex needs regex (with named groups)", key="regex")
        return compile_regex(
            regex, time_field=time_field, time_format=time_format, timezone=timezone
        )
    raise FormatError(
        f"unknown access format {fmt!r} (expected one of: {', '.join(ACCESS_FORMATS)})",
        key="format",
    )


def build_app_parser(
    fmt: str,
    *,
    time_field: str | None,
    time_format: str | None,
    timezone: str = "UTC",
    regex: str | None = None,
) -> AppParser:
    """The parser for an app source's `format` and its options. Raises FormatError."""
    if fmt == "json":
        return JsonAppParser(time_field, time_format, timezone)
    if fmt == "logfmt":
        return LogfmtAppParser(time_field, time_format, timezone)
    if fmt == "regex":
        if not regex:
            raise FormatError("format regex needs regex (with named groups)", key="regex")
        return RegexAppParser(regex, time_field, time_format, timezone)
    raise FormatError(
        f"unknown app format {fmt!r} (expected one of: {', '.join(APP_FORMATS)})", key="format"
    )
