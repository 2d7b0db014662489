"""Hostile and careless configs: alias bombs, deep nesting, huge files, empty values, durations
outside SPEC §9's grammar and pydantic's wording — each a clear ConfigError naming file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.commands.check import check_sources, config_warnings
from agent.config import load_config, load_config_text
from agent.config.yamlmarks import MAX_CONFIG_BYTES
from agent.errors import ConfigError

FILE = "/etc/trackd/trackd.yaml"
SOURCE = """\
sources:
  - name: web
    kind: access
    paths: [/var/log/a.log]
    format: combined
"""


def _issues(text: str, env: dict[str, str] | None = None) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, FILE, env or {})
    for issue in info.value.issues:
        assert issue.file == FILE
    return [(i.path, i.line, i.message) for i in info.value.issues]


def _alias_bomb(levels: int, width: int = 9) -> str:
    """The billion-laughs shape: each level is a list of `width` aliases of the one before."""
    out = ['l0: &l0 ["lol${X}"]']
    out.extend(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * width)}]" for n in range(1, levels + 1))
    out.append(f"events: {{pageviews: {{exclude_paths: *l{levels}}}}}")
    return "\n".join(out) + "\n"


class TestDocumentBounds:
    @pytest.mark.timeout(20)
    def test_alias_bomb_is_a_config_error_not_a_memory_blow_up(self) -> None:
        """Nine levels of nine aliases (9^9 strings if expanded) fail fast with file and line."""
        issues = _issues(_alias_bomb(9), {"X": "!"})
        bomb = [i for i in issues if "alias" in i[2]]
        assert bomb, issues
        assert bomb[0][1] is not None

    @pytest.mark.timeout(10)
    def test_aliases_within_bounds_are_interpolated_once_and_shared(self) -> None:
        """A list anchored once and aliased by a second source gets ${ENV} in both places."""
        text = """\
sources:
  - name: a
    kind: access
    paths: &logs ["${LOGDIR}/a.log", "${LOGDIR}/b.log"]
    format: combined
  - name: b
    kind: access
    paths: *logs
    format: common
"""
        config = load_config_text(text, FILE, {"LOGDIR": "/srv/logs"})
        want = ("/srv/logs/a.log", "/srv/logs/b.log")
        assert config.sources[0].paths == want
        assert config.sources[1].paths == want

    @pytest.mark.timeout(10)
    def test_deep_nesting_is_a_config_error(self) -> None:
        """A value nested 5,000 levels deep is refused with its line, not a RecursionError."""
        text = SOURCE + "events: {pageviews: {exclude_paths: " + "[" * 5000 + "]" * 5000 + "}}\n"
        issues = _issues(text)
        deep = [i for i in issues if "nested" in i[2]]
        assert deep, issues
        assert deep[0][1] == 6

    @pytest.mark.timeout(10)
    def test_recursive_alias_is_a_config_error(self) -> None:
        """An anchor used inside itself (`&a [*a]`) is refused, not followed forever."""
        issues = _issues(SOURCE + "events: {pageviews: {exclude_paths: &a [*a]}}\n")
        assert any("inside itself" in m and line == 6 for _, line, m in issues), issues

    @pytest.mark.timeout(20)
    def test_oversized_config_file_is_refused(self, tmp_path: Path) -> None:
        """A config file over the size limit is refused after reading at most the limit."""
        cfg = tmp_path / "trackd.yaml"
        with cfg.open("w") as fh:
            fh.write(SOURCE)
            line = "# " + "x" * 1000 + "\n"
            fh.write(line * (MAX_CONFIG_BYTES // len(line) + 10))
        with pytest.raises(ConfigError) as info:
            load_config(str(cfg))
        (issue,) = info.value.issues
        assert issue.file == str(cfg)
        assert "larger than" in issue.message
        assert issue.line is not None


class TestValues:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("value", ['""', "${STATE_DIR:-}", '"  "'])
    def test_empty_state_dir_is_rejected(self, value: str) -> None:
        """`state_dir: ""` (e.g. an empty ${VAR}) is an error, not state next to the config."""
        issues = _issues(f"state_dir: {value}\n" + SOURCE)
        assert [(p, line) for p, line, _ in issues] == [("state_dir", 1)]
        assert "empty" in issues[0][2]

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(
        "value", ["inf", "nan", "1e9", ".inf", ".nan", "-.inf", "'1_000'", "'+5'", "5 s"]
    )
    def test_durations_outside_the_grammar_are_rejected(self, value: str) -> None:
        """Durations follow SPEC §9: `inf`, `nan`, `1e9` and friends are not durations."""
        issues = _issues(SOURCE + f"rotate_wait: {value}\n")
        assert [p for p, _, _ in issues] == ["rotate_wait"]
        assert "invalid duration" in issues[0][2]

    @pytest.mark.timeout(10)
    def test_empty_paths_say_it_in_the_users_terms(self) -> None:
        """`paths: []` says to give a path or glob, not pydantic's tuple wording."""
        text = SOURCE.replace("[/var/log/a.log]", "[]")
        ((path, _, message),) = _issues(text)
        assert path == "sources[0].paths"
        assert message == "give at least one path or glob"

    @pytest.mark.timeout(10)
    def test_paths_of_the_wrong_type_say_list(self) -> None:
        """`paths: 5` says a list is expected, never 'tuple'."""
        ((path, _, message),) = _issues(SOURCE.replace("[/var/log/a.log]", "5"))
        assert path == "sources[0].paths"
        assert "tuple" not in message and "list" in message

    @pytest.mark.timeout(10)
    def test_invalid_kind_does_not_hide_the_format_error(self) -> None:
        """A misspelt kind and a misspelt format of one source are both reported."""
        text = SOURCE.replace("kind: access", "kind: acess").replace("combined", "combind")
        found = {p: m for p, _, m in _issues(text)}
        assert set(found) == {"sources[0].kind", "sources[0].format"}
        assert "unknown format 'combind'" in found["sources[0].format"]


@pytest.mark.timeout(10)
def test_a_config_without_sources_warns_in_check(tmp_path: Path) -> None:
    """An empty config is valid, but `check` warns that it reads nothing."""
    cfg = tmp_path / "trackd.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    config = load_config(str(cfg))
    warnings = config_warnings(config, check_sources(config, None))
    assert any("no sources" in w for w in warnings), warnings
