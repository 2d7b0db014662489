"""The page-view filter (SPEC §3.2): methods, statuses, static extensions, bots, excluded paths."""

from __future__ import annotations

from typing import Any

import pytest
from crawleruseragents import CRAWLER_USER_AGENTS_DATA

from agent.config.schema import PageviewsConfig
from agent.events.bots import BotDetector
from agent.events.pageviews import PageviewFilter
from agent.parse import build_access_parser
from agent.records import AccessRecord
from tests.helpers import UA

BASE = build_access_parser("combined")(
    f'203.0.113.9 - - [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 512 "-" "{UA}"'
)
BROWSERS = [
    UA,
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
]


def hit(**changes: Any) -> AccessRecord:
    assert BASE is not None
    return BASE._replace(**changes)


def default() -> PageviewFilter:
    return PageviewFilter(PageviewsConfig())


class TestMethodsAndStatuses:
    @pytest.mark.parametrize(("method", "page"), [("GET", True), ("HEAD", False), ("POST", False)])
    def test_only_get_by_default(self, method: str, page: bool) -> None:
        """GET is a page view; HEAD and POST are not (SPEC §3.2 default methods: [GET])."""
        assert default()(hit(method=method)) is page

    @pytest.mark.parametrize(
        ("status", "page"), [(200, True), (204, True), (301, True), (304, True), (404, False)]
    )
    def test_2xx_and_3xx_by_default(self, status: int, page: bool) -> None:
        """Statuses 2xx and 3xx are page views, 4xx and 5xx are not."""
        assert default()(hit(status=status)) is page

    def test_configured_codes_and_classes(self) -> None:
        """`statuses` mixes exact codes and classes; `methods` replaces the default list."""
        pv = PageviewFilter(PageviewsConfig(methods=("GET", "POST"), statuses=("200", "4xx")))
        assert pv(hit(method="POST", status=200)) and pv(hit(status=404))
        assert not pv(hit(status=301)) and not pv(hit(status=201))

    def test_garbage_request_is_not_a_page(self) -> None:
        """A scanner's unreadable request line (no method) never becomes a page view."""
        assert not default()(hit(method="", target="\x16\x03\x01", protocol=""))


class TestStaticFiles:
    @pytest.mark.parametrize(
        "target", ["/static/app.js", "/site.CSS", "/img/logo.png?v=3", "/favicon.ico", "/a.woff2"]
    )
    def test_static_extensions_are_skipped(self, target: str) -> None:
        """Assets (any case, with or without a query) are not page views."""
        assert not default()(hit(target=target))

    @pytest.mark.parametrize("target", ["/", "/pricing", "/v1.2/docs", "/report.html", "/a.js/"])
    def test_pages_with_dots_elsewhere_are_pages(self, target: str) -> None:
        """Only the last path segment's extension counts; `.html` is a page."""
        assert default()(hit(target=target))

    def test_extension_list_is_configurable(self) -> None:
        """A custom `skip_extensions` replaces the default (leading dots tolerated)."""
        pv = PageviewFilter(PageviewsConfig(skip_extensions=(".pdf",)))
        assert pv(hit(target="/app.js")) and not pv(hit(target="/paper.PDF"))

    def test_absolute_form_targets_use_their_path(self) -> None:
        """A proxy-style `GET http://host/x.css` is judged by its path."""
        assert not default()(hit(target="http://shop.example.com/x.css?y=1"))
        assert default()(hit(target="https://shop.example.com/cart?y=1"))


class TestExcludedPaths:
    def test_globs_match_the_path_without_query(self) -> None:
        """`/api/*` excludes everything below /api/ (any depth); `/healthz` only itself."""
        pv = PageviewFilter(PageviewsConfig(exclude_paths=("/api/*", "/healthz")))
        assert not pv(hit(target="/api/v1/items?page=2"))
        assert not pv(hit(target="/healthz?probe=1"))
        assert pv(hit(target="/api")) and pv(hit(target="/healthz/more"))
        assert pv(hit(target="/pricing"))

    def test_character_classes_and_case(self) -> None:
        """Globs support `?` and `[…]`, and are case-sensitive like paths."""
        pv = PageviewFilter(PageviewsConfig(exclude_paths=("/admin/[0-9]?", "/Wp-*")))
        assert not pv(hit(target="/admin/42")) and pv(hit(target="/admin/x2"))
        assert not pv(hit(target="/Wp-login.php")) and pv(hit(target="/wp-login.php"))


class TestBots:
    def test_every_pattern_of_the_builtin_list_catches_its_examples(self) -> None:
        """Each of the ~1,500 crawler-user-agents entries recognises its own sample agents."""
        bots = BotDetector()
        missed = [
            agent
            for entry in CRAWLER_USER_AGENTS_DATA
            for agent in entry.get("instances", [])
            if not bots(agent)
        ]
        assert missed == []

    @pytest.mark.parametrize("agent", BROWSERS)
    def test_browsers_are_not_bots(self, agent: str) -> None:
        """Current desktop and mobile browsers are page views."""
        assert default()(hit(user_agent=agent))

    @pytest.mark.parametrize(
        "agent",
        [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2)",
            "curl/8.5.0",
            "python-requests/2.32.3",
        ],
    )
    def test_crawlers_are_skipped(self, agent: str) -> None:
        """Search engines, AI crawlers and HTTP libraries are not page views."""
        assert not default()(hit(user_agent=agent))

    def test_bot_patterns_add_regexes_with_their_own_flags(self) -> None:
        """`bot_patterns` are searched in the agent; a pattern's `(?i)` applies to it alone."""
        pv = PageviewFilter(PageviewsConfig(bot_patterns=("(?i)uptime-?check", "^Internal/")))
        assert not pv(hit(user_agent="UPTIMECHECK v2")) and not pv(hit(user_agent="Internal/1"))
        assert pv(hit(user_agent="Mozilla Internal/1"))

    def test_skip_bots_false_keeps_crawlers(self) -> None:
        """With `skip_bots: false` only `bot_patterns` filter agents."""
        pv = PageviewFilter(PageviewsConfig(skip_bots=False, bot_patterns=("^curl/",)))
        assert pv(hit(user_agent="Googlebot/2.1")) and not pv(hit(user_agent="curl/8"))

    def test_an_empty_agent_is_not_a_bot(self) -> None:
        """A hit without a User-Agent still counts (the list matches names, not absence)."""
        assert default()(hit(user_agent=""))
