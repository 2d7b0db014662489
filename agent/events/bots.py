"""Bot user agents: the maintained `crawler-user-agents` list plus `bot_patterns` (SPEC §3.2).

The list has ~1,500 patterns; matching them all costs tens of microseconds, so verdicts are cached
per user-agent string (a site sees far fewer distinct agents than hits).
"""

from __future__ import annotations

import re

from crawleruseragents import CRAWLER_USER_AGENTS_DATA

_CACHE_MAX = 50_000


def builtin_patterns() -> list[str]:
    return [str(entry["pattern"]) for entry in CRAWLER_USER_AGENTS_DATA]


class BotDetector:
    """Callable: user agent -> True when it is a crawler."""

    __slots__ = ("_cache", "_count", "_rx")

    def __init__(self, *, builtin: bool = True, extra: tuple[str, ...] = ()) -> None:
        patterns = (builtin_patterns() if builtin else []) + list(extra)
        self._count = len(patterns)
        self._rx = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self._cache: dict[str, bool] = {}

    def __call__(self, user_agent: str) -> bool:
        if self._rx is None:
            return False
        hit = self._cache.get(user_agent)
        if hit is None:
            hit = self._rx.search(user_agent) is not None
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[user_agent] = hit
        return hit

    def __repr__(self) -> str:
        return f"BotDetector(patterns={self._count})"
