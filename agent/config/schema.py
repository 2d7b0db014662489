"""The config schema (SPEC §9) as frozen pydantic models.

Structure and types live here; checks that span keys (a rule naming an unknown source, a format
that needs `log_format`) live in `validate.py`, so that every problem is reported in one pass.
Relative paths are resolved against the config file's directory by `load.py`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
)

from agent.config.units import Duration, Size

DEFAULT_SKIP_EXTENSIONS = (
    "css js mjs map png jpg jpeg gif webp avif svg ico bmp woff woff2 ttf otf eot txt xml json "
    "pdf mp4 webm mp3 wasm webmanifest"
).split()

DEFAULT_REDACT_PARAMS = (
    "token access_token refresh_token id_token code state password passwd pwd pass secret key "
    "api_key apikey auth signature sig session sessionid sid reset_token email"
).split()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class StateConfig(_Model):
    on_corrupt: Literal["fail", "reset"] = "fail"
    forget_files_after: Duration = 7 * 86400.0


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class IdentityConfig(_Model):
    site: str = "default"
    secret_file: str = "secret"  # noqa: S105 - a file name, not a secret
    anonymous_cookies: tuple[str, ...] = ("km_ai",)
    named_cookies: tuple[str, ...] = ("km_ni",)
    session_cookies: tuple[str, ...] = ()
    cookieless: Literal["derived", "drop"] = "derived"
    lowercase_emails: bool = True
    blocklist: tuple[str, ...] = ()
    join_window: Duration = 30.0
    max_hold: Duration = 2.0
    session_ttl: Duration = 86400.0
    session_timeout: Duration = 1800.0
    max_named_per_device: Annotated[int, Field(ge=1)] = 3
    max_devices_per_named: Annotated[int, Field(ge=1)] = 50
    forget_after: Duration = 400 * 86400.0
    trusted_proxies: tuple[IPNetwork, ...] = ()
    store: str = "sqlite"

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            out = []
            for item in value:
                try:
                    out.append(ipaddress.ip_network(str(item), strict=False))
                except ValueError:
                    raise ValueError(
                        f"invalid CIDR {item!r} (use e.g. 10.0.0.0/8 or 2001:db8::/32)"
                    ) from None
            return out
        return value

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value == "sqlite" or value.startswith(("redis://", "rediss://")):
            return value
        raise ValueError(
            "unknown identity store (expected sqlite, redis://host:port/db or rediss://…)"
        )


class SourceConfig(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)]
    kind: Literal["access", "app"]
    paths: Annotated[tuple[str, ...], Field(min_length=1)]
    exclude: tuple[str, ...] = ()
    format: str
    log_format: str | None = None
    regex: str | None = None
    fields: dict[str, str] | None = None
    base_url: str | None = None
    time_field: str | None = None
    time_format: str | None = None
    timezone: str = "UTC"


def _status_spec(value: Any) -> str:
    """`200`, `"404"` or a class like `"2xx"` -> its canonical string."""
    text = str(value).strip().lower() if not isinstance(value, bool) else ""
    if len(text) == 3 and text[0] in "12345" and (text[1:] == "xx" or text[1:].isdigit()):
        return text
    raise ValueError(f"invalid status {value!r} (use a code like 404 or a class like 2xx)")


StatusSpec = Annotated[str, BeforeValidator(_status_spec)]


class PageviewsConfig(_Model):
    enabled: bool = True
    methods: tuple[str, ...] = ("GET",)
    statuses: tuple[StatusSpec, ...] = ("2xx", "3xx")
    skip_extensions: tuple[str, ...] = tuple(DEFAULT_SKIP_EXTENSIONS)
    skip_bots: bool = True
    bot_patterns: tuple[str, ...] = ()
    exclude_paths: tuple[str, ...] = ()


class IdentifyAction(_Model):
    user: str
    device: str | None = None
    session: str | None = None
    traits: dict[str, str] = Field(default_factory=dict)


class LogoutAction(_Model):
    session: str | None = None
    device: str | None = None


def _logout_shape(value: Any) -> Any:
    """`logout: true` or `logout: {session, device}`; anything else is one clear error."""
    if value is None or value is True:
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"session", "device"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (expected one of: session, device)")
        for key, item in value.items():
            if item is not None and not isinstance(item, str):
                raise ValueError(f'{key}: expected a template string like "{{session_id}}"')
        return value
    raise ValueError("expected true or a mapping {session: …, device: …}")


class IdentityChangeAction(_Model):
    old: str
    new: str


class RuleConfig(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$", max_length=64)]
    source: str
    match: dict[str, Any] = Field(default_factory=dict)  # shapes checked in validate.py
    event: str | None = None
    page_name: str | None = None
    properties: dict[str, str] = Field(default_factory=dict)
    identify: IdentifyAction | None = None
    logout: Annotated[LogoutAction | Literal[True] | None, BeforeValidator(_logout_shape)] = None
    identity_change: IdentityChangeAction | None = None


class EventsConfig(_Model):
    pageviews: PageviewsConfig = PageviewsConfig()
    rules: tuple[RuleConfig, ...] = ()


class BatchConfig(_Model):
    max_events: Annotated[int, Field(ge=1, le=100_000)] = 500
    max_wait: Duration = 1.0


class RetryConfig(_Model):
    max_age: Duration = 7 * 86400.0
    initial_backoff: Duration = 1.0
    max_backoff: Duration = 300.0


class OutboxConfig(_Model):
    max_events: Annotated[int, Field(ge=1)] = 10_000_000
    max_bytes: Size = 2 * 1024**3


class TlsConfig(_Model):
    insecure_skip_verify: bool = False
    ca_file: str | None = None


class _SinkCommon(_Model):
    batch: BatchConfig = BatchConfig()
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    timeout: Duration = 10.0
    retry: RetryConfig = RetryConfig()
    outbox: OutboxConfig = OutboxConfig()
    tls: TlsConfig = TlsConfig()
    proxy: str | None = None


class FileSinkConfig(_SinkCommon):
    type: Literal["file"] = "file"
    path: str = "-"


class KissmetricsSinkConfig(_SinkCommon):
    type: Literal["kissmetrics"]
    url: str = "https://trk.kissmetrics.io"
    api_key: SecretStr | None = None
    api_key_file: str | None = None
    page_event: str = "Viewed Page"


class SegmentSinkConfig(_SinkCommon):
    type: Literal["segment"]
    url: str = "https://api.segment.io/v1/batch"
    auth: Literal["basic", "bearer"] = "basic"
    write_key: SecretStr | None = None
    write_key_file: str | None = None
    token: SecretStr | None = None
    token_file: str | None = None
    gzip: bool = True


SinkConfig = Annotated[
    FileSinkConfig | KissmetricsSinkConfig | SegmentSinkConfig, Field(discriminator="type")
]


class PrivacyConfig(_Model):
    ip: Literal["full", "truncate", "drop"] = "truncate"
    hash_named: Literal[False, "sha256"] = False
    redact_params: tuple[str, ...] = tuple(DEFAULT_REDACT_PARAMS)
    optout_cookie: str | None = None


class MetricsConfig(_Model):
    listen: str = "127.0.0.1:9880"
    unhealthy_after: Duration = 300.0


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "warn", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Model):
    """The whole validated config. Paths are absolute once `load_config` returns it."""

    state_dir: str = "/var/lib/trackd"
    start_at: Literal["end", "beginning"] = "end"
    max_line_bytes: Annotated[Size, Field(ge=256)] = 64 * 1024
    rotate_wait: Duration = 10.0
    max_rotated_hold: Duration = 3600.0
    shutdown_timeout: Duration = 10.0
    state: StateConfig = StateConfig()
    identity: IdentityConfig = IdentityConfig()
    sources: tuple[SourceConfig, ...] = ()
    events: EventsConfig = EventsConfig()
    sink: SinkConfig = FileSinkConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()

    # Set by the loader, never by YAML: where the config came from, and non-fatal findings.
    _config_path: str = PrivateAttr(default="")
    _warnings: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: str) -> str:
        # An empty value (often an unset ${VAR:-}) would put the state next to the config file.
        if not value.strip():
            raise ValueError(
                "empty path (give the state directory, e.g. /var/lib/trackd; "
                'an empty ${VAR} gives "")'
            )
        return value

    @property
    def config_path(self) -> str:
        """The absolute path of the file this config was loaded from ("" when built in code)."""
        return self._config_path

    @property
    def warnings(self) -> tuple[str, ...]:
        """Findings that do not make the config invalid (literal secrets, unmatched globs)."""
        return self._warnings

    def source(self, name: str) -> SourceConfig:
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(name)
