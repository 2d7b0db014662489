"""A small HTTP/1.1 keep-alive connection pool on asyncio streams, for the Kissmetrics sink.

Why it exists: Kissmetrics takes exactly one request per message (SPEC §4), so the sink's
throughput is the per-request cost of its HTTP client. Measured on the team's 2-core machines
against a local nginx answering 204, an `httpx.AsyncClient` request costs ~1,100 µs of CPU
(httpcore alone ~770 µs, mostly anyio and connection-pool bookkeeping), which caps the sink near
550 messages/s; a bare asyncio-streams keep-alive loop costs ~40 µs. This pool keeps the bare
loop's shape and lets `h11` do all HTTP framing and parsing (nothing here parses HTTP by hand).

What it does: one origin (`base_url`), at most `max_connections` connections open, idle ones
reused last-in first-out; a connection is dropped once its peer closed it (EOF seen, h11 in
MUST_CLOSE, `Connection: close`) or after `keepalive_expiry` seconds idle. `sink.timeout`
applies to each phase: connect (TLS handshake included), write, and each read. 307/308 are
followed with method and body kept, up to 3 hops, to the same origin only (so never https ->
http), as `agent/sinks/http.py: request` does; any other status is returned. Response headers
come as a dict with lower-case names; the body is read fully and kept up to 1 MiB (Kissmetrics
answers a tiny GIF).

The keep-alive race: a server may close an idle connection just as a request goes out on it. A
request on a reused connection that fails before any byte of the response arrived (EOF, reset or
broken pipe) is sent once more on a fresh connection. That is safe even for Kissmetrics' POSTs:
the server saw nothing it could have answered, and if it did act on it, the re-send carries the
same `_t`, which Kissmetrics dedupes (same person, event and second).

Errors are the `httpx.TransportError` types `classify_exception` maps, each carrying an
`httpx.Request` of the origin and path (never the query, where the Kissmetrics key travels) and
the timeouts, and chained to the underlying error (an `ssl.SSLError` stays visible, so a
certificate problem is `Pause("tls")`):

    httpx.ConnectError / ConnectTimeout     connecting or the TLS handshake failed / timed out
    httpx.WriteError / WriteTimeout         sending the request failed / timed out
    httpx.ReadError / ReadTimeout           reading the response failed (reset) / timed out
    httpx.RemoteProtocolError               closed without (a complete) response, or not HTTP

What it does not do: proxies (with `sink.proxy` set the sink keeps using httpx), HTTP/2,
cookies, redirects other than 307/308, compression, a pool timeout (a request waits for a free
connection as long as the requests holding them take, each bounded by the phase timeouts).
There is no per-request logging but one DEBUG line (`HTTP Request: ...`, as httpx writes at
INFO) when DEBUG is enabled, without the query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

import h11
import httpx

from agent.config.schema import TlsConfig

__all__ = ["MAX_BODY", "KeepAlivePool", "Response", "client_ssl_context"]

#: Bytes of a response body kept; the rest is read and discarded (the connection stays usable).
MAX_BODY = 1 << 20
_READ_SIZE = 65536
_DEFAULT_PORTS = {"http": 80, "https": 443}

_log = logging.getLogger(__name__)

#: Request headers: (name, value) as bytes, sent as given.
HeaderList = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response: `headers` has lower-case names (repeated fields joined with ", ");
    `body` is at most `MAX_BODY` bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


def client_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The client TLS context for `sink.tls`, chosen as `agent/sinks/http.py: build_client`
    chooses httpx's `verify`: no verification with `insecure_skip_verify`, `ca_file` as the only
    trust anchors when given, else httpx's default store (certifi, or `SSL_CERT_FILE` /
    `SSL_CERT_DIR`). Raises `OSError`/`ssl.SSLError` when `ca_file` cannot be loaded."""
    context: ssl.SSLContext
    if tls.insecure_skip_verify:
        context = httpx.create_ssl_context(verify=False)
    elif tls.ca_file:
        context = ssl.create_default_context(cafile=tls.ca_file)
    else:
        context = httpx.create_ssl_context(verify=True)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Request(NamedTuple):
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Stale(Exception):
    """A reused connection ended before any byte of the response: send again on a fresh one."""


class _Connection:
    __slots__ = ("h11", "idle_since", "reader", "transport", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def usable(self) -> bool:
        """False once the peer closed it or it broke while idle."""
        return not (
            self.transport.is_closing()
            or self.reader.at_eof()
            or self.reader.exception() is not None
        )

    def abort(self) -> None:
        self.transport.abort()


class KeepAlivePool:
    """HTTP/1.1 keep-alive connections to the origin of `base_url`; see the module docstring.

    `request` targets are relative to `base_url`'s path (`https://host/api` + `/e?...` sends
    `/api/e?...`). `ssl_context` is used for an https `base_url` (None: httpx's default,
    verified context); `timeout` is each phase's limit in seconds; `user_agent` goes into every
    request with `Host`. Creating a pool opens nothing (and needs no running loop); `aclose()` closes it."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
        user_agent: str,
        keepalive_expiry: float = 5.0,
    ) -> None:
        parts = urlsplit(base_url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("base_url must be an absolute http:// or https:// URL")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._scheme = scheme
        self._host = parts.hostname
        self._port = parts.port or _DEFAULT_PORTS[scheme]
        bracketed = f"[{self._host}]" if ":" in self._host else self._host
        authority = bracketed if parts.port is None else f"{bracketed}:{self._port}"
        self._origin = f"{scheme}://{authority}"
        self._where = f"{bracketed}:{self._port}"
        self._prefix = parts.path.rstrip("/")
        self._ssl = (
            (ssl_context or httpx.create_ssl_context(verify=True)) if scheme == "https" else None
        )
        self._timeout = timeout
        self._keepalive_expiry = keepalive_expiry
        self._headers: list[tuple[bytes, bytes]] = [
            (b"Host", authority.encode("ascii")),
            (b"User-Agent", user_agent.encode("ascii")),
        ]
        self._slots = asyncio.Semaphore(max_connections)
        #: Idle connections, the most recently used last (reused first).
        self._idle: list[_Connection] = []
        #: Every open connection, idle or in use (for `aclose`).
        self._open: set[_Connection] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"KeepAlivePool({self._origin!r}, open={len(self._open)}, idle={len(self._idle)})"

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or in use."""
        return len(self._open)

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: HeaderList = (),
        body: bytes = b"",
        max_redirects: int = 3,
    ) -> Response:
        """Send `method target` (target relative to `base_url`, with its query) with `headers`
        added to Host and User-Agent and `body` (with its Content-Length), following 307/308
        to the same origin up to `max_redirects` times. Returns the final response (a 307/308
        when the limit is reached, `Location` is missing, or it points to another origin).
        Raises the `httpx.TransportError`s of the module docstring."""
        if self._closed:
            raise RuntimeError("cannot send a request: the pool is closed")
        path = self._prefix + target
        sent = self._headers if not headers else [*self._headers, *headers]
        if body or method not in ("GET", "HEAD"):
            sent = [*sent, (b"Content-Length", str(len(body)).encode("ascii"))]
        hops = 0
        while True:
            response = await self._send(method, path, sent, body)
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug(
                    'HTTP Request: %s %s%s "HTTP/1.1 %d"',
                    method,
                    self._origin,
                    path.partition("?")[0],
                    response.status,
                )
            if response.status not in (307, 308) or hops >= max_redirects:
                return response
            nxt = self._same_origin_target(path, response.headers.get("location"))
            if nxt is None:
                return response
            path = nxt
            hops += 1

    async def aclose(self) -> None:
        """Close every connection, in-flight ones included; later requests raise
        `RuntimeError` (as an httpx client does once closed)."""
        self._closed = True
        self._idle.clear()
        conns, self._open = list(self._open), set()
        for conn in conns:
            conn.writer.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                await conn.writer.wait_closed()

    # -- one exchange ------------------------------------------------------------------------

    async def _send(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Response:
        req = _Request(method, path, headers, body)
        async with self._slots:
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._exchange(conn, req, reused=True)
                except _Stale:
                    pass  # the keep-alive race: once more on a fresh connection
            return await self._exchange(await self._connect(method, path), req, reused=False)

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        horizon = asyncio.get_running_loop().time() - self._keepalive_expiry
        while idle:
            conn = idle.pop()
            if conn.idle_since >= horizon and conn.usable():
                return conn
            self._discard(conn)
        return None

    def _discard(self, conn: _Connection) -> None:
        self._open.discard(conn)
        conn.abort()

    async def _connect(self, method: str, path: str) -> _Connection:
        if self._closed:  # a request `aclose()` cut short must not open a new connection
            raise RuntimeError("cannot send a request: the pool is closed")
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                    limit=_READ_SIZE,
                )
        except TimeoutError as exc:
            raise self._error(
                httpx.ConnectTimeout, f"no connection to {self._where} in time", method, path
            ) from exc
        except OSError as exc:  # ssl.SSLError included: classify_exception finds it as the cause
            raise self._error(
                httpx.ConnectError, f"cannot connect to {self._where}", method, path
            ) from exc
        conn = _Connection(reader, writer)
        self._open.add(conn)
        return conn

    async def _exchange(self, conn: _Connection, req: _Request, *, reused: bool) -> Response:
        """Send the request on `conn` and read the response; `conn` goes back to the idle list
        when it can carry another request, and is closed otherwise. Raises `_Stale` when `reused`
        and the connection ended before any response byte."""
        try:
            response = await self._roundtrip(conn, req, reused)
        except BaseException:
            self._discard(conn)
            raise
        state = conn.h11
        if state.our_state is h11.DONE and state.their_state is h11.DONE and conn.usable():
            state.start_next_cycle()
            conn.idle_since = asyncio.get_running_loop().time()
            if self._closed:
                self._discard(conn)
            else:
                self._idle.append(conn)
        else:
            self._open.discard(conn)
            conn.writer.close()
        return response

    async def _roundtrip(self, conn: _Connection, req: _Request, reused: bool) -> Response:
        method, path, headers, body = req
        state = conn.h11
        try:
            head = state.send(h11.Request(method=method, target=path, headers=headers)) or b""
            if body:
                head += state.send(h11.Data(data=body)) or b""
            data = head + (state.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:
            # A bad method, target or header: a bug in the caller, not the endpoint's doing.
            raise ValueError(f"cannot send this request: {exc}") from exc

        timeout = self._timeout
        try:
            conn.writer.write(data)
            if conn.transport.get_write_buffer_size():
                async with asyncio.timeout(timeout):
                    await conn.writer.drain()
        except TimeoutError as exc:
            raise self._error(
                httpx.WriteTimeout, f"sending to {self._where} timed out", method, path
            ) from exc
        except OSError as exc:
            if reused:
                raise _Stale from exc
            raise self._error(
                httpx.WriteError, f"connection to {self._where} broken while sending", method, path
            ) from exc

        reader = conn.reader
        status = 0
        response_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        kept = 0
        received = False
        while True:
            try:
                event = state.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._error(
                    httpx.RemoteProtocolError,
                    f"{self._where} sent an invalid or incomplete response",
                    method,
                    path,
                ) from exc
            if event is h11.NEED_DATA:
                try:
                    async with asyncio.timeout(timeout):
                        chunk = await reader.read(_READ_SIZE)
                except TimeoutError as exc:
                    raise self._error(
                        httpx.ReadTimeout, f"no response from {self._where} in time", method, path
                    ) from exc
                except OSError as exc:
                    if reused and not received:
                        raise _Stale from exc
                    raise self._error(
                        httpx.ReadError,
                        f"connection to {self._where} broken while reading",
                        method,
                        path,
                    ) from exc
                if not chunk and not received:
                    if reused:
                        raise _Stale
                    raise self._error(
                        httpx.RemoteProtocolError,
                        f"{self._where} closed the connection without a response",
                        method,
                        path,
                    )
                received = True
                state.receive_data(chunk)
                continue
            kind = type(event)
            if kind is h11.Response:
                assert isinstance(event, h11.Response)
                status = event.status_code
                for name, value in event.headers:
                    key = name.decode("latin-1")
                    text = value.decode("latin-1")
                    held = response_headers.get(key)
                    response_headers[key] = text if held is None else f"{held}, {text}"
            elif kind is h11.Data:
                assert isinstance(event, h11.Data)
                if kept < MAX_BODY:
                    part = bytes(event.data[: MAX_BODY - kept])
                    chunks.append(part)
                    kept += len(part)
            elif kind is h11.EndOfMessage:
                return Response(status, response_headers, b"".join(chunks))
            elif kind is h11.ConnectionClosed:
                raise self._error(
                    httpx.RemoteProtocolError,
                    f"{self._where} closed the connection without a complete response",
                    method,
                    path,
                )
            # InformationalResponse (1xx): the final response follows.

    # -- helpers -----------------------------------------------------------------------------

    def _same_origin_target(self, path: str, location: str | None) -> str | None:
        """The request target `location` points to from `path`, or None when it is missing,
        unparsable or on another origin (scheme, host and port all count)."""
        if not location:
            return None
        try:
            parts = urlsplit(urljoin(self._origin + path, location.strip()))
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
        except ValueError:
            return None
        if (parts.scheme.lower(), parts.hostname, port) != (self._scheme, self._host, self._port):
            return None
        target = parts.path or "/"
        return f"{target}?{parts.query}" if parts.query else target

    def _error(
        self, kind: type[httpx.TransportError], message: str, method: str, path: str
    ) -> httpx.TransportError:
        """`kind(message)` with the request `classify_exception` reads host, port and timeouts
        from; its URL has no query."""
        t = self._timeout
        request = httpx.Request(
            method,
            self._origin + path.partition("?")[0],
            extensions={"timeout": {"connect": t, "read": t, "write": t, "pool": t}},
        )
        return kind(message, request=request)
