"""Cookie headers as browsers send them (RFC 6265 §5.4: `name=value; name2=value2`).

Only the cookie names trackd needs are extracted (CONVENTIONS.md, "cookie parsing only for the
cookie names configured"). Names are case-sensitive; the first occurrence of a name wins, as
servers read it; a value runs to the next `;` (it may hold `=`); whitespace around names and
values is dropped; pieces without a name (Chrome sends a nameless cookie as its bare value) are
skipped; anything else odd is tolerated, never an error. Values come back raw (RFC 6265's
surrounding quotes and `%XX` intact): identity normalisation (SPEC §1.1) decodes them exactly
once, and `accessor.cookie_value` does the same for rules.
"""

from __future__ import annotations

import re


class CookieExtractor:
    """Extract the configured cookie names from a Cookie header; garbage is tolerated."""

    __slots__ = ("_names", "_rx")

    def __init__(self, names: list[str] | tuple[str, ...]) -> None:
        self._names = tuple(dict.fromkeys(names))
        alternation = "|".join(re.escape(n) for n in sorted(self._names, key=len, reverse=True))
        # A name starts the header or follows `;` (browsers put one space after it; tolerate any
        # whitespace), and ends at `=`; the value runs to the next `;`.
        self._rx = (
            re.compile(rf"(?:^|;)[ \t]*({alternation})[ \t]*=([^;]*)") if self._names else None
        )

    def __call__(self, header: str) -> dict[str, str]:
        if self._rx is None or not header or header == "-":
            return {}
        found: dict[str, str] = {}
        for name, value in self._rx.findall(header):
            if name not in found:
                found[name] = value.strip(" \t")
        return found

    def __repr__(self) -> str:
        return f"CookieExtractor({list(self._names)!r})"


def parse_cookie_header(header: str) -> dict[str, str]:
    """Every cookie of a header (first occurrence wins); for `check` output and rules' `cookie.*`."""
    out: dict[str, str] = {}
    if not header or header == "-":
        return out
    for part in header.split(";"):
        name, eq, value = part.partition("=")
        name = name.strip(" \t")
        if eq and name and name not in out:
            out[name] = value.strip(" \t")
    return out
