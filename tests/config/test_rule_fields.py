"""Rules naming a field their source's records can never have (`methd`, `{qury.plan}`) are config
errors at their YAML path, naming the field and the fields that exist; fields a format does
capture (nginx variables, regex groups, any key of a JSON source) stay valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_config_text
from agent.errors import ConfigError
from tests.helpers import NGINX_FORMAT, run_trackd

FILE = "/etc/trackd/trackd.yaml"
COMBINED = {"name": "web", "kind": "access", "paths": ["/var/log/a.log"], "format": "combined"}


def _config(source: dict[str, Any], rule: dict[str, Any]) -> str:
    base = {"name": "r1", "source": source["name"], "event": "Signed Up", **rule}
    return yaml.safe_dump({"sources": [source], "events": {"rules": [base]}}, sort_keys=False)


def _issues(text: str) -> dict[str, tuple[int | None, str]]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, FILE, {})
    return {i.path: (i.line, i.message) for i in info.value.issues}


def _loads(text: str) -> None:
    load_config_text(text, FILE, {})


@pytest.mark.timeout(10)
class TestNeverPresentFields:
    def test_a_misspelt_match_key_is_an_error_naming_the_fields_that_exist(self) -> None:
        """`match: {methd: POST}` on a combined source: an error at the key's path and line,
        suggesting `method` and listing SPEC §2's fields."""
        issues = _issues(_config(COMBINED, {"match": {"methd": "POST"}}))
        line, message = issues["events.rules[0].match.methd"]
        assert line is not None
        assert "source 'web' (access, combined) has no field 'methd'" in message
        assert "did you mean 'method'?" in message
        assert "its fields: ip, method, path, query.NAME" in message

    def test_a_misspelt_template_field_is_an_error_at_the_property(self) -> None:
        """`{qury.plan}` in a property: an error at that property, suggesting `query.plan`."""
        rule = {"match": {"method": "POST"}, "properties": {"Plan": "{qury.plan}"}}
        issues = _issues(_config(COMBINED, rule))
        _, message = issues["events.rules[0].properties.Plan"]
        assert "template '{qury.plan}'" in message
        assert "has no field 'qury.plan' (did you mean 'query.plan'?)" in message

    def test_identify_and_page_name_templates_are_checked_too(self) -> None:
        """Every template of a rule is checked: identify's user and traits, page_name."""
        rule = {
            "event": None,
            "identify": {"user": "{cookie.km_ni}", "traits": {"email": "{emial}"}},
            "page_name": "{pth}",
        }
        issues = _issues(_config(COMBINED, rule))
        assert set(issues) == {
            "events.rules[0].identify.traits.email",
            "events.rules[0].page_name",
        }

    def test_every_unknown_field_is_reported_at_once(self) -> None:
        """Two bad keys and a bad template: three errors in one `check`."""
        rule = {"match": {"methd": "POST", "stauts": 302}, "properties": {"P": "x {qury.p}"}}
        assert len(_issues(_config(COMBINED, rule))) == 3

    def test_the_raw_cookie_header_is_never_offered(self) -> None:
        """`cookie` (the whole header) never has a value: say to name one cookie instead."""
        source = {**COMBINED, "format": "combined_cookie"}
        _, message = _issues(_config(source, {"match": {"cookie": "*km_ai*"}}))[
            "events.rules[0].match.cookie"
        ]
        assert "cookie.NAME" in message

    def test_an_app_regex_source_has_only_its_groups(self) -> None:
        """An app `regex` source offers exactly its named groups."""
        source = {
            "name": "app",
            "kind": "app",
            "paths": ["/var/log/app.log"],
            "format": "regex",
            "regex": r"^(?P<ts>\S+) (?P<event>\w+) (?P<user>\S+)$",
        }
        _, message = _issues(_config(source, {"match": {"evnt": "login"}}))[
            "events.rules[0].match.evnt"
        ]
        assert "did you mean 'event'?" in message and "its fields: event, ts, user" in message


@pytest.mark.timeout(10)
class TestFieldsThatExist:
    def test_spec_fields_and_the_names_that_read_them_are_valid(self) -> None:
        """SPEC §2's fields, query.NAME, cookie.NAME and nginx-style names (`remote_addr`,
        `http_user_agent`, `target`) are valid on any access format."""
        rule = {
            "match": {"method": "POST", "status": "3xx", "remote_addr": "*", "target": "/a*"},
            "properties": {"Plan": "{query.plan}", "UA": "{http_user_agent}", "C": "{cookie.x}"},
        }
        _loads(_config(COMBINED, rule))

    def test_variables_an_nginx_format_captures_are_valid(self) -> None:
        """An nginx source offers every variable of its log_format by name."""
        source = {
            **COMBINED,
            "format": "nginx",
            "log_format": NGINX_FORMAT + " $upstream_addr $arg_plan",
        }
        _loads(
            _config(source, {"match": {"upstream_addr": "10.*"}, "properties": {"P": "{arg_plan}"}})
        )

    def test_a_variable_the_format_does_not_log_is_an_error(self) -> None:
        """The same nginx source without `$upstream_addr`: a rule on it is an error."""
        source = {**COMBINED, "format": "nginx", "log_format": NGINX_FORMAT}
        issues = _issues(_config(source, {"match": {"upstream_addr": "10.*"}}))
        assert "events.rules[0].match.upstream_addr" in issues

    def test_json_sources_may_carry_any_key(self) -> None:
        """A json access source and a json or logfmt app source: any name may occur."""
        for source in (
            {**COMBINED, "format": "json"},
            {"name": "app", "kind": "app", "paths": ["/var/log/a.log"], "format": "json"},
            {"name": "app", "kind": "app", "paths": ["/var/log/a.log"], "format": "logfmt"},
        ):
            _loads(_config(source, {"match": {"whatever.nested": "x"}, "properties": {"P": "{q}"}}))


@pytest.mark.timeout(30)
def test_check_exits_3_and_names_the_field(tmp_path: Path) -> None:
    """`trackd check` on a rule with `methd`: exit 3, the file, line, YAML path and field."""
    cfg = tmp_path / "trackd.yaml"
    cfg.write_text(
        _config({**COMBINED, "paths": [str(tmp_path / "a.log")]}, {"match": {"methd": "POST"}})
    )
    proc = run_trackd("check", "-c", str(cfg))
    assert proc.returncode == 3
    assert f"{cfg}:" in proc.stderr
    assert "events.rules[0].match.methd: source 'web' (access, combined) has no field 'methd'" in (
        proc.stderr
    )
