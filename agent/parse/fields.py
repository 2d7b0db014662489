"""Turning captured values into the typed fields of records, and reaching into nested ones."""

from __future__ import annotations

from typing import Any


def to_int(text: str | None) -> int:
    """`"512"` -> 512; `-`, empty or garbage -> 0 (nginx logs `-` for "none")."""
    if not text or text == "-":
        return 0
    try:
        return int(text)
    except ValueError:
        return 0


def to_float(text: str | None) -> float | None:
    """`"0.004"` -> 0.004; `-`, empty or garbage -> None."""
    if not text or text == "-":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value else None


def dash(text: str | None) -> str:
    """nginx and Apache write `-` for an empty value; trackd uses ""."""
    return "" if text is None or text == "-" else text


def get_field(fields: dict[str, Any], dotted: str) -> Any:
    """`fields["a"]["b"]` for `"a.b"` (a literal key containing dots wins), or None."""
    if dotted in fields:
        return fields[dotted]
    node: Any = fields
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
