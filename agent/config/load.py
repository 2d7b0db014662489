"""Read a config file: YAML -> ${ENV} interpolation -> secrets -> validation -> frozen Config.

Every problem is collected and raised together as one ConfigError (exit 3), each naming its YAML
path and line. A config is also rejected when it asks for a feature this build does not have yet
(`features.py`): a clear error beats a key that is silently ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from agent.config.features import not_supported_yet
from agent.config.paths import file_sink_problem, resolve
from agent.config.schema import Config, FileSinkConfig
from agent.config.validate import semantic_findings
from agent.config.yamlmarks import (
    MAX_CONFIG_BYTES,
    MarkedDocument,
    Path,
    format_path,
    parse_yaml,
)
from agent.errors import ConfigError, ConfigIssue

DEFAULT_CONFIG = "/etc/trackd/trackd.yaml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")
_SECRET_KEYS = ("api_key", "write_key", "token")
_SECRET_NAMES = frozenset((*_SECRET_KEYS, "password"))
# The systemd credentials a sink type takes: one meant for another type (the api_key credential
# that install.sh writes, under a file sink) is not this sink's business.
_CREDENTIALS_BY_SINK = {"kissmetrics": ("api_key",), "segment": ("write_key", "token")}


def config_path_from(arg: str | None, env: Mapping[str, str] | None = None) -> str:
    """`-c` wins, then `$TRACKD_CONFIG`, then /etc/trackd/trackd.yaml."""
    env = os.environ if env is None else env
    return arg or env.get("TRACKD_CONFIG") or DEFAULT_CONFIG


def load_config(
    path: str, env: Mapping[str, str] | None = None, *, check_files: bool = False
) -> Config:
    """Load and validate `path`. Raises ConfigError listing every problem found.

    `check_files` (`trackd check`): also look at the disk for what `run` will need to create
    (the file sink's file), and report what cannot work as errors at their YAML path."""
    env = os.environ if env is None else env
    abspath = os.path.abspath(path)
    try:
        with open(abspath, encoding="utf-8") as fh:
            # At most one character past the limit: a huge file (or a device) is refused, not read.
            text = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise _single(
            abspath, "config file not found (give one with -c PATH or $TRACKD_CONFIG)"
        ) from None
    except IsADirectoryError:
        raise _single(abspath, "is a directory, not a config file") from None
    except PermissionError:
        raise _single(abspath, "permission denied reading the config file") from None
    except UnicodeDecodeError as exc:
        raise _single(abspath, f"not UTF-8 text (byte {exc.start})") from None
    return load_config_text(text, abspath, env, check_files=check_files)


def load_config_text(
    text: str, filename: str, env: Mapping[str, str] | None = None, *, check_files: bool = False
) -> Config:
    """Validate config text as if read from `filename` (relative paths resolve against its dir)."""
    env = os.environ if env is None else env
    doc = parse_yaml(text, filename)
    if doc.issues and doc.data is None:
        raise ConfigError(doc.issues)
    issues = list(doc.issues)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        issues.append(
            ConfigIssue("", "the config must be a mapping of keys", line=1, file=filename)
        )
        raise ConfigError(issues)

    base_dir = os.path.dirname(filename)
    literal_secrets: list[str] = []
    findings: list[tuple[Path, str]] = []
    data = _Interpolator(env, findings, literal_secrets)(data, ())
    env_findings = len(findings)
    _resolve_secret_files(data, base_dir, env, findings)
    findings.extend(semantic_findings(data))

    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        findings.extend(_pydantic_findings(exc))

    if config is not None:
        findings.extend(_required_secrets(config))
        findings.extend(not_supported_yet(config))

    # A value emptied by a missing ${VAR} fails other checks too; its first error says it all.
    env_paths = {path for path, _ in findings[:env_findings]}
    findings = findings[:env_findings] + [
        f for f in findings[env_findings:] if f[0] not in env_paths
    ]

    if config is not None:
        config = _resolve_paths(config, base_dir)
        if check_files:
            findings.extend(f for f in _file_findings(config) if f[0] not in env_paths)

    issues.extend(_to_issues(findings, doc, filename))
    if issues:
        raise ConfigError(_sorted_unique(issues))
    assert config is not None
    warnings = [_literal_warning(key, filename) for key in literal_secrets]
    config._config_path = filename
    config._warnings = tuple(warnings)
    return config


def _literal_warning(key: str, filename: str) -> str:
    if key == "identity.store":
        return (
            f"identity.store: the Redis password is stored in clear in {filename} (write it as "
            "redis://:${REDIS_PASSWORD}@host:port/db, or leave it out of the URL and give the "
            "systemd credential redis_password)"
        )
    return (
        f"sink.{key}: a literal secret is stored in clear in {filename} "
        f"(use {key}: ${{ENV_VAR}}, {key}_file: PATH or a systemd credential)"
    )


#: redis://[user]:password@… with a password written out (not `${VAR}`).
_REDIS_PASSWORD = re.compile(r"^rediss?://[^:/@]*:(?P<password>[^@/]+)@")


def _single(path: str, message: str) -> ConfigError:
    return ConfigError([ConfigIssue("", message, file=path)])


class _Interpolator:
    """Replace `${VAR}` / `${VAR:-default}` in every string; `$$` is a literal `$`.

    The data may share one list or mapping in several places (YAML aliases): each is rewritten
    once, memoised by identity, and the result shared again, so interpolating never expands an
    alias into copies. (A reference under a shared value is reported at its first path.)
    """

    __slots__ = ("_done", "_env", "_findings", "_literal_secrets")

    def __init__(
        self, env: Mapping[str, str], findings: list[tuple[Path, str]], literal_secrets: list[str]
    ) -> None:
        self._env = env
        self._findings = findings
        self._literal_secrets = literal_secrets
        self._done: dict[int, Any] = {}

    def __call__(self, value: Any, path: Path) -> Any:
        if isinstance(value, dict | list):
            key = id(value)
            if key in self._done:
                return self._done[key]
            if isinstance(value, dict):
                out: Any = {}
                self._done[key] = out
                for k, v in value.items():
                    out[k] = self(v, (*path, k))
                return out
            items: list[Any] = []
            self._done[key] = items
            items.extend(self(v, (*path, i)) for i, v in enumerate(value))
            return items
        if not isinstance(value, str):
            return value
        return self._string(value, path)

    def _string(self, value: str, path: Path) -> str:
        if (
            path[:1] == ("sink",)
            and len(path) == 2
            and path[1] in _SECRET_KEYS
            and "${" not in value
        ):
            self._literal_secrets.append(str(path[1]))
        if path == ("identity", "store"):
            m = _REDIS_PASSWORD.match(value)
            if m is not None and "${" not in m.group("password"):
                self._literal_secrets.append("identity.store")
        if "$" not in value:
            return value
        env, findings = self._env, self._findings

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            hint = ""
            if path[-1:] in (("log_format",), ("regex",)):
                # nginx's braced variables look like ours: `${status}` is read as an env reference.
                hint = f"; for nginx's variable write $${{{name}}} or ${name}"
            findings.append(
                (path, f"environment variable {name} is not set (referenced as ${{{name}}}){hint}")
            )
            return ""

        return _ENV_REF.sub(sub, value)


def _resolve_secret_files(
    data: dict[str, Any], base_dir: str, env: Mapping[str, str], findings: list[tuple[Path, str]]
) -> None:
    """`api_key_file: PATH` -> `api_key`; else a systemd credential named like the key."""
    sink = data.get("sink")
    if not isinstance(sink, dict):
        return
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    for key in _SECRET_KEYS:
        file_key = f"{key}_file"
        ref = sink.get(file_key)
        if isinstance(ref, str) and key not in sink:
            full = os.path.join(cred_dir, ref) if cred_dir and "/" not in ref else ref
            full = resolve(full, base_dir)
            try:
                with open(full, encoding="utf-8") as fh:
                    sink[key] = fh.read().strip()
            except OSError as exc:
                findings.append(
                    (("sink", file_key), f"cannot read secret file {full!r}: {exc.strerror}")
                )
            else:
                if not sink[key]:
                    findings.append((("sink", file_key), f"secret file {full!r} is empty"))
            del sink[file_key]
        elif (
            key not in sink
            and file_key not in sink
            and cred_dir
            and key in _CREDENTIALS_BY_SINK.get(str(sink.get("type", "file")), ())
        ):
            cred = os.path.join(cred_dir, key)
            if os.path.isfile(cred):
                try:
                    with open(cred, encoding="utf-8") as fh:
                        sink[key] = fh.read().strip()
                except OSError as exc:
                    findings.append(
                        (("sink", key), f"cannot read systemd credential {cred!r}: {exc.strerror}")
                    )


def _required_secrets(config: Config) -> list[tuple[Path, str]]:
    sink = config.sink
    how = "(set {k}: ${{ENV_VAR}}, {k}_file: PATH, or a systemd credential named {k})"
    if sink.type == "kissmetrics" and sink.api_key is None:
        return [
            (("sink", "api_key"), "required for sink type kissmetrics " + how.format(k="api_key"))
        ]
    if sink.type == "segment":
        if sink.auth == "basic" and sink.write_key is None:
            return [
                (("sink", "write_key"), "required for auth: basic " + how.format(k="write_key"))
            ]
        if sink.auth == "bearer" and sink.token is None:
            return [(("sink", "token"), "required for auth: bearer " + how.format(k="token"))]
    return []


def _pydantic_findings(exc: ValidationError) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    for err in exc.errors(include_url=False):
        loc: list[str | int] = list(err["loc"])
        # A tagged union puts the tag in the location (sink.kissmetrics.url): drop it.
        if len(loc) > 1 and loc[0] == "sink" and loc[1] in ("file", "kissmetrics", "segment"):
            del loc[1]
        path = tuple(loc)
        out.append((path, _message(err, path)))
    return out


def _message(err: Any, path: Path) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    secret = bool(path) and str(path[-1]) in _SECRET_NAMES
    shown = "<redacted>" if secret else _short(value)
    if kind == "extra_forbidden":
        return "unknown key" + _did_you_mean(path)
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"unknown value {shown} (expected one of: {expected})"
    if kind == "union_tag_invalid":
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"unknown sink type {_short(ctx.get('tag'))} (expected one of: {expected})"
    if kind == "union_tag_not_found":
        return "required key 'type' is missing (file, kissmetrics or segment)"
    if kind == "too_short" and path[-1:] == ("paths",):
        return "give at least one path or glob"
    if kind == "too_short":
        return f"give at least {ctx.get('min_length', 1)} item(s)"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list (got {shown})"
    if kind in ("value_error", "assertion_error"):
        return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    msg = str(err["msg"])
    if msg.startswith("Input should be "):
        msg = "expected " + msg.removeprefix("Input should be ")
    return f"{msg[0].lower()}{msg[1:]} (got {shown})" if msg else f"invalid value {shown}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(path: Path) -> str:
    """List the keys valid where an unknown key was found."""
    model: Any = Config
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = _model_of(field.annotation)
        if model is None:
            return ""
    names = sorted(getattr(model, "model_fields", {}))
    return f" {path[-1]!r} (expected one of: {', '.join(names)})" if names else ""


def _model_of(annotation: Any) -> Any:
    from typing import get_args

    if hasattr(annotation, "model_fields"):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _to_issues(
    findings: list[tuple[Path, str]], doc: MarkedDocument, filename: str
) -> list[ConfigIssue]:
    return [
        ConfigIssue(format_path(path), message, line=doc.line_of(path), file=filename)
        for path, message in findings
    ]


def _sorted_unique(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    seen: set[tuple[str, str]] = set()
    out = []
    for issue in sorted(issues, key=lambda i: (i.line or 0, i.path)):
        key = (issue.path, issue.message)
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out


def _resolve_paths(config: Config, base_dir: str) -> Config:
    """Every relative path is relative to the config file; secret_file to state_dir."""

    def absolute(p: str, base: str = base_dir) -> str:
        return resolve(p, base)

    state_dir = absolute(config.state_dir)
    identity = config.identity.model_copy(
        update={"secret_file": absolute(config.identity.secret_file, state_dir)}
    )
    sources = tuple(
        src.model_copy(
            update={
                "paths": tuple(absolute(p) for p in src.paths),
                "exclude": tuple(absolute(p) if "/" in p else p for p in src.exclude),
            }
        )
        for src in config.sources
    )
    sink = config.sink
    if isinstance(sink, FileSinkConfig) and sink.path != "-":
        sink = sink.model_copy(update={"path": absolute(sink.path)})
    if sink.tls.ca_file:
        sink = sink.model_copy(
            update={"tls": sink.tls.model_copy(update={"ca_file": absolute(sink.tls.ca_file)})}
        )
    return config.model_copy(
        update={"state_dir": state_dir, "identity": identity, "sources": sources, "sink": sink}
    )


def _file_findings(config: Config) -> list[tuple[Path, str]]:
    """What `run` would fail to create or open, found by looking (nothing is created)."""
    sink = config.sink
    if isinstance(sink, FileSinkConfig) and sink.path != "-":
        problem = file_sink_problem(sink.path)
        if problem is not None:
            return [(("sink", "path"), f"trackd cannot write {sink.path}: {problem}")]
    return []
