"""Rule matching and templates (SPEC §3.3)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config.schema import RuleConfig
from agent.events.rules import Matcher, Template, compile_rules


def getter(fields: dict[str, Any]) -> Any:
    return fields.get


class TestMatch:
    @pytest.mark.parametrize(
        ("match", "fields", "expected"),
        [
            ({"method": "POST"}, {"method": "POST"}, True),
            ({"method": "POST"}, {"method": "GET"}, False),
            ({"path": "/signup*"}, {"path": "/signup/step2"}, True),
            ({"path": ["/a", "/b"]}, {"path": "/b"}, True),
            ({"path": {"regex": "/u/[0-9]+"}}, {"path": "/u/42"}, True),
            ({"path": {"regex": "/u/[0-9]+"}}, {"path": "/u/42/x"}, False),  # full match only
            ({"status": "3xx"}, {"status": 302}, True),
            ({"status": "3xx"}, {"status": 200}, False),
            ({"status": 302}, {"status": "302"}, True),
            ({"ok": True}, {"ok": True}, True),
            ({"event": "login"}, {}, False),  # a missing field never matches
            ({}, {"anything": 1}, True),
        ],
    )
    def test_match_forms(
        self, match: dict[str, Any], fields: dict[str, Any], expected: bool
    ) -> None:
        """Equality, globs, lists, full-match regexes, status classes; missing fields fail."""
        assert Matcher(match)(getter(fields)) is expected


class TestTemplates:
    def test_absent_field_makes_the_whole_template_absent(self) -> None:
        """`"Plan {plan}"` renders as absent when `plan` is missing, null or empty."""
        t = Template("Plan {plan}")
        assert t.render(getter({"plan": "pro"})) == "Plan pro"
        for fields in ({}, {"plan": None}, {"plan": ""}):
            assert t.render(getter(fields)) is None

    def test_single_field_keeps_its_type(self) -> None:
        """A template that is exactly one field keeps numbers and booleans as such."""
        assert Template("{n}").value(getter({"n": 42})) == 42
        assert Template("{b}").value(getter({"b": False})) is False
        assert Template("n={n}").value(getter({"n": 42})) == "n=42"

    def test_literal_and_escaped_braces(self) -> None:
        """Text without fields is a literal; `{{` and `}}` are literal braces."""
        assert Template("Signed Up").render(getter({})) == "Signed Up"
        assert Template("{{x}}").render(getter({})) == "{x}"


def test_logout_true_borrows_the_identify_templates() -> None:
    """`logout: true` uses the session/device templates of the source's first identify rule."""
    rules = compile_rules(
        (
            RuleConfig.model_validate(
                {
                    "name": "login",
                    "source": "app",
                    "match": {"event": "login"},
                    "identify": {"user": "{email}", "session": "{sid}", "device": "{dev}"},
                }
            ),
            RuleConfig.model_validate(
                {"name": "logout", "source": "app", "match": {"event": "logout"}, "logout": True}
            ),
        )
    )
    logout = rules["app"][1].logout
    assert logout is not None and logout.session is not None and logout.device is not None
    assert (logout.session.text, logout.device.text) == ("{sid}", "{dev}")


@given(st.text(max_size=60), st.dictionaries(st.text(max_size=8), st.text(max_size=8)))
def test_templates_never_raise(text: str, fields: dict[str, str]) -> None:
    """Any template text and any fields render to a string or None."""
    result = Template(text).render(getter(fields))
    assert result is None or isinstance(result, str)


def test_url_parts_ignore_a_fragment_before_the_query() -> None:
    """`/a#b?c` has no query: the fragment ends the target (found by the parsers' review)."""
    from agent.events.urls import UrlBuilder

    page = UrlBuilder(("token",), "https://ex.com").page("/a#b?c=1", "")
    assert (page.path, page.search, page.url) == ("/a", "", "https://ex.com/a")
