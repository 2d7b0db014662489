"""Which fields a source's records can have, so that a rule naming one they never have — a typo
like `methd`, `{qury.plan}` — is a config error at its YAML path instead of a rule that silently
never matches or a property that is never sent.

An access record offers SPEC §2's fields whatever its format (`ip method path query.NAME protocol
status bytes referrer user_agent cookie.NAME host request_time forwarded_for`), the names that
read them (`remote_addr`, `http_user_agent`, `target`, `query`, `request`, … — `accessor.py`), and
the other values its format captures, by name: the variables of an nginx `log_format`, the
directives of an Apache one, the groups of a `regex`. A `json` access source may carry any key,
and so may `json` and `logfmt` app entries: only the raw Cookie header (never offered, SPEC §8)
can be ruled out there. An app `regex` source has exactly its named groups.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from agent.parse.apache import FEEDS as APACHE_FEEDS
from agent.parse.nginx import FEEDS as NGINX_FEEDS

#: SPEC §2's fields, as `check` lists them.
ACCESS_FIELDS = (
    "ip method path query.NAME protocol status bytes referrer user_agent cookie.NAME host "
    "request_time forwarded_for"
).split()
_ACCESS_NAMES = frozenset(
    {f for f in ACCESS_FIELDS if not f.endswith(".NAME")}
    | {"target", "query", "request", "referer"}
    | {
        name
        for name, (feed, _rank) in {**NGINX_FEEDS, **APACHE_FEEDS}.items()
        if feed not in ("ts", "ts_frac")
    }
)
_PREFIXES = ("query.", "cookie.")
_NEVER = frozenset({"cookie", "http_cookie"})
_TEMPLATE_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")


def template_fields(text: str) -> list[str]:
    """The field names a `{field}` template reads (`{{` and `}}` are literal braces)."""
    return [m.group(1).strip() for m in _TEMPLATE_FIELD.finditer(text) if m.group(1)]


@dataclass(frozen=True, slots=True)
class SourceFields:
    """What the records of one source can hold. `captured`: the names its format captures
    besides SPEC §2's fields (access), or all its fields (app); None when any name may occur."""

    source: str
    kind: str
    format: str
    captured: frozenset[str] | None

    def problem(self, field: str) -> str | None:
        """Why `field` can never have a value in this source's records, or None if it can."""
        if self.kind == "access" and field in _NEVER:
            return (
                f"{field!r} is never offered to rules: the raw Cookie header is not kept "
                "(SPEC §8); name one cookie as cookie.NAME"
            )
        if self._has(field):
            return None
        hint = difflib.get_close_matches(field, self._candidates(field), n=1, cutoff=0.75)
        mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        return (
            f"source {self.source!r} ({self.kind}, {self.format}) has no field {field!r}{mean}; "
            f"its fields: {', '.join(self._listing())}"
        )

    def _has(self, field: str) -> bool:
        if self.captured is None or field in self.captured:
            return True
        if self.kind != "access":
            return False
        if field in _ACCESS_NAMES:
            return True
        return any(field.startswith(p) and len(field) > len(p) for p in _PREFIXES)

    def _listing(self) -> list[str]:
        captured = sorted(self.captured or ())
        if self.kind != "access":
            return captured
        extra = [n for n in captured if n not in _ACCESS_NAMES]
        return [*ACCESS_FIELDS, "target", *extra]

    def _candidates(self, field: str) -> list[str]:
        names = set(self.captured or ())
        if self.kind == "access":
            names |= _ACCESS_NAMES
            _, dot, rest = field.partition(".")
            if dot and rest:
                names |= {p + rest for p in _PREFIXES}
        return sorted(names)
