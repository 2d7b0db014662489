"""Undo the escaping web servers apply to logged values.

nginx (default `escape=default`) writes `"`, `\\`, control bytes and bytes >= 0x7F as `\\xHH`;
Apache writes `\\"`, `\\\\`, `\\n`, `\\t` and `\\xHH`; `escape=json` writes JSON string escapes.
Escaped bytes are reassembled before UTF-8 decoding, so a UTF-8 user agent logged as `\\xD0\\xB0`
comes back as text; invalid UTF-8 becomes U+FFFD (SPEC §2), never an error.
"""

from __future__ import annotations

import re

_BACKSLASH = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|.)", re.DOTALL)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "/": "/"}


def unescape(value: str) -> str:
    """Decode `\\xHH`, `\\uXXXX`, `\\"`, `\\\\` and the usual letter escapes; fast when none."""
    if "\\" not in value:
        return value
    out = bytearray()
    pos = 0
    for m in _BACKSLASH.finditer(value):
        out += value[pos : m.start()].encode("utf-8", "surrogateescape")
        esc = m.group(1)
        if esc[0] == "x" and len(esc) == 3:
            out.append(int(esc[1:], 16))
        elif esc[0] == "u" and len(esc) == 5:
            out += chr(int(esc[1:], 16)).encode("utf-8", "surrogatepass")
        else:
            out += _SIMPLE.get(esc, esc).encode("utf-8", "surrogateescape")
        pos = m.end()
    out += value[pos:].encode("utf-8", "surrogateescape")
    return out.decode("utf-8", "replace")
