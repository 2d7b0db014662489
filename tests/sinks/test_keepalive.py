"""The keep-alive pool of agent/sinks/keepalive.py against real sockets on 127.0.0.1.

Plain HTTP goes to tests/receiver.py's `Receiver` (its `Request.connection` numbers show which
TCP connection carried a request); TLS goes to a small asyncio server with a certificate made at
test time (as tests/sinks/test_http.py does). Errors are checked through `classify_exception`,
the one classification the sinks use.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from pydantic import SecretStr

from agent.config.schema import KissmetricsSinkConfig, TlsConfig
from agent.events.messages import encode, track_message
from agent.sinks.base import Delivered, OutboxMessage, Pause, Retry
from agent.sinks.http import classify_exception, classify_status
from agent.sinks.keepalive import MAX_BODY, KeepAlivePool, client_ssl_context
from agent.sinks.kissmetrics import KissmetricsSink
from tests.helpers import free_port
from tests.receiver import Receiver, Request, Response
from tests.sinks.support import CertPair, kissmetrics_config, serve, server_context

SECRET = "km-SECRET-0badc0ffee"
TARGET = f"/e?_k={SECRET}&_p=visitor&_n=Signed%20Up&_t=1795752000&_d=1"
FORM = ((b"Content-Type", b"application/x-www-form-urlencoded"),)


def make_pool(url: str, *, max_connections: int = 4, timeout: float = 5.0) -> KeepAlivePool:
    return KeepAlivePool(
        url,
        max_connections=max_connections,
        timeout=timeout,
        ssl_context=None,
        user_agent="trackd/test",
    )


@pytest.fixture
async def pool(rx: Receiver) -> AsyncIterator[KeepAlivePool]:
    async with contextlib.aclosing(make_pool(rx.url)) as p:
        yield p


async def failure(pool: KeepAlivePool, target: str = TARGET) -> httpx.TransportError:
    """The TransportError a request for `target` raises."""
    with pytest.raises(httpx.TransportError) as info:
        await pool.request("GET", target)
    return info.value


def connections(requests: list[Request]) -> list[int]:
    return [r.connection for r in requests]


# --- keep-alive ---------------------------------------------------------------------------------


@pytest.mark.timeout(20)
class TestKeepAlive:
    @pytest.mark.anyio
    async def test_sequential_requests_share_one_connection(
        self, pool: KeepAlivePool, rx: Receiver
    ) -> None:
        """Requests one after another all travel on the same TCP connection."""
        for _ in range(3):
            assert (await pool.request("GET", TARGET)).status == 204
        assert connections(rx.wait_for(3)) == [1, 1, 1]
        assert pool.open_connections == 1

    @pytest.mark.anyio
    async def test_concurrency_is_bounded_by_max_connections(self, rx: Receiver) -> None:
        """Ten concurrent slow requests with max_connections=3 never have more than 3 open."""
        rx.default = Response(204, delay=0.1)
        async with contextlib.aclosing(make_pool(rx.url, max_connections=3)) as pool:
            answers = await asyncio.gather(*(pool.request("GET", TARGET) for _ in range(10)))
            assert [a.status for a in answers] == [204] * 10
            assert pool.open_connections <= 3
        assert rx.max_in_flight == 3
        assert len(set(connections(rx.wait_for(10)))) == 3

    @pytest.mark.anyio
    async def test_idle_connections_are_reused_last_in_first_out(
        self, pool: KeepAlivePool, rx: Receiver
    ) -> None:
        """The connection that became idle last carries the next request."""
        rx.respond_with(lambda req: Response(204, delay=0.3) if req.path == "/slow" else None)
        await asyncio.gather(pool.request("GET", "/slow"), pool.request("GET", "/fast"))
        await pool.request("GET", "/next")
        by_path = {r.path: r.connection for r in rx.wait_for(3)}
        assert by_path["/slow"] != by_path["/fast"]
        assert by_path["/next"] == by_path["/slow"]

    @pytest.mark.anyio
    async def test_connection_close_header_drops_the_connection(
        self, pool: KeepAlivePool, rx: Receiver
    ) -> None:
        """A response with `Connection: close` is not followed by reuse of its connection."""
        rx.script(Response(204, headers={"Connection": "close"}))
        await pool.request("GET", TARGET)
        assert pool.open_connections == 0
        await pool.request("GET", TARGET)
        assert connections(rx.wait_for(2)) == [1, 2]

    @pytest.mark.anyio
    async def test_idle_connection_closed_by_the_server_is_replaced(
        self, pool: KeepAlivePool, rx: Receiver
    ) -> None:
        """After the server closed the idle connection, the next request succeeds on a new one."""
        await pool.request("GET", TARGET)
        rx.close_all_connections()
        await asyncio.sleep(0.05)  # let the loop see the FIN (either way the request must work)
        assert (await pool.request("GET", TARGET)).status == 204
        assert connections(rx.wait_for(2)) == [1, 2]

    @pytest.mark.anyio
    async def test_expired_idle_connection_is_not_reused(self, rx: Receiver) -> None:
        """A connection idle longer than keepalive_expiry is closed instead of reused."""
        pool = KeepAlivePool(
            rx.url,
            max_connections=1,
            timeout=5.0,
            ssl_context=None,
            user_agent="trackd/test",
            keepalive_expiry=0.0,
        )
        try:
            await pool.request("GET", TARGET)
            await pool.request("GET", TARGET)
        finally:
            await pool.aclose()
        assert connections(rx.wait_for(2)) == [1, 2]


# --- the keep-alive race ------------------------------------------------------------------------


@pytest.mark.timeout(20)
class TestStaleConnectionRetry:
    @pytest.mark.anyio
    async def test_close_on_a_reused_connection_is_retried_once(
        self, pool: KeepAlivePool, rx: Receiver
    ) -> None:
        """A reused connection closed before any response byte: sent again on a fresh one."""
        rx.script(Response(204), Response(action="close"))
        await pool.request("GET", TARGET)
        assert (await pool.request("GET", TARGET)).status == 204
        assert connections(rx.wait_for(3)) == [1, 1, 2]

    @pytest.mark.anyio
    async def test_retried_request_is_identical(self, pool: KeepAlivePool, rx: Receiver) -> None:
        """The re-sent request has the same method, target and body as the lost one."""
        rx.script(Response(204), Response(action="close"))
        await pool.request("GET", TARGET)
        await pool.request("POST", "/e", headers=FORM, body=b"_k=k&_n=Long&note=xyz")
        _, lost, again = rx.wait_for(3)
        assert (again.method, again.path, again.body) == ("POST", "/e", b"_k=k&_n=Long&note=xyz")
        assert (lost.method, lost.path, lost.body) == (again.method, again.path, again.body)

    @pytest.mark.anyio
    async def test_only_one_retry(self, pool: KeepAlivePool, rx: Receiver) -> None:
        """When the fresh connection also closes without an answer, the error is raised."""
        rx.script(Response(204), Response(action="close"), Response(action="close"))
        await pool.request("GET", TARGET)
        exc = await failure(pool)
        assert isinstance(exc, httpx.RemoteProtocolError)
        assert len(rx.wait_for(3)) == 3

    @pytest.mark.anyio
    async def test_close_on_a_fresh_connection_is_not_retried(
        self, pool: KeepAlivePool, rx: Receiver
    ) -> None:
        """On a new connection, a close without an answer is a RemoteProtocolError (reset)."""
        rx.script(Response(action="close"))
        exc = await failure(pool)
        assert isinstance(exc, httpx.RemoteProtocolError)
        assert classify_exception(exc) == Retry(
            "reset", f"127.0.0.1:{rx.port} closed the connection without a complete response"
        )
        assert len(rx.requests) == 1


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
class TestErrors:
    @pytest.mark.anyio
    async def test_reset_mid_response_is_reset(self, pool: KeepAlivePool, rx: Receiver) -> None:
        """Half the headers then an RST is a ReadError or RemoteProtocolError: Retry reset."""
        rx.script(Response(action="reset"))
        exc = await failure(pool)
        assert isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError)
        outcome = classify_exception(exc)
        assert isinstance(outcome, Retry) and outcome.reason == "reset"

    @pytest.mark.anyio
    async def test_hang_is_read_timeout(self, rx: Receiver) -> None:
        """A server that never answers is a ReadTimeout after `timeout`: Retry timeout."""
        rx.script(Response(action="hang"))
        async with contextlib.aclosing(make_pool(rx.url, timeout=0.3)) as pool:
            exc = await failure(pool)
        assert isinstance(exc, httpx.ReadTimeout)
        assert classify_exception(exc) == Retry(
            "timeout", f"no response from 127.0.0.1:{rx.port} within 0.3s"
        )

    @pytest.mark.anyio
    async def test_refused_is_connect_error(self) -> None:
        """Nothing listening is a ConnectError: Retry connect naming host:port only."""
        port = free_port()
        async with contextlib.aclosing(make_pool(f"http://127.0.0.1:{port}")) as pool:
            exc = await failure(pool)
        assert isinstance(exc, httpx.ConnectError)
        assert classify_exception(exc) == Retry(
            "connect", f"connection refused by 127.0.0.1:{port}"
        )

    @pytest.mark.anyio
    async def test_errors_never_carry_the_query(self, rx: Receiver) -> None:
        """Neither the message, the request URL nor the outcome of an error holds the query."""
        rx.script(Response(action="hang"))
        async with contextlib.aclosing(make_pool(rx.url, timeout=0.2)) as pool:
            exc = await failure(pool)
        assert exc.request.url == httpx.URL(f"{rx.url}/e")
        for text in (str(exc), repr(exc), str(exc.request.url), repr(classify_exception(exc))):
            assert SECRET not in text

    @pytest.mark.anyio
    async def test_request_after_aclose_is_a_runtime_error(self, pool: KeepAlivePool) -> None:
        """A closed pool refuses requests loudly (a bug, not a transport failure)."""
        await pool.aclose()
        with pytest.raises(RuntimeError):
            await pool.request("GET", TARGET)


# --- requests and responses ---------------------------------------------------------------------


@pytest.mark.timeout(20)
class TestMessages:
    @pytest.mark.anyio
    async def test_post_body_is_sent_exactly(self, pool: KeepAlivePool, rx: Receiver) -> None:
        """A POST carries its body byte for byte, with Content-Length and the extra headers."""
        body = b"_k=key&_n=Long%20Event&note=" + b"x" * 5000
        await pool.request("POST", "/e", headers=FORM, body=body)
        (req,) = rx.wait_for(1)
        assert (req.method, req.path, req.query, req.body) == ("POST", "/e", "", body)
        assert req.headers["content-length"] == str(len(body))
        assert req.headers["content-type"] == "application/x-www-form-urlencoded"

    @pytest.mark.anyio
    async def test_get_sends_target_host_and_user_agent(
        self, pool: KeepAlivePool, rx: Receiver
    ) -> None:
        """A GET sends the target as given, Host from base_url and the User-Agent, no body."""
        await pool.request("GET", TARGET)
        (req,) = rx.wait_for(1)
        assert (req.method, f"{req.path}?{req.query}", req.body) == ("GET", TARGET, b"")
        assert req.headers["host"] == f"127.0.0.1:{rx.port}"
        assert req.headers["user-agent"] == "trackd/test"
        assert "content-length" not in req.headers

    @pytest.mark.anyio
    async def test_base_url_path_prefixes_the_target(self, rx: Receiver) -> None:
        """A base_url with a path sends `path + target`."""
        async with contextlib.aclosing(make_pool(rx.url + "/api/")) as pool:
            await pool.request("GET", "/e?_n=x")
        (req,) = rx.wait_for(1)
        assert (req.path, req.query) == ("/api/e", "_n=x")

    @pytest.mark.anyio
    async def test_retry_after_header_is_visible(self, pool: KeepAlivePool, rx: Receiver) -> None:
        """Response headers come lower-cased, so Retry-After reaches classify_status."""
        rx.script(Response(429, headers={"Retry-After": "30"}))
        answer = await pool.request("GET", TARGET)
        assert (answer.status, answer.headers["retry-after"]) == (429, "30")
        outcome = classify_status(answer.status, answer.headers, 0.0, max_backoff=60.0)
        assert outcome == Retry("http_429", "HTTP 429 Too Many Requests", 30.0)

    @pytest.mark.anyio
    async def test_body_is_read_fully(self, pool: KeepAlivePool, rx: Receiver) -> None:
        """The response body arrives whole (Kissmetrics' GIF)."""
        gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01"
        rx.script(Response(200, headers={"Content-Type": "image/gif"}, body=gif))
        answer = await pool.request("GET", TARGET)
        assert (answer.status, answer.body) == (200, gif)

    @pytest.mark.anyio
    async def test_body_past_the_cap_is_discarded_and_the_connection_kept(
        self, pool: KeepAlivePool, rx: Receiver
    ) -> None:
        """A body over 1 MiB is cut to MAX_BODY bytes; the connection still serves the next."""
        rx.script(Response(200, body=b"a" * MAX_BODY + b"b" * 1000))
        answer = await pool.request("GET", TARGET)
        assert answer.body == b"a" * MAX_BODY
        await pool.request("GET", TARGET)
        assert connections(rx.wait_for(2)) == [1, 1]

    @pytest.mark.anyio
    async def test_debug_log_has_no_query(
        self, pool: KeepAlivePool, rx: Receiver, caplog: pytest.LogCaptureFixture
    ) -> None:
        """At DEBUG, each request is one `HTTP Request` line with origin and path, no query."""
        caplog.set_level("DEBUG", logger="agent.sinks.keepalive")
        await pool.request("GET", TARGET)
        assert f'HTTP Request: GET {rx.url}/e "HTTP/1.1 204"' in caplog.text
        assert SECRET not in caplog.text


# --- redirects ----------------------------------------------------------------------------------


@pytest.mark.timeout(20)
class TestRedirects:
    @pytest.mark.anyio
    async def test_307_is_followed_with_method_and_body(
        self, pool: KeepAlivePool, rx: Receiver
    ) -> None:
        """A 307 is followed on the same origin with the same method and body."""
        rx.script(Response(307, headers={"Location": "/moved/e"}))
        answer = await pool.request("POST", "/e", headers=FORM, body=b"_n=a")
        assert answer.status == 204
        first, second = rx.wait_for(2)
        assert (second.method, second.path, second.body) == ("POST", "/moved/e", b"_n=a")
        assert first.connection == second.connection

    @pytest.mark.anyio
    async def test_308_with_absolute_same_origin_location_is_followed(
        self, pool: KeepAlivePool, rx: Receiver
    ) -> None:
        """A 308 to an absolute URL of the same origin is followed, query included."""
        rx.script(Response(308, headers={"Location": f"{rx.url}/v2/e?_n=b"}))
        assert (await pool.request("GET", "/e?_n=b")).status == 204
        assert (rx.wait_for(2)[1].path, rx.wait_for(2)[1].query) == ("/v2/e", "_n=b")

    @pytest.mark.anyio
    async def test_other_origin_is_not_followed(self, pool: KeepAlivePool, rx: Receiver) -> None:
        """A 307 to another host is returned, not followed."""
        rx.script(Response(307, headers={"Location": f"http://localhost:{rx.port}/e"}))
        assert (await pool.request("GET", "/e")).status == 307
        assert len(rx.requests) == 1

    @pytest.mark.anyio
    async def test_redirect_loop_stops_after_three_hops(
        self, pool: KeepAlivePool, rx: Receiver
    ) -> None:
        """An endless 307 loop ends after 3 hops with the 307, which classifies as a Pause."""
        rx.default = Response(307, headers={"Location": "/e"})
        answer = await pool.request("GET", "/e")
        assert answer.status == 307 and len(rx.requests) == 4
        outcome = classify_status(answer.status, answer.headers, 0.0, max_backoff=60.0)
        assert isinstance(outcome, Pause) and outcome.reason == "http_3xx"

    @pytest.mark.anyio
    async def test_other_redirects_are_returned(self, pool: KeepAlivePool, rx: Receiver) -> None:
        """A 302 is never followed."""
        rx.script(Response(302, headers={"Location": "/elsewhere"}))
        assert (await pool.request("GET", "/e")).status == 302
        assert len(rx.requests) == 1


# --- TLS ----------------------------------------------------------------------------------------


@dataclass
class TlsServer:
    port: int
    #: The SNI names clients sent.
    server_names: list[str | None] = field(default_factory=list)
    #: Request heads received.
    heads: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def tls_server(pair: CertPair, answer: bytes) -> AsyncIterator[TlsServer]:
    """A TLS server on 127.0.0.1 answering every request (no body) with `answer`."""
    context = server_context(pair)
    srv = TlsServer(0)

    def sni(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        srv.server_names.append(name)

    context.sni_callback = sni

    async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            srv.heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(answer)
            await writer.drain()

    async with serve(answer_each, context) as server:
        srv.port = server.port
        yield srv


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


def tls_pool(url: str, tls: TlsConfig) -> KeepAlivePool:
    return KeepAlivePool(
        url,
        max_connections=2,
        timeout=5.0,
        ssl_context=client_ssl_context(tls),
        user_agent="trackd/test",
    )


@pytest.mark.timeout(20)
class TestTls:
    @pytest.mark.anyio
    async def test_untrusted_certificate_pauses_with_tls(self, self_signed: CertPair) -> None:
        """Verification against a self-signed server fails: ConnectError, Pause("tls")."""
        async with tls_server(self_signed, NO_CONTENT) as srv:
            async with contextlib.aclosing(
                tls_pool(f"https://127.0.0.1:{srv.port}", TlsConfig())
            ) as pool:
                exc = await failure(pool)
        assert isinstance(exc, httpx.ConnectError)
        assert isinstance(exc.__cause__, ssl.SSLCertVerificationError)
        outcome = classify_exception(exc)
        assert isinstance(outcome, Pause) and outcome.reason == "tls"
        assert outcome.detail.startswith(f"TLS handshake with 127.0.0.1:{srv.port} failed")
        assert "self-signed" in outcome.detail and SECRET not in outcome.detail

    @pytest.mark.anyio
    async def test_ca_file_makes_the_certificate_trusted(self, self_signed: CertPair) -> None:
        """With tls.ca_file pointing at the certificate, requests succeed and keep alive."""
        async with tls_server(self_signed, NO_CONTENT) as srv:
            pool = tls_pool(
                f"https://127.0.0.1:{srv.port}", TlsConfig(ca_file=str(self_signed.cert))
            )
            try:
                statuses = [(await pool.request("GET", TARGET)).status for _ in range(2)]
            finally:
                await pool.aclose()
        assert statuses == [204, 204]
        assert len(srv.server_names) == 1  # one handshake: the connection was reused

    @pytest.mark.anyio
    async def test_insecure_skip_verify_accepts_the_certificate(
        self, self_signed: CertPair
    ) -> None:
        """tls.insecure_skip_verify connects to the self-signed server without its CA."""
        async with tls_server(self_signed, NO_CONTENT) as srv:
            async with contextlib.aclosing(
                tls_pool(f"https://127.0.0.1:{srv.port}", TlsConfig(insecure_skip_verify=True))
            ) as pool:
                assert (await pool.request("GET", TARGET)).status == 204

    @pytest.mark.anyio
    async def test_sni_names_the_host(self, self_signed: CertPair) -> None:
        """The handshake sends the base_url's host name as SNI, and Host carries it too."""
        async with tls_server(self_signed, NO_CONTENT) as srv:
            url = f"https://localhost:{srv.port}"
            async with contextlib.aclosing(
                tls_pool(url, TlsConfig(ca_file=str(self_signed.cert)))
            ) as pool:
                assert (await pool.request("GET", TARGET)).status == 204
        assert srv.server_names == ["localhost"]
        assert f"\r\nHost: localhost:{srv.port}\r\n".encode() in srv.heads[0]

    @pytest.mark.anyio
    async def test_https_to_http_redirect_is_not_followed(self, self_signed: CertPair) -> None:
        """A 307 from https to http is returned, never followed."""
        moved = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:1/e\r\n"
        async with tls_server(self_signed, moved + b"Content-Length: 0\r\n\r\n") as srv:
            pool = tls_pool(
                f"https://127.0.0.1:{srv.port}", TlsConfig(ca_file=str(self_signed.cert))
            )
            try:
                assert (await pool.request("GET", "/e")).status == 307
            finally:
                await pool.aclose()
        assert len(srv.heads) == 1


# --- the Kissmetrics sink's choice of client ----------------------------------------------------


def km_config(url: str, **kw: object) -> KissmetricsSinkConfig:
    return kissmetrics_config(url=url, api_key=SecretStr(SECRET), **kw)


TRACK = encode(
    track_message("m-1", "2026-11-27T04:00:00.000Z", None, "visitor", "Signed Up", {}, {})
)


@pytest.mark.timeout(20)
class TestKissmetricsClients:
    @pytest.mark.anyio
    async def test_without_proxy_messages_share_a_connection(self, rx: Receiver) -> None:
        """Without sink.proxy, the sink's requests go over kept-alive pool connections."""
        async with contextlib.aclosing(KissmetricsSink(km_config(rx.url, concurrency=2))) as sink:
            outcomes = await sink.send(
                [OutboxMessage(i, TRACK, 1_795_752_000, 0) for i in range(3)], 0
            )
        assert outcomes == [Delivered()] * 3
        assert connections(rx.wait_for(3)) == [1, 1, 1]

    @pytest.mark.anyio
    async def test_with_proxy_requests_go_through_the_proxy(self, rx: Receiver) -> None:
        """With sink.proxy set, requests go to the proxy in absolute form (httpx, not the pool)."""
        async with contextlib.aclosing(
            KissmetricsSink(km_config("http://km.example.invalid", proxy=rx.url))
        ) as sink:
            outcomes = await sink.send([OutboxMessage(1, TRACK, 1_795_752_000, 0)], 0)
        assert outcomes == [Delivered()]
        (req,) = rx.wait_for(1)
        assert req.path == "http://km.example.invalid/e"
