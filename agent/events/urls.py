"""Paths, queries, URLs and referrers as messages carry them, with parameters redacted (SPEC §8)."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote

from agent.parse.request import split_target

REDACTED = "REDACTED"
_CACHE_MAX = 20_000


class PageUrl(NamedTuple):
    path: str
    search: str
    url: str | None


class UrlBuilder:
    """Split request targets into path/search/url and redact sensitive query parameters."""

    __slots__ = ("_base", "_cache", "_redact", "_ref_cache")

    def __init__(self, redact_params: tuple[str, ...], base_url: str | None) -> None:
        self._redact = frozenset(p.lower() for p in redact_params)
        self._base = base_url.rstrip("/") if base_url else None
        self._cache: dict[tuple[str, str], PageUrl] = {}
        self._ref_cache: dict[str, str] = {}

    def redact_query(self, query: str) -> str:
        """`a=1&token=x` -> `a=1&token=REDACTED` (names compared case-insensitively, decoded)."""
        if not self._redact or not query:
            return query
        parts = query.split("&")
        changed = False
        for i, part in enumerate(parts):
            name, eq, _value = part.partition("=")
            if eq and name and unquote(name).lower() in self._redact:
                parts[i] = f"{name}={REDACTED}"
                changed = True
        return "&".join(parts) if changed else query

    def page(self, target: str, host: str, scheme: str | None = None) -> PageUrl:
        key = (target, host)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if target.startswith(("http://", "https://")):
            scheme_part, rest = target.split("://", 1)
            slash = rest.find("/")
            host = rest[:slash] if slash >= 0 else rest
            scheme = scheme_part
        path, query = split_target(target)
        search = f"?{self.redact_query(query)}" if query else ""
        if host:
            url: str | None = f"{scheme or self._base_scheme()}://{host}{path}{search}"
        elif self._base:
            url = f"{self._base}{path}{search}"
        else:
            url = None
        hit = PageUrl(path, search, url)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = hit
        return hit

    def referrer(self, referrer: str) -> str:
        if "?" not in referrer:
            return referrer
        hit = self._ref_cache.get(referrer)
        if hit is None:
            head, _, rest = referrer.partition("?")
            query, hash_, fragment = rest.partition("#")
            hit = f"{head}?{self.redact_query(query)}{hash_}{fragment}"
            if len(self._ref_cache) >= _CACHE_MAX:
                self._ref_cache.clear()
            self._ref_cache[referrer] = hit
        return hit

    @property
    def base_url(self) -> str | None:
        return self._base

    def _base_scheme(self) -> str:
        if self._base:
            return self._base.split("://", 1)[0]
        return "https"
