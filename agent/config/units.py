"""Durations and sizes as the config writes them (SPEC §9).

Durations: `^\\d+(\\.\\d+)?(ms|s|m|h|d)$` or a bare number of seconds -> float seconds.
Sizes: `^\\d+(B|KB|MB|GB|KiB|MiB|GiB)?$` or a bare number of bytes -> int bytes (KB = 1000, KiB = 1024).
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$", re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+)(B|KB|MB|GB|KiB|MiB|GiB)?$", re.ASCII)
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


def parse_duration(value: object) -> float:
    """`"250ms"`, `"30s"`, `"5m"`, `"7d"` or a bare number of seconds -> seconds.

    Only SPEC §9's grammar: `inf`, `nan`, `1e9`, `1_000` or `+5` (which Python's float() takes)
    are not durations, nor is a YAML `.inf`/`.nan`.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} (use e.g. 250ms, 30s, 5m, 24h, 7d)")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"invalid duration {value!r} (use e.g. 250ms, 30s, 5m, 24h, 7d)")
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    raise ValueError(f"invalid duration {value!r} (use e.g. 250ms, 30s, 5m, 24h, 7d)")


def parse_size(value: object) -> int:
    """`"64KiB"`, `"2GiB"`, `"10MB"` or a bare number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r} (use e.g. 65536, 64KiB, 10MB, 2GiB)")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value.strip())
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError(f"invalid size {value!r} (use e.g. 65536, 64KiB, 10MB, 2GiB)")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
