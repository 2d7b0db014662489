"""trackd: a server-side analytics agent (see README.md and SPEC.md)."""

from __future__ import annotations

__version__ = "0.1.0"
