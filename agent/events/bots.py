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
    """Callable: user agent -> True when it is a crawler.

    The built-in patterns are joined into one regex; `bot_patterns` are compiled one by one, so
    that a pattern with its own flags (`(?i)crawler`) keeps them (Python refuses global flags
    in the middle of a joined pattern). Patterns are searched for anywhere in the agent."""

    __slots__ = ("_cache", "_count", "_extra", "_rx")

    def __init__(self, *, builtin: bool = True, extra: tuple[str, ...] = ()) -> None:
        patterns = builtin_patterns() if builtin else []
        self._count = len(patterns) + len(extra)
        self._rx = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self._extra = tuple(re.compile(p) for p in extra)
        self._cache: dict[str, bool] = {}

    def __call__(self, user_agent: str) -> bool:
        hit = self._cache.get(user_agent)
        if hit is None:
            hit = (self._rx is not None and self._rx.search(user_agent) is not None) or any(
                rx.search(user_agent) is not None for rx in self._extra
            )
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[user_agent] = hit
        return hit

    def __repr__(self) -> str:
        return f"BotDetector(patterns={self._count})"
