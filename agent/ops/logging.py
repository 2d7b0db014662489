"""structlog, configured once: JSON lines off a TTY (journald), console on one; always stderr.

A redaction processor runs before rendering: keys that name secrets or cookies are masked, and
cookie-like `name=value` pairs inside strings lose their values. stdout belongs to the `-` sink.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

_SECRET_KEYS = re.compile(
    r"(api_?key|write_?key|token|secret|password|passwd|cookie|authorization|km_ai|km_ni)", re.I
)
_COOKIE_PAIR = re.compile(
    r"\b(km_ai|km_ni|km_[a-z]+|session[a-z_]*|sid|[A-Za-z0-9_]*token)=([^;&\s\"]+)", re.I
)
REDACTED = "<redacted>"

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40}


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key == "event":
            continue
        value = event[key]
        if _SECRET_KEYS.search(key):
            event[key] = REDACTED
        elif isinstance(value, str) and "=" in value:
            event[key] = _COOKIE_PAIR.sub(lambda m: f"{m.group(1)}={REDACTED}", value)
    return event


def _dumps(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def setup_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog (and the stdlib root logger that libraries use) to write to stderr."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    numeric = _LEVELS.get(level, 20)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(stream=stream, level=max(numeric, logging.WARNING), force=True)
