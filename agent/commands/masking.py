"""What `trackd check` may show of a parsed record (SPEC §8: never cookie values, secrets,
redacted parameters or full IP addresses).

Cookie values are masked to their first two characters and length; addresses are truncated to
their /24 (IPv4) or /48 (IPv6) network; query parameters named in `privacy.redact_params` read
`REDACTED`; app fields named like a redacted parameter, a configured cookie, or a cookie or
secret key are masked.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from typing import Any

from agent.config import Config
from agent.events.urls import UrlBuilder
from agent.identity.clientip import ClientIp
from agent.parse.cookies import parse_cookie_header
from agent.records import AccessRecord, AppRecord

_SECRETISH = re.compile(
    r"cookie|secret|passw|token|api_?key|auth|session|sid$|anon|device|km_", re.I
)
_IPV4_INSIDE = re.compile(r"\b(\d{1,3}\.\d{1,3}\.\d{1,3})\.\d{1,3}\b")


def mask(value: str) -> str:
    """`qFq2LweZugF` -> `qF…(11 chars)`: enough to recognise a value, not to reuse it."""
    if len(value) <= 4:
        return "****"
    return value[:2] + "…" + f"({len(value)} chars)"


class RecordMasker:
    """Turns a parsed record into the masked mapping `check` prints."""

    __slots__ = ("_ip", "_names", "_urls")

    def __init__(self, config: Config) -> None:
        ident = config.identity
        self._urls = UrlBuilder(config.privacy.redact_params, None)
        self._ip = ClientIp((), "truncate")
        self._names = frozenset(
            n.lower()
            for n in (
                *config.privacy.redact_params,
                *ident.anonymous_cookies,
                *ident.named_cookies,
                *ident.session_cookies,
                *((config.privacy.optout_cookie,) if config.privacy.optout_cookie else ()),
            )
        )

    def address(self, value: str) -> str:
        """An address (or a comma list of them) truncated; anything else is hidden."""
        out = []
        for part in value.split(","):
            part = part.strip()
            net = self._ip.for_context(part) if part else None
            out.append(f"{net}/{24 if ':' not in net else 48}" if net else mask(part))
        return ", ".join(out)

    def __call__(self, rec: AccessRecord | AppRecord) -> dict[str, Any]:
        if isinstance(rec, AppRecord):
            return {"time": _stamp(rec.ts, rec.precision), **self._app(rec.fields)}
        out: dict[str, Any] = {"time": _stamp(rec.ts, rec.precision)}
        cookies = {k: mask(v) for k, v in parse_cookie_header(rec.cookie_header).items()}
        for name, value in rec._asdict().items():
            if name in ("ts", "precision", "cookie_header") or value in (None, "", {}):
                continue
            if name in ("ip", "forwarded_for"):
                out[name] = self.address(value)
            elif name == "target":
                path, _, query = value.partition("?")
                out[name] = f"{path}?{self._urls.redact_query(query)}" if query else path
            elif name == "referrer":
                out[name] = self._urls.referrer(value)
            elif name == "cookies":
                cookies.update({k: mask(v) for k, v in value.items()})
            elif name == "extra":
                out[name] = {k: self._value(k, v) for k, v in value.items()}
            else:
                out[name] = value
        if cookies:
            out["cookie"] = cookies
        return out

    def __repr__(self) -> str:
        return f"RecordMasker(masked_names={sorted(self._names)!r})"

    def _app(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {
            k: self._app(v) if isinstance(v, dict) else self._value(k, v) for k, v in fields.items()
        }

    def _value(self, name: str, value: Any) -> Any:
        if not isinstance(value, str) or value in ("", "-"):
            return value
        last = name.rsplit(".", 1)[-1].lower()
        if last in self._names or _SECRETISH.search(last):
            return mask(value)
        try:
            ipaddress.ip_address(value)
        except ValueError:
            pass
        else:
            return self.address(value)
        if "?" in value and "=" in value:
            value = self._urls.referrer(value)
        # Addresses inside other text (`10.0.0.5:8080, 10.0.0.6:8080`) lose their last byte.
        return _IPV4_INSIDE.sub(r"\1.0", value)


def _stamp(ts: float, precision: float) -> str:
    spec = (
        "seconds" if precision >= 1.0 else "milliseconds" if precision >= 0.001 else "microseconds"
    )
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=spec).replace("+00:00", "Z")
