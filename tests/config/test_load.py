"""Config loading: every error at once with its YAML path and line; env, secrets, paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config, load_config_text
from agent.errors import ConfigError
from tests.helpers import run_trackd

BAD = """\
state_dir: ./st
bogus_key: 1
rotate_wait: 5x
sources:
  - name: web
    kind: access
    paths: [a.log]
    format: combind
  - name: web
    kind: access
    paths: [b.log]
    format: nginx
events:
  rules:
    - name: r1
      source: nowhere
      match: {method: POST}
      event: Signed Up
sink:
  type: file
  path: out.jsonl
identity:
  cookieless: maybe
  max_named_per_device: lots
privacy:
  ip: ${TRACKD_TEST_UNSET_VAR}
"""


def _messages(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "/etc/trackd/trackd.yaml", env or {})
    return {issue.path: issue.message for issue in info.value.issues}


class TestAllErrorsAtOnce:
    def test_every_kind_of_error_is_reported_together(self) -> None:
        """Unknown key, bad duration, unknown format, duplicate name, missing log_format, unknown
        rule source, bad literal, wrong type and a missing env var come back in one ConfigError."""
        found = _messages(BAD)
        assert found["bogus_key"].startswith("unknown key 'bogus_key' (expected one of:")
        assert "invalid duration '5x'" in found["rotate_wait"]
        assert found["sources[0].format"].startswith(
            "unknown format 'combind' (expected one of: combined, common, combined_cookie"
        )
        assert "duplicate source name 'web'" in found["sources[1].name"]
        assert found["sources[1].log_format"].startswith("required for format nginx")
        assert "unknown source 'nowhere'" in found["events.rules[0].source"]
        assert (
            "unknown value 'maybe' (expected one of: derived, drop)" in found["identity.cookieless"]
        )
        assert "integer" in found["identity.max_named_per_device"]
        assert "TRACKD_TEST_UNSET_VAR is not set" in found["privacy.ip"]

    def test_issues_carry_the_yaml_line(self) -> None:
        """Each issue names the line of the key it is about."""
        with pytest.raises(ConfigError) as info:
            load_config_text(BAD, "/x/trackd.yaml", {})
        lines = {i.path: i.line for i in info.value.issues}
        assert lines["bogus_key"] == 2
        assert lines["rotate_wait"] == 3
        assert lines["sources[0].format"] == 8
        assert str(next(i for i in info.value.issues if i.path == "bogus_key")).startswith(
            "/x/trackd.yaml:2: bogus_key: unknown key"
        )

    def test_check_exits_3_and_prints_every_error(self, tmp_path: Path) -> None:
        """`trackd check` on a bad config exits 3 and lists all problems on stderr."""
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(BAD)
        proc = run_trackd("check", "-c", str(cfg))
        assert proc.returncode == 3
        for path in ("bogus_key", "rotate_wait", "sources[0].format", "events.rules[0].source"):
            assert f": {path}: " in proc.stderr
        assert "config invalid (" in proc.stderr

    def test_run_with_bad_config_exits_3_without_creating_state(self, tmp_path: Path) -> None:
        """`trackd run --once` refuses a bad config before touching the state directory."""
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(BAD)
        proc = run_trackd("run", "--once", "-c", str(cfg))
        assert proc.returncode == 3
        assert not (tmp_path / "st").exists()


class TestYamlProblems:
    def test_syntax_error_names_the_line(self) -> None:
        """Invalid YAML is reported with the line the parser stopped at."""
        with pytest.raises(ConfigError) as info:
            load_config_text("sources:\n  - name: [unclosed\n", "/c.yaml", {})
        issue = info.value.issues[0]
        assert issue.message.startswith("invalid YAML")
        assert issue.line is not None and issue.line >= 2

    def test_duplicate_keys_are_errors(self) -> None:
        """A key given twice is an error, not a silent override."""
        found = _messages("start_at: end\nstart_at: beginning\n")
        assert "duplicate key (first given on line 1)" in found["start_at"]

    def test_top_level_must_be_a_mapping(self) -> None:
        """A list or scalar document is rejected clearly."""
        found = _messages("- a\n- b\n")
        assert found[""] == "the config must be a mapping of keys"

    def test_empty_file_is_all_defaults(self) -> None:
        """An empty config is valid: every section takes its defaults."""
        cfg = load_config_text("", "/etc/trackd/trackd.yaml", {})
        assert cfg.sources == ()
        assert cfg.sink.type == "file"
        assert cfg.start_at == "end"


class TestInterpolationAndSecrets:
    def test_env_interpolation_with_default(self) -> None:
        """`${VAR}` and `${VAR:-default}` are replaced; `$$` is a literal dollar."""
        cfg = load_config_text(
            "identity: {site: '${SITE}', blocklist: ['${NOPE:-fallback}', 'a$$b']}\n",
            "/c/t.yaml",
            {"SITE": "shop"},
        )
        assert cfg.identity.site == "shop"
        assert cfg.identity.blocklist == ("fallback", "a$b")

    def test_missing_secret_file_is_an_error(self) -> None:
        """A `*_file` secret that cannot be read names the key and the file."""
        found = _messages(
            "sink: {type: kissmetrics, api_key_file: /nonexistent/km.key}\n", {"X": "1"}
        )
        assert "cannot read secret file '/nonexistent/km.key'" in found["sink.api_key_file"]

    def test_kissmetrics_needs_an_api_key(self) -> None:
        """A kissmetrics sink without any api_key source is an error saying how to give one."""
        found = _messages("sink: {type: kissmetrics}\n")
        assert found["sink.api_key"].startswith("required for sink type kissmetrics")

    def test_secrets_never_appear_in_errors(self) -> None:
        """A wrongly typed secret is reported without its value."""
        with pytest.raises(ConfigError) as info:
            load_config_text(
                "sink: {type: kissmetrics, api_key: {nested: sup3rs3cret}}\n", "/c.yaml", {}
            )
        assert "sup3rs3cret" not in str(info.value)

    def test_relative_paths_resolve_against_the_config_file(self, tmp_path: Path) -> None:
        """state_dir, source paths and the sink path are relative to the config's directory;
        secret_file to state_dir."""
        cfg_path = tmp_path / "conf" / "t.yaml"
        cfg_path.parent.mkdir()
        cfg_path.write_text(
            "state_dir: st\nsources: [{name: w, kind: access, paths: [logs/*.log], "
            "format: combined}]\nsink: {type: file, path: out/m.jsonl}\n"
        )
        cfg = load_config(str(cfg_path))
        base = str(tmp_path / "conf")
        assert cfg.state_dir == f"{base}/st"
        assert cfg.sources[0].paths == (f"{base}/logs/*.log",)
        assert cfg.sink.type == "file" and cfg.sink.path == f"{base}/out/m.jsonl"
        assert cfg.identity.secret_file == f"{base}/st/secret"


class TestNotSupportedYet:
    def test_a_redis_identity_store_is_accepted(self) -> None:
        """The Redis identity store is built (issue 11): `identity.store: redis://…` loads."""
        cfg = load_config_text(
            "identity: {store: 'redis://127.0.0.1:6379/0'}\n", "/etc/trackd/trackd.yaml", {}
        )
        assert cfg.identity.store == "redis://127.0.0.1:6379/0"

    def test_http_sinks_are_accepted(self) -> None:
        """The Kissmetrics and Segment sinks are built: their configs load without an issue."""
        for sink in ("{type: segment, write_key: k}", "{type: kissmetrics, api_key: k}"):
            cfg = load_config_text(f"sink: {sink}\n", "/etc/trackd/trackd.yaml", {})
            assert cfg.sink.type in ("segment", "kissmetrics")


class TestCheckOutput:
    def test_check_ok_prints_a_per_source_summary(self, tmp_path: Path) -> None:
        """A valid config prints `config OK` and what each source matched, and exits 0."""
        log = tmp_path / "access.log"
        log.write_text(
            '1.2.3.4 - - [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8" '
            '"km_ai=abcdefgh123"\nnot a log line\n'
        )
        cfg = tmp_path / "t.yaml"
        cfg.write_text(
            f"state_dir: {tmp_path}/st\nsources: [{{name: web, kind: access, paths: [{log}], "
            "format: combined_cookie}]\n"
        )
        proc = run_trackd("check", "-c", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("config OK")
        assert (
            "source web (access, combined_cookie): 1 path pattern(s), 1 file(s) matched"
            in proc.stdout
        )
        assert "1/2 lines parsed (50.0%)" in proc.stdout
        assert "abcdefgh123" not in proc.stdout  # cookie values are masked
        assert not (tmp_path / "st").exists()  # check never creates the state

    def test_check_warns_about_literal_secrets_and_empty_globs(self, tmp_path: Path) -> None:
        """Literal api keys and globs that match nothing are warnings, not errors."""
        cfg = tmp_path / "t.yaml"
        cfg.write_text(
            f"sources: [{{name: web, kind: access, paths: ['{tmp_path}/none/*.log'], "
            "format: combined}]\n"
        )
        proc = run_trackd("check", "-c", str(cfg))
        assert proc.returncode == 0
        assert "no file matches these paths yet" in proc.stdout


class TestRedisPassword:
    BASE = "sources: [{name: web, kind: access, paths: [/var/log/x.log], format: combined}]\n"

    def test_a_literal_redis_password_is_a_warning(self) -> None:
        """`identity.store: redis://:hunter2@…` works, and `check` warns that the password is
        stored in clear, saying how to move it out; the warning never shows the password."""
        cfg = load_config_text(
            self.BASE + "identity: {store: 'redis://:hunter2@127.0.0.1:6379/0'}\n", "/x/t.yaml"
        )
        (warning,) = [w for w in cfg.warnings if w.startswith("identity.store")]
        assert "stored in clear in /x/t.yaml" in warning and "${REDIS_PASSWORD}" in warning
        assert "hunter2" not in warning

    def test_a_password_from_the_environment_is_not_a_warning(self) -> None:
        """`${REDIS_PASSWORD}` in the URL (and a URL without a password) warn about nothing."""
        for store in (
            "redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0",
            "rediss://127.0.0.1:6380/0",
        ):
            cfg = load_config_text(
                self.BASE + f"identity: {{store: '{store}'}}\n",
                "/x/t.yaml",
                env={"REDIS_PASSWORD": "s3cret"},
            )
            assert not [w for w in cfg.warnings if w.startswith("identity.store")], store
