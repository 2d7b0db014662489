"""What every HTTP sink shares (SPEC §4, "All HTTP sinks"): the pooled client, redirects, and
how a response or a transport error becomes an `Outcome`.

    2xx (and 304 for Kissmetrics)        Delivered
    307/308                              followed by `request()`, method and body kept; one that
                                         still arrives here was followed too often: Pause http_3xx
    other 3xx                            Pause http_3xx (a wrong `sink.url`)
    401 403 404                          Pause http_4xx (a wrong key or URL: never dead-letter)
    408 460                              Retry http_4xx
    429                                  Retry http_429, `after` = Retry-After
    5xx but 501/505                      Retry http_5xx, `after` = Retry-After on a 503
    501 505                              Reject http_501 / http_505
    other 4xx                            Reject http_<status>
    1xx, < 100, >= 600 (not HTTP)        Retry http_5xx (the endpoint misbehaves; it may recover)

    connect error                        Retry connect (refused, unreachable, DNS, proxy)
    TLS failure while connecting         Pause tls (a certificate problem does not fix itself)
    timeout (connect, read, write, pool) Retry timeout
    reset / closed mid-response          Retry reset (RemoteProtocolError, ReadError, WriteError,
                                         CloseError)

`classify_exception` takes the `httpx.TransportError` a request raised. Any other exception out
of a request is a bug in trackd (a bad argument, a closed client): callers catch only
`httpx.TransportError` and let everything else propagate, so it crashes loudly instead of being
retried for a week.

The `detail` of an outcome goes into logs and dead letters, so it is built only from the status,
the exception's type and the request's host:port — never from a URL query (the Kissmetrics key
travels in it), a header (Authorization) or a response body.

Redirects are followed here rather than by httpx: httpx would also follow 301/302/303 and turn a
POST into a GET, silently sending the batch nowhere; SPEC §4 wants those to pause the sink.
"""

from __future__ import annotations

import email.utils
import errno
import http
import importlib.util
import math
import re
import socket
import ssl
from collections.abc import Iterator, Mapping
from datetime import UTC
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from agent.config.schema import TlsConfig
from agent.sinks.base import DELIVERED, FailureReason, Outcome, Pause, Reject, Retry

__all__ = [
    "HTTP2_AVAILABLE",
    "ClientSettings",
    "build_client",
    "classify_exception",
    "classify_status",
    "parse_retry_after",
    "redact_url",
    "request",
]

#: Whether the `h2` package is importable: HTTP/2 is used only then (pyproject does not require
#: it; httpx falls back to HTTP/1.1 without it).
HTTP2_AVAILABLE = importlib.util.find_spec("h2") is not None

_SECONDS = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


# --- responses ---------------------------------------------------------------------------------


def classify_status(
    status: int,
    headers: Mapping[str, str],
    now: float,
    *,
    max_backoff: float,
    accept_304: bool = False,
) -> Outcome:
    """The outcome of a response with `status` (table in the module docstring).

    `headers` are the response's (an `httpx.Headers`, or any mapping: looked up
    case-insensitively); `now` is the wall clock (`Clock.time()`) that an HTTP-date
    `Retry-After` is measured from; `max_backoff` caps `Retry-After` (`sink.retry.max_backoff`);
    `accept_304` makes 304 a success (Kissmetrics answers pixels with it). The `detail` of a
    `Reject` is only the status line: a sink that reads the body replaces it."""
    if 200 <= status <= 299:
        return DELIVERED
    if status == 304 and accept_304:
        return DELIVERED
    text = _status_text(status)
    if 300 <= status <= 399:
        if status in (307, 308):
            return Pause("http_3xx", f"{text}: still redirected after following redirects")
        return Pause(
            "http_3xx",
            f"{text}: only 307/308 redirects are followed; point sink.url at the final address",
        )
    if status in (401, 403):
        return Pause("http_4xx", f"{text}: the endpoint refused the credentials")
    if status == 404:
        return Pause("http_4xx", f"{text}: the endpoint path does not exist (check sink.url)")
    if status in (408, 460):
        return Retry("http_4xx", text)
    if status == 429:
        return Retry("http_429", text, parse_retry_after(headers, now, max_backoff))
    if status in (501, 505):
        return Reject(f"http_{status}", text)
    if 400 <= status <= 499:
        return Reject(f"http_{status}", text)
    if 500 <= status <= 599:
        after = parse_retry_after(headers, now, max_backoff) if status == 503 else None
        return Retry("http_5xx", text, after)
    return Retry("http_5xx", f"HTTP {status} is not a valid final status")


def parse_retry_after(headers: Mapping[str, str], now: float, max_backoff: float) -> float | None:
    """`Retry-After` in seconds from `now` (wall clock), in `[0, max_backoff]`; None when absent
    or unparsable. Accepts delay-seconds (`120`, also `1.5`) and an HTTP date; a negative delay
    or a date in the past gives 0."""
    value = _header(headers, "retry-after")
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC by RFC 5322
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), max_backoff)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    if isinstance(headers, httpx.Headers):
        found: str | None = headers.get(name)
        return found
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _status_text(status: int) -> str:
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


# --- transport errors --------------------------------------------------------------------------


def classify_exception(exc: BaseException) -> Retry | Pause:
    """The outcome of an `httpx.TransportError` raised by a request (table in the module
    docstring). Anything else is a programming error: it raises `TypeError` (chained to `exc`);
    callers catch only `httpx.TransportError` and let other exceptions propagate."""
    if not isinstance(exc, httpx.TransportError):
        raise TypeError(
            f"classify_exception takes an httpx.TransportError, not {type(exc).__name__}"
        ) from exc
    where = _endpoint(exc)
    if isinstance(exc, httpx.TimeoutException):
        return Retry("timeout", _timeout_detail(exc, where))
    if isinstance(exc, httpx.ConnectError):
        tls = _tls_error(exc)
        if tls is not None:
            return Pause("tls", f"TLS handshake with {where} failed: {tls}")
        return Retry("connect", _connect_detail(exc, where))
    for kind, reason, text in _TRANSPORT_FAILURES:
        if isinstance(exc, kind):
            return Retry(reason, text.format(where=where))
    return Retry("connect", f"request to {where} failed ({type(exc).__name__})")


#: The other transport errors, most specific first: (type, reason, detail with {where}).
_TRANSPORT_FAILURES: tuple[tuple[type[httpx.TransportError], FailureReason, str], ...] = (
    (
        httpx.RemoteProtocolError,
        "reset",
        "{where} closed the connection without a complete response",
    ),
    (httpx.ReadError, "reset", "connection to {where} broken while reading the response"),
    (httpx.WriteError, "reset", "connection to {where} broken while sending the request"),
    (httpx.CloseError, "reset", "connection to {where} failed while closing"),
    (httpx.ProxyError, "connect", "the proxy refused or failed the connection to {where}"),
    (httpx.UnsupportedProtocol, "connect", "cannot connect to {where}: unsupported URL scheme"),
)


def _endpoint(exc: httpx.TransportError) -> str:
    """host:port of the request that failed (never its path, query or headers)."""
    try:
        url = exc.request.url
    except RuntimeError:  # raised without a request (only by hand-built exceptions)
        return "the endpoint"
    host = url.host or "?"
    if ":" in host:
        host = f"[{host}]"
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return f"{host}:{port}" if port else host


def _timeout_detail(exc: httpx.TimeoutException, where: str) -> str:
    phase, template = {
        httpx.ConnectTimeout: ("connect", "no connection to {where} within {t}"),
        httpx.ReadTimeout: ("read", "no response from {where} within {t}"),
        httpx.WriteTimeout: ("write", "could not send the request to {where} within {t}"),
        httpx.PoolTimeout: ("pool", "no free pooled connection to {where} within {t}"),
    }.get(type(exc), ("read", "request to {where} timed out after {t}"))
    seconds: object = None
    try:
        timeouts = exc.request.extensions.get("timeout")
        if isinstance(timeouts, Mapping):
            seconds = timeouts.get(phase)
    except RuntimeError:
        pass
    t = f"{seconds:g}s" if isinstance(seconds, int | float) else "the timeout"
    return template.format(where=where, t=t)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it was raised from (causes, contexts, exception-group members)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _tls_error(exc: httpx.ConnectError) -> str | None:
    """Plain words for the TLS failure inside a connect error, or None if it is not one."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or "certificate verify failed"
            return f"certificate not trusted ({why}); set sink.tls.ca_file to the CA that signed it"
        if isinstance(cause, ssl.SSLError):
            return f"{cause.reason or type(cause).__name__}".replace("_", " ").lower()
    message = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in message:
        return "certificate not trusted; set sink.tls.ca_file to the CA that signed it"
    if "SSL" in message or "TLS" in message:
        return "TLS error"
    return None


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused by {where}",
    errno.ECONNRESET: "connection to {where} reset while connecting",
    errno.ENETUNREACH: "network unreachable for {where}",
    errno.EHOSTUNREACH: "host unreachable: {where}",
    errno.ETIMEDOUT: "no connection to {where} (timed out)",
    errno.EADDRNOTAVAIL: "cannot assign a local address to connect to {where}",
}


def _connect_detail(exc: httpx.ConnectError, where: str) -> str:
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host of {where} ({cause.strerror or 'DNS lookup failed'})"
        if isinstance(cause, OSError) and cause.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[cause.errno].format(where=where)
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.strerror:
            return f"cannot connect to {where} ({cause.strerror})"
    return f"cannot connect to {where}"


# --- the client --------------------------------------------------------------------------------


class ClientSettings(Protocol):
    """What `build_client` reads from a sink config (`_SinkCommon` and its subclasses)."""

    @property
    def timeout(self) -> float: ...

    @property
    def tls(self) -> TlsConfig: ...

    @property
    def proxy(self) -> str | None: ...


def build_client(sink: ClientSettings, concurrency: int) -> httpx.AsyncClient:
    """One pooled client for a sink: `concurrency` connections kept alive, `sink.timeout` for
    each phase, TLS verified unless `insecure_skip_verify` (against `ca_file` when given),
    `sink.proxy`, HTTP/2 when `h2` is installed. Redirects are not followed by the client: send
    through `request()`. Raises `OSError`/`ssl.SSLError` when `ca_file` cannot be loaded."""
    verify: ssl.SSLContext | bool
    if sink.tls.insecure_skip_verify:
        verify = False
    elif sink.tls.ca_file:
        verify = ssl.create_default_context(cafile=sink.tls.ca_file)
    else:
        verify = True
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        timeout=httpx.Timeout(sink.timeout),
        verify=verify,
        proxy=sink.proxy,
        http2=HTTP2_AVAILABLE,
        follow_redirects=False,
    )


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    *,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    max_redirects: int = 3,
) -> httpx.Response:
    """Send a request, following 307/308 (same method, same body) up to `max_redirects` times.

    Returns the final response, which is a 3xx when it is another redirect, when the limit is
    reached, when `Location` is missing, or when it would downgrade https to http;
    `classify_status` turns those into a Pause. `Authorization` is not sent to another origin
    (as httpx does). Raises `httpx.TransportError` for network failures (`classify_exception`)."""
    target = httpx.URL(url)
    sent_headers = dict(headers) if headers is not None else {}
    hops = 0
    while True:
        response = await client.request(method, target, content=content, headers=sent_headers)
        if response.status_code not in (307, 308) or hops >= max_redirects:
            return response
        location = response.headers.get("location")
        if not location:
            return response
        try:
            nxt = target.join(location)
        except httpx.InvalidURL:
            return response
        if nxt.scheme not in ("http", "https") or (
            target.scheme == "https" and nxt.scheme == "http"
        ):
            return response
        if _origin(nxt) != _origin(target):
            sent_headers = {k: v for k, v in sent_headers.items() if k.lower() != "authorization"}
        target = nxt
        hops += 1


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def redact_url(url: str) -> str:
    """`scheme://host[:port]/path` of `url`, for logs: no userinfo, query or fragment."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else f"{netloc}{parts.path}"
