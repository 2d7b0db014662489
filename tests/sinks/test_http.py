"""Outcome classification, the pooled client and redirects of agent/sinks/http.py.

Network behaviour is tested against real sockets on 127.0.0.1: small asyncio servers that answer,
hang, close, reset, or speak TLS with a certificate made at test time.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import importlib.util
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agent.config.schema import TlsConfig
from agent.sinks.base import Delivered, Outcome, Pause, Reject, Retry
from agent.sinks.http import (
    HTTP2_AVAILABLE,
    build_client,
    classify_exception,
    classify_status,
    parse_retry_after,
    redact_url,
    request,
)
from tests.helpers import free_port
from tests.sinks.support import (
    CertPair,
    Handler,
    Seen,
    Server,
    segment_config,
    serve,
    server_context,
)

NOW = 1_700_000_000.0
MAX_BACKOFF = 300.0
SECRET = "s3cr3t-key-value"


# --- helpers: tiny servers on 127.0.0.1 ----------------------------------------------------------


async def read_request(reader: asyncio.StreamReader) -> Seen | None:
    """Read one HTTP/1.1 request (Content-Length bodies only); None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Seen(method, target, headers, body)


async def respond(
    writer: asyncio.StreamWriter, status: int, headers: dict[str, str] | None = None
) -> None:
    lines = [f"HTTP/1.1 {status} X", "Content-Length: 0", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()


async def transport_error(client: httpx.AsyncClient, url: str) -> httpx.TransportError:
    """The TransportError a real request to `url` raises."""
    with pytest.raises(httpx.TransportError) as info:
        await client.get(url)
    return info.value


def assert_no_secret(outcome: Outcome) -> None:
    detail = getattr(outcome, "detail", "")
    assert SECRET not in detail
    assert "?" not in detail
    assert "/e" not in detail


async def classified(handler: Handler, read_timeout: float) -> tuple[Outcome, Server]:
    """What classify_exception makes of a request to a server running `handler` (and the server)."""
    async with serve(handler) as srv, httpx.AsyncClient(timeout=read_timeout) as client:
        exc = await transport_error(client, f"{srv.origin}/e?_k={SECRET}")
    return classify_exception(exc), srv


async def close_without_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request, then close without a response."""
    await read_request(reader)


async def half_response_then_rst(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Read the request, send half a response, then reset the connection (SO_LINGER 0)."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# --- status codes -------------------------------------------------------------------------------

DATE_IN_120S = email.utils.formatdate(NOW + 120, usegmt=True)

STATUS_TABLE: list[tuple[int, dict[str, str], bool, type, str | None, float | None]] = [
    # status, response headers, accept_304, outcome type, reason, after
    (200, {}, False, Delivered, None, None),
    (204, {}, False, Delivered, None, None),
    (299, {}, False, Delivered, None, None),
    (304, {}, True, Delivered, None, None),
    (304, {}, False, Pause, "http_3xx", None),
    (301, {"Location": "/x"}, False, Pause, "http_3xx", None),
    (302, {"Location": "/x"}, False, Pause, "http_3xx", None),
    (307, {"Location": "/x"}, False, Pause, "http_3xx", None),
    (400, {}, False, Reject, "http_400", None),
    (401, {}, False, Pause, "http_4xx", None),
    (403, {}, False, Pause, "http_4xx", None),
    (404, {}, False, Pause, "http_4xx", None),
    (408, {}, False, Retry, "http_4xx", None),
    (413, {}, False, Reject, "http_413", None),
    (429, {}, False, Retry, "http_429", None),
    (429, {"Retry-After": "30"}, False, Retry, "http_429", 30.0),
    (460, {}, False, Retry, "http_4xx", None),
    (500, {}, False, Retry, "http_5xx", None),
    (500, {"Retry-After": "30"}, False, Retry, "http_5xx", None),
    (501, {}, False, Reject, "http_501", None),
    (502, {}, False, Retry, "http_5xx", None),
    (503, {"Retry-After": DATE_IN_120S}, False, Retry, "http_5xx", 120.0),
    (505, {}, False, Reject, "http_505", None),
    (599, {}, False, Retry, "http_5xx", None),
    (199, {}, False, Retry, "http_5xx", None),
    (600, {}, False, Retry, "http_5xx", None),
]


def _status_id(case: tuple[int, dict[str, str], bool, type, str | None, float | None]) -> str:
    status, headers, accept_304, *_ = case
    return f"{status}{'-accept304' if accept_304 else ''}{'-retry-after' if headers.get('Retry-After') else ''}"


class TestClassifyStatus:
    @pytest.mark.parametrize("case", STATUS_TABLE, ids=[_status_id(c) for c in STATUS_TABLE])
    def test_status_table(
        self, case: tuple[int, dict[str, str], bool, type, str | None, float | None]
    ) -> None:
        """Each status class ends in the SPEC §4 outcome, reason label and Retry-After."""
        status, headers, accept_304, kind, reason, after = case
        outcome = classify_status(
            status, headers, NOW, max_backoff=MAX_BACKOFF, accept_304=accept_304
        )
        assert type(outcome) is kind
        if reason is not None:
            assert getattr(outcome, "reason", None) == reason
        if isinstance(outcome, Retry | Pause):
            assert outcome.after == after

    def test_details_name_the_status(self) -> None:
        """The detail of a failure says which status came back, in words."""
        outcome = classify_status(413, {}, NOW, max_backoff=MAX_BACKOFF)
        assert outcome == Reject("http_413", "HTTP 413 Request Entity Too Large")

    def test_redirect_detail_never_carries_the_location(self) -> None:
        """A 301's detail does not echo its Location header (it may hold a query with a key)."""
        outcome = classify_status(
            301, {"Location": f"https://x.example/e?_k={SECRET}"}, NOW, max_backoff=MAX_BACKOFF
        )
        assert isinstance(outcome, Pause)
        assert SECRET not in outcome.detail
        assert "307/308" in outcome.detail

    def test_accepts_httpx_headers(self) -> None:
        """httpx.Headers from a real response work as the header mapping."""
        headers = httpx.Headers({"retry-after": "12"})
        outcome = classify_status(429, headers, NOW, max_backoff=MAX_BACKOFF)
        assert outcome == Retry("http_429", "HTTP 429 Too Many Requests", 12.0)


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("0", 0.0),
            ("17", 17.0),
            (" 1.5 ", 1.5),
            ("-5", 0.0),
            ("100000", MAX_BACKOFF),
            (DATE_IN_120S, 120.0),
            (email.utils.formatdate(NOW - 60, usegmt=True), 0.0),
            (email.utils.formatdate(NOW + 10**6, usegmt=True), MAX_BACKOFF),
            ("Tue, 14 Nov 2023 22:15:20 -0000", 120.0),
        ],
        ids=[
            "zero",
            "seconds",
            "decimal",
            "negative",
            "capped",
            "date",
            "past-date",
            "far-date",
            "naive-date",
        ],
    )
    def test_parses_seconds_and_dates(self, value: str, expected: float) -> None:
        """Seconds and HTTP dates become a delay from now, clamped to [0, max_backoff]."""
        assert parse_retry_after({"Retry-After": value}, NOW, MAX_BACKOFF) == expected

    @pytest.mark.parametrize("value", ["", "soon", "1e3", "inf", "nan", "12s", "Wed, 99 Foo"])
    def test_unparsable_gives_none(self, value: str) -> None:
        """A value that is neither delay-seconds nor an HTTP date is ignored."""
        assert parse_retry_after({"Retry-After": value}, NOW, MAX_BACKOFF) is None

    def test_absent_gives_none(self) -> None:
        """No Retry-After header: no hold."""
        assert parse_retry_after({"Content-Type": "text/plain"}, NOW, MAX_BACKOFF) is None

    def test_plain_mapping_is_case_insensitive(self) -> None:
        """A plain dict with a lower-case header name is found too."""
        assert parse_retry_after({"retry-after": "9"}, NOW, MAX_BACKOFF) == 9.0


# --- exceptions ---------------------------------------------------------------------------------


def _request() -> httpx.Request:
    return httpx.Request(
        "POST", f"https://user:{SECRET}@api.example.com/e?_k={SECRET}", headers={"X": SECRET}
    )


class TestClassifyExceptionTable:
    @pytest.mark.parametrize(
        ("exc_type", "reason"),
        [
            (httpx.ConnectTimeout, "timeout"),
            (httpx.ReadTimeout, "timeout"),
            (httpx.WriteTimeout, "timeout"),
            (httpx.PoolTimeout, "timeout"),
            (httpx.ConnectError, "connect"),
            (httpx.RemoteProtocolError, "reset"),
            (httpx.ReadError, "reset"),
            (httpx.WriteError, "reset"),
            (httpx.CloseError, "reset"),
            (httpx.ProxyError, "connect"),
            (httpx.UnsupportedProtocol, "connect"),
            (httpx.LocalProtocolError, "connect"),
        ],
    )
    def test_exception_types_map_to_reasons(
        self, exc_type: type[httpx.TransportError], reason: str
    ) -> None:
        """Every httpx transport error class gets its SPEC §7 reason, and the detail leaks nothing."""
        outcome = classify_exception(exc_type("boom", request=_request()))
        assert isinstance(outcome, Retry)
        assert outcome.reason == reason
        assert "api.example.com:443" in outcome.detail
        assert_no_secret(outcome)

    def test_timeout_detail_names_the_configured_timeout(self) -> None:
        """A read timeout says how long it waited, taken from the request's timeout settings."""
        req = _request()
        req.extensions["timeout"] = httpx.Timeout(2.5).as_dict()
        outcome = classify_exception(httpx.ReadTimeout("timed out", request=req))
        assert outcome == Retry("timeout", "no response from api.example.com:443 within 2.5s")

    def test_error_without_request_still_classifies(self) -> None:
        """A hand-built error with no request gets a generic endpoint name instead of failing."""
        outcome = classify_exception(httpx.ReadError("reset"))
        assert outcome == Retry(
            "reset", "connection to the endpoint broken while reading the response"
        )

    def test_ssl_message_without_cause_is_tls(self) -> None:
        """A connect error whose message reports CERTIFICATE_VERIFY_FAILED pauses with tls."""
        exc = httpx.ConnectError(
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", request=_request()
        )
        outcome = classify_exception(exc)
        assert isinstance(outcome, Pause)
        assert outcome.reason == "tls"

    def test_dns_failure_is_connect(self) -> None:
        """A resolver failure in the cause chain is a connect error that says so."""
        try:
            try:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            except socket.gaierror as inner:
                raise httpx.ConnectError("[Errno -2]", request=_request()) from inner
        except httpx.ConnectError as exc:
            outcome = classify_exception(exc)
        assert outcome == Retry(
            "connect", "cannot resolve the host of api.example.com:443 (Name or service not known)"
        )

    def test_non_transport_error_is_not_classified(self) -> None:
        """A non-transport exception is a bug: classify_exception refuses it with TypeError."""
        with pytest.raises(TypeError, match="not ValueError"):
            classify_exception(ValueError("bad argument"))
        with pytest.raises(TypeError):
            classify_exception(httpx.InvalidURL("bad url"))


@pytest.mark.timeout(10)
class TestClassifyExceptionOnSockets:
    @pytest.mark.anyio
    async def test_connection_refused_is_connect(self) -> None:
        """Connecting to a closed port is a connect Retry naming only host:port."""
        port = free_port()
        async with httpx.AsyncClient() as client:
            exc = await transport_error(client, f"http://127.0.0.1:{port}/e?_k={SECRET}")
        outcome = classify_exception(exc)
        assert outcome == Retry("connect", f"connection refused by 127.0.0.1:{port}")

    @pytest.mark.anyio
    async def test_server_that_never_answers_is_timeout(self) -> None:
        """A server that accepts and stays silent yields a timeout Retry after the read timeout."""

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # until the client gives up and closes

        outcome, srv = await classified(silent, read_timeout=0.2)
        assert outcome == Retry("timeout", f"no response from 127.0.0.1:{srv.port} within 0.2s")

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        "handler", [close_without_answer, half_response_then_rst], ids=["close", "half-then-rst"]
    )
    async def test_response_cut_off_is_reset(self, handler: Handler) -> None:
        """A server that reads the request and closes without a response, or that sends half a
        response followed by a TCP RST (SO_LINGER 0), yields reset, with no secret in its detail."""
        outcome, _ = await classified(handler, read_timeout=5)
        assert isinstance(outcome, Retry)
        assert outcome.reason == "reset"
        assert_no_secret(outcome)


# --- TLS ----------------------------------------------------------------------------------------


async def answer_204(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await read_request(reader) is not None:
        await respond(writer, 204)


@pytest.mark.timeout(10)
class TestTls:
    @pytest.mark.anyio
    async def test_untrusted_certificate_pauses_with_tls(self, self_signed: CertPair) -> None:
        """Verification on against a self-signed server pauses the sink with reason tls."""
        async with serve(answer_204, server_context(self_signed)) as srv:
            async with build_client(segment_config(), concurrency=1) as client:
                exc = await transport_error(client, f"https://127.0.0.1:{srv.port}/e?_k={SECRET}")
        outcome = classify_exception(exc)
        assert isinstance(outcome, Pause)
        assert outcome.reason == "tls"
        assert outcome.detail.startswith(f"TLS handshake with 127.0.0.1:{srv.port} failed")
        assert "self-signed" in outcome.detail
        assert_no_secret(outcome)

    @pytest.mark.anyio
    async def test_ca_file_makes_the_certificate_trusted(self, self_signed: CertPair) -> None:
        """With sink.tls.ca_file pointing at the certificate, the request succeeds."""
        config = segment_config(tls=TlsConfig(ca_file=str(self_signed.cert)))
        async with serve(answer_204, server_context(self_signed)) as srv:
            async with build_client(config, concurrency=1) as client:
                response = await client.get(f"https://127.0.0.1:{srv.port}/e")
        assert (
            classify_status(response.status_code, response.headers, NOW, max_backoff=MAX_BACKOFF)
            == Delivered()
        )

    @pytest.mark.anyio
    async def test_insecure_skip_verify_accepts_any_certificate(
        self, self_signed: CertPair
    ) -> None:
        """insecure_skip_verify: true connects to a self-signed server without its CA."""
        config = segment_config(tls=TlsConfig(insecure_skip_verify=True))
        async with serve(answer_204, server_context(self_signed)) as srv:
            async with build_client(config, concurrency=1) as client:
                response = await client.get(f"https://127.0.0.1:{srv.port}/e")
        assert response.status_code == 204

    @pytest.mark.anyio
    async def test_https_to_a_plain_http_port_is_tls(self) -> None:
        """An https URL pointing at a plain-HTTP port fails the handshake: Pause tls."""

        async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)  # the ClientHello arrives; answer in plain HTTP
            await respond(writer, 400)

        async with serve(plain) as srv, build_client(segment_config(), concurrency=1) as client:
            exc = await transport_error(client, f"https://127.0.0.1:{srv.port}/e")
        outcome = classify_exception(exc)
        assert isinstance(outcome, Pause)
        assert outcome.reason == "tls"


# --- the client ---------------------------------------------------------------------------------


@pytest.mark.timeout(10)
class TestBuildClient:
    def test_client_does_not_follow_redirects(self) -> None:
        """The client itself follows nothing: 301/302/303 must reach classify_status."""
        client = build_client(segment_config(), concurrency=4)
        assert client.follow_redirects is False

    def test_timeout_applies_to_every_phase(self) -> None:
        """sink.timeout bounds connect, read, write and pool waits."""
        client = build_client(segment_config(timeout="3s"), concurrency=4)
        assert client.timeout == httpx.Timeout(3.0)

    def test_http2_only_when_h2_is_installed(self) -> None:
        """HTTP/2 is enabled exactly when the h2 package can be imported (else HTTP/1.1)."""
        assert HTTP2_AVAILABLE is (importlib.util.find_spec("h2") is not None)

    @pytest.mark.anyio
    async def test_at_most_concurrency_connections(self) -> None:
        """With concurrency 2, a third simultaneous request waits for a pooled connection."""
        open_now = 0
        peak = 0
        two_in = asyncio.Event()
        release = asyncio.Event()

        async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal open_now, peak
            open_now += 1
            peak = max(peak, open_now)
            try:
                while await read_request(reader) is not None:
                    if open_now >= 2:
                        two_in.set()
                    await release.wait()
                    writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
            finally:
                open_now -= 1

        async with serve(held) as srv, build_client(segment_config(), concurrency=2) as client:
            requests = [asyncio.create_task(client.get(f"{srv.origin}/e")) for _ in range(3)]
            await two_in.wait()
            await asyncio.sleep(0.2)  # real time for a third connection to show up, if it would
            assert peak == 2
            release.set()
            responses = await asyncio.gather(*requests)
        assert [r.status_code for r in responses] == [204, 204, 204]
        assert peak == 2

    @pytest.mark.anyio
    async def test_proxy_is_used(self) -> None:
        """sink.proxy routes plain-HTTP requests through the proxy (absolute-form target)."""
        targets: list[str] = []

        async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen = await read_request(reader)
            if seen is not None:
                targets.append(seen.target)
                await respond(writer, 204)

        async with serve(proxy) as srv:
            async with build_client(segment_config(proxy=srv.origin), concurrency=1) as client:
                response = await client.get("http://collector.invalid/v1/batch")
        assert response.status_code == 204
        assert targets == ["http://collector.invalid/v1/batch"]

    def test_missing_ca_file_fails_at_build(self, tmp_path: Path) -> None:
        """A ca_file that does not exist fails when the client is built, not on first send."""
        with pytest.raises(FileNotFoundError):
            build_client(segment_config(tls=TlsConfig(ca_file=str(tmp_path / "nope.pem"))), 1)


# --- redirects ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def redirecting_server(
    routes: dict[str, tuple[int, dict[str, str]]],
) -> AsyncIterator[Server]:
    """A server answering each path from `routes` (default 200) and recording every request."""
    seen: list[Seen] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = await read_request(reader)
        if got is None:
            return
        seen.append(got)
        status, headers = routes.get(got.target, (200, {}))
        await respond(writer, status, headers)

    async with serve(handler) as srv:
        srv.seen = seen
        yield srv


def hops(srv: Server) -> list[tuple[str, str, bytes]]:
    """(method, target, body) of each request `srv` received, in order."""
    return [(s.method, s.target, s.body) for s in srv.seen]


@pytest.mark.timeout(10)
class TestRequestRedirects:
    @pytest.mark.anyio
    async def test_307_is_followed_with_method_and_body(self) -> None:
        """A 307 is re-sent to its Location as the same POST with the same body and headers."""
        routes = {"/start": (307, {"Location": "/next"})}
        async with redirecting_server(routes) as srv, httpx.AsyncClient() as client:
            response = await request(
                client, "POST", f"{srv.origin}/start", content=b"payload", headers={"X-A": "1"}
            )
        assert response.status_code == 200
        assert hops(srv) == [("POST", "/start", b"payload"), ("POST", "/next", b"payload")]
        assert srv.seen[1].headers["x-a"] == "1"

    @pytest.mark.anyio
    async def test_308_with_absolute_location_is_followed(self) -> None:
        """A 308 to an absolute URL on the same origin keeps method, body and Authorization."""
        routes: dict[str, tuple[int, dict[str, str]]] = {}
        async with redirecting_server(routes) as front, httpx.AsyncClient() as client:
            routes["/perm"] = (308, {"Location": f"{front.origin}/moved-here"})
            response = await request(
                client,
                "PUT",
                f"{front.origin}/perm",
                content=b"body",
                headers={"Authorization": "Basic abc"},
            )
        assert response.status_code == 200
        assert hops(front) == [("PUT", "/perm", b"body"), ("PUT", "/moved-here", b"body")]
        assert front.seen[1].headers["authorization"] == "Basic abc"

    @pytest.mark.anyio
    @pytest.mark.parametrize("status", [301, 302, 303])
    async def test_other_redirects_are_returned_not_followed(self, status: int) -> None:
        """301/302/303 come back as they are (one request), for classify_status to pause."""
        routes = {"/start": (status, {"Location": "/next"})}
        async with redirecting_server(routes) as srv, httpx.AsyncClient() as client:
            response = await request(client, "POST", f"{srv.origin}/start", content=b"x")
        assert response.status_code == status
        assert [s.target for s in srv.seen] == ["/start"]

    @pytest.mark.anyio
    async def test_redirect_loop_stops_after_max_redirects(self) -> None:
        """A 307 loop is followed max_redirects times, then the 307 itself is returned."""
        routes = {"/loop": (307, {"Location": "/loop"})}
        async with redirecting_server(routes) as srv, httpx.AsyncClient() as client:
            response = await request(
                client, "POST", f"{srv.origin}/loop", content=b"x", max_redirects=2
            )
        assert response.status_code == 307
        assert len(srv.seen) == 3
        outcome = classify_status(307, response.headers, NOW, max_backoff=MAX_BACKOFF)
        assert isinstance(outcome, Pause)
        assert outcome.reason == "http_3xx"

    @pytest.mark.anyio
    async def test_307_without_location_is_returned(self) -> None:
        """A 307 with no Location cannot be followed and is returned as is."""
        routes: dict[str, tuple[int, dict[str, str]]] = {"/start": (307, {})}
        async with redirecting_server(routes) as srv, httpx.AsyncClient() as client:
            response = await request(client, "POST", f"{srv.origin}/start", content=b"x")
        assert response.status_code == 307
        assert len(srv.seen) == 1

    @pytest.mark.anyio
    async def test_authorization_is_dropped_for_another_origin(self) -> None:
        """A 307 to another host:port is followed without the Authorization header."""
        async with redirecting_server({}) as other:
            routes = {"/start": (307, {"Location": f"{other.origin}/landing"})}
            async with redirecting_server(routes) as srv, httpx.AsyncClient() as client:
                response = await request(
                    client,
                    "POST",
                    f"{srv.origin}/start",
                    content=b"batch",
                    headers={"Authorization": f"Basic {SECRET}", "Content-Type": "a/b"},
                )
        assert response.status_code == 200
        assert srv.seen[0].headers["authorization"] == f"Basic {SECRET}"
        landed = other.seen[0]
        assert (landed.method, landed.target, landed.body) == ("POST", "/landing", b"batch")
        assert "authorization" not in landed.headers
        assert landed.headers["content-type"] == "a/b"

    @pytest.mark.anyio
    async def test_https_to_http_downgrade_is_not_followed(self) -> None:
        """A 307 from https to http is returned, never followed (it would expose the body)."""

        def handler(req: httpx.Request) -> httpx.Response:
            if req.url.scheme == "https":
                return httpx.Response(307, headers={"Location": "http://api.example.com/x"})
            return httpx.Response(200)

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            response = await request(client, "POST", "https://api.example.com/x", content=b"x")
        assert response.status_code == 307


# --- redact_url ---------------------------------------------------------------------------------


class TestRedactUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("https://trk.kissmetrics.io/e?_k=KEY&_p=bob", "https://trk.kissmetrics.io/e"),
            ("https://user:pw@api.segment.io/v1/batch", "https://api.segment.io/v1/batch"),
            ("http://127.0.0.1:8080/x#frag", "http://127.0.0.1:8080/x"),
            ("http://[::1]:9000/p?q=1", "http://[::1]:9000/p"),
            ("https://Host.Example", "https://host.example"),
            ("http://h:notaport/x", "<invalid URL>"),
        ],
        ids=["query", "userinfo", "port-fragment", "ipv6", "no-path", "bad-port"],
    )
    def test_keeps_only_scheme_host_port_path(self, url: str, expected: str) -> None:
        """Userinfo, query and fragment never survive; scheme, host, port and path do."""
        assert redact_url(url) == expected
