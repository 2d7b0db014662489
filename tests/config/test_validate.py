"""Config validation builds every source's parser: a log_format, regex, fields: mapping or
time_format that cannot work is an error at its YAML path and line (exit 3), not a crash later."""

from __future__ import annotations

import itertools

import pytest
import yaml

from agent.config import load_config_text
from agent.errors import ConfigError
from agent.parse import build_parser


def issues(sources: list[dict[str, object]]) -> dict[str, tuple[int | None, str]]:
    with pytest.raises(ConfigError) as info:
        load_config_text(yaml.safe_dump({"sources": sources}, sort_keys=False), "/c/t.yaml", {})
    return {i.path: (i.line, i.message) for i in info.value.issues}


_names = itertools.count()


def source(fmt: str, kind: str = "access", **options: object) -> dict[str, object]:
    return {
        "name": f"s{next(_names)}",
        "kind": kind,
        "paths": ["/var/log/x.log"],
        "format": fmt,
        **options,
    }


class TestCompiledAtCheckTime:
    def test_nginx_log_format_without_time(self) -> None:
        """An nginx format without a time variable is reported at sources[i].log_format."""
        found = issues([source("nginx", log_format='$remote_addr "$request" $status')])
        line, message = found["sources[0].log_format"]
        assert line == 7 and "no time variable" in message and "$time_local" in message

    def test_apache_unknown_directive(self) -> None:
        """An Apache directive that does not exist is named."""
        found = issues([source("apache", log_format='%h %t "%r" %>s %Z')])
        assert "unknown directive %Z" in found["sources[0].log_format"][1]

    def test_every_broken_source_is_reported_at_once(self) -> None:
        """Several broken sources: one error each, each at its own key."""
        found = issues(
            [
                source("nginx", log_format="log_format main escape=xml '$time_local $request';"),
                source("regex", regex="(?P<path>\\S+"),
                source("regex", regex="(?P<ts>\\S+) (?P<path>\\S+)", time_field="when"),
                source("json", fields={"agent": "ua"}),
                source("logfmt", kind="app", time_format="%k:%M"),
                source("regex", kind="app", regex="(\\S+) (\\S+)"),
            ]
        )
        assert "unknown escape=xml" in found["sources[0].log_format"][1]
        assert "invalid regular expression" in found["sources[1].regex"][1]
        assert "'when' is not a group" in found["sources[2].time_field"][1]
        assert "'agent' is not a trackd field" in found["sources[3].fields.agent"][1]
        assert "%k" in found["sources[4].time_format"][1]
        assert "no named groups" in found["sources[5].regex"][1]

    def test_an_invalid_timezone_does_not_hide_other_problems(self) -> None:
        """A bad timezone is reported, and the log_format is still checked."""
        found = issues([source("apache", log_format="%h %>s", timezone="Mars/Olympus")])
        assert "unknown time zone" in found["sources[0].timezone"][1]
        assert "no time" in found["sources[0].log_format"][1]


class TestNewFormatsLoad:
    @pytest.mark.parametrize(
        "src",
        [
            source("apache", log_format='LogFormat "%h %l %u %t \\"%r\\" %>s %b" common'),
            source("json", fields={"user_agent": "ua", "ip": "client"}, time_field="ts"),
            source("regex", regex='^(?P<ip>\\S+) \\[(?P<time>[^\\]]+)\\] "(?P<request>[^"]*)"'),
            source("logfmt", kind="app", time_field="ts", time_format="unix_ms"),
            source(
                "regex", kind="app", regex="^(?P<ts>\\S+) (?P<msg>.*)$", timezone="Europe/Paris"
            ),
        ],
    )
    def test_formats_load_and_build(self, src: dict[str, object]) -> None:
        """apache, json, regex access and logfmt, regex app sources are supported: the config
        loads and the pipeline's parser builds from it."""
        config = load_config_text(yaml.safe_dump({"sources": [src]}), "/c/t.yaml", {})
        assert build_parser(config.sources[0]) is not None


def test_nginx_braced_variables_hint_at_the_escape() -> None:
    """`${status}` in a log_format reads as an env reference (interpolation runs everywhere);
    the error says how to write nginx's variable, and `$${status}` works."""
    found = issues([source("nginx", log_format='[$time_local] "$request" ${status}')])
    assert "write $${status} or $status" in found["sources[0].log_format"][1]
    text = yaml.safe_dump(
        {"sources": [source("nginx", log_format='[$time_local] "$request" $${status}')]}
    )
    config = load_config_text(text, "/c/t.yaml", {})
    assert config.sources[0].log_format == '[$time_local] "$request" ${status}'
