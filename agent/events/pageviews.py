"""The page-view filter (SPEC §3.2): which access records become `page` messages."""

from __future__ import annotations

import fnmatch
import re

from agent.config.schema import PageviewsConfig
from agent.events.bots import BotDetector
from agent.parse.request import split_target
from agent.records import AccessRecord

_CACHE_MAX = 50_000


def status_set(specs: tuple[str, ...]) -> frozenset[int]:
    """`("2xx", "304")` -> every status code they cover."""
    codes: set[int] = set()
    for spec in specs:
        if spec.endswith("xx"):
            base = int(spec[0]) * 100
            codes.update(range(base, base + 100))
        else:
            codes.add(int(spec))
    return frozenset(codes)


def path_of(target: str) -> str:
    """The path of a request target: without query or fragment; absolute-form URLs reduced."""
    if target[:1] == "/" and "#" not in target:
        return target.partition("?")[0]  # the common origin-form, without the general splitter
    return split_target(target)[0]


class PageviewFilter:
    """Callable: record -> True when it is a page view."""

    __slots__ = ("_bots", "_exclude", "_extensions", "_methods", "_paths", "_statuses")

    def __init__(self, cfg: PageviewsConfig) -> None:
        self._methods = frozenset(cfg.methods)
        self._statuses = status_set(cfg.statuses)
        self._extensions = frozenset(e.lower().lstrip(".") for e in cfg.skip_extensions)
        self._exclude = (
            re.compile("|".join(fnmatch.translate(p) for p in cfg.exclude_paths))
            if cfg.exclude_paths
            else None
        )
        self._bots = BotDetector(builtin=cfg.skip_bots, extra=cfg.bot_patterns)
        #: Request target -> whether its path may be a page view (extension, exclude_paths).
        self._paths: dict[str, bool] = {}

    def __call__(self, rec: AccessRecord) -> bool:
        if rec.method not in self._methods or rec.status not in self._statuses:
            return False
        target = rec.target
        ok = self._paths.get(target)
        if ok is None:
            ok = self._path_ok(target)
            if len(self._paths) >= _CACHE_MAX:
                self._paths.clear()
            self._paths[target] = ok
        return ok and not self._bots(rec.user_agent)

    def request_ok(self, method: str, target: str) -> bool:
        """The method and path part of `__call__`: whether a request may be a page view."""
        return method in self._methods and self._path_ok(target)

    def status_ok(self, status: int) -> bool:
        """The status part of `__call__`."""
        return status in self._statuses

    def _path_ok(self, target: str) -> bool:
        path = path_of(target)
        last = path.rpartition("/")[2]
        if "." in last and last.rpartition(".")[2].lower() in self._extensions:
            return False
        return self._exclude is None or self._exclude.match(path) is None

    def is_bot(self, user_agent: str) -> bool:
        return self._bots(user_agent)

    def __repr__(self) -> str:
        return f"PageviewFilter(methods={sorted(self._methods)}, bots={self._bots!r})"
