"""Turning captured strings into the typed fields of an AccessRecord."""

from __future__ import annotations


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
