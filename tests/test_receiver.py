"""The test receiver (tests/receiver.py) is a real HTTP/1.1 server: it records what sinks send and
answers, or misbehaves, as scripted."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.receiver import Receiver, Request, Response

pytestmark = pytest.mark.timeout(20)


def client(timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(timeout=timeout, trust_env=False)


class TestRecording:
    def test_records_method_path_pairs_and_headers(self) -> None:
        """A GET is recorded with its method, path, raw query, decoded pairs and headers."""
        with Receiver() as rx, client() as c:
            c.get(f"{rx.url}/e?_n=signed+up&_p=a%40b.c&empty=&_n=x", headers={"X-Trace": "t1"})
            (req,) = rx.wait_for(1)
        assert (req.method, req.path) == ("GET", "/e")
        assert req.query == "_n=signed+up&_p=a%40b.c&empty=&_n=x"
        assert req.pairs == [("_n", "signed up"), ("_p", "a@b.c"), ("empty", ""), ("_n", "x")]
        assert req.headers["X-TRACE"] == "t1" and req.headers["x-trace"] == "t1"
        assert req.body == b"" and req.json is None

    def test_form_body_pairs_follow_the_query(self) -> None:
        """A form-encoded POST body's pairs are decoded after the query string's."""
        with Receiver() as rx, client() as c:
            c.post(f"{rx.url}/e?_k=key", data={"_p": "a@b.c", "_n": "viewed page"})
            (req,) = rx.wait_for(1)
        assert req.pairs == [("_k", "key"), ("_p", "a@b.c"), ("_n", "viewed page")]

    def test_gzip_body_is_decoded(self) -> None:
        """A `Content-Encoding: gzip` body is kept raw in `body` and gunzipped in `decoded`."""
        raw = json.dumps({"batch": [{"messageId": "m1"}]}).encode()
        packed = gzip.compress(raw)
        with Receiver() as rx, client() as c:
            c.post(
                f"{rx.url}/v1/batch",
                content=packed,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
            (req,) = rx.wait_for(1)
        assert req.body == packed
        assert req.decoded == raw
        assert req.json == {"batch": [{"messageId": "m1"}]}

    def test_json_body_is_parsed(self) -> None:
        """A JSON body is parsed into `json`."""
        with Receiver() as rx, client() as c:
            c.post(f"{rx.url}/v1/batch", json={"batch": [1, 2]})
            (req,) = rx.wait_for(1)
        assert req.json == {"batch": [1, 2]}

    def test_chunked_body_is_reassembled(self) -> None:
        """A chunked request body is read whole."""
        with Receiver() as rx, client() as c:
            c.post(f"{rx.url}/up", content=iter([b"hello ", b"chunked ", b"world"]))
            (req,) = rx.wait_for(1)
        assert req.headers["transfer-encoding"] == "chunked"
        assert req.body == b"hello chunked world"

    def test_keep_alive_reuses_one_connection(self) -> None:
        """Requests from one client share one kept-alive connection."""
        with Receiver() as rx, client() as c:
            for i in range(3):
                assert c.get(f"{rx.url}/{i}").status_code == 204
            reqs = rx.wait_for(3)
        assert len({r.connection for r in reqs}) == 1

    def test_request_from_a_subprocess(self) -> None:
        """Another process (as the trackd binary would be) can send to it."""
        code = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1]).status)"
        with Receiver() as rx:
            rx.default = Response(200, body=b"ok")
            proc = subprocess.run(
                [sys.executable, "-c", code, f"{rx.url}/from-child?x=1"],
                capture_output=True,
                text=True,
                timeout=15,
                check=True,
            )
            (req,) = rx.wait_for(1)
        assert proc.stdout.strip() == "200"
        assert req.pairs == [("x", "1")]

    def test_request_from_another_event_loop(self) -> None:
        """An async test's own loop can send concurrently to it (it runs on its own loop)."""

        async def send(url: str) -> list[int]:
            async with httpx.AsyncClient(trust_env=False) as ac:
                got = await asyncio.gather(*(ac.get(f"{url}/{i}") for i in range(5)))
            return [r.status_code for r in got]

        with Receiver() as rx:
            assert asyncio.run(send(rx.url)) == [204] * 5
            assert len(rx.wait_for(5)) == 5


class TestScript:
    def test_scripted_in_order_then_default(self) -> None:
        """Scripted responses are used in order, then the default (204) for the rest."""
        with Receiver() as rx, client() as c:
            rx.script(Response(500), Response(429, headers={"Retry-After": "30"}))
            got = [c.get(f"{rx.url}/{i}") for i in range(4)]
            reqs = rx.wait_for(4)
        assert [r.status_code for r in got] == [500, 429, 204, 204]
        assert got[1].headers["retry-after"] == "30"
        assert [r.response.status for r in reqs if r.response] == [500, 429, 204, 204]

    def test_response_body_and_headers(self) -> None:
        """A response's status, headers and body reach the client."""
        with Receiver() as rx, client() as c:
            rx.script(Response.json({"ok": False}, status=400, headers={"X-Why": "bad"}))
            r = c.get(rx.url)
        assert r.status_code == 400
        assert r.headers["x-why"] == "bad" and r.json() == {"ok": False}

    def test_callable_responder(self) -> None:
        """`respond_with` answers per request; its None falls through to the default."""

        def pick(req: Request) -> Response | None:
            ids = [m["messageId"] for m in (req.json or {}).get("batch", [])]
            return Response(400, body=b"bad batch") if "X" in ids else None

        with Receiver() as rx, client() as c:
            rx.respond_with(pick)
            statuses = [
                c.post(f"{rx.url}/v1/batch", json={"batch": [{"messageId": m}]}).status_code
                for m in ("A", "X", "B")
            ]
        assert statuses == [204, 400, 204]

    def test_responder_error_gives_500_and_is_kept(self) -> None:
        """An exception in the responder answers 500 and is kept in `errors`."""

        def broken(req: Request) -> Response:
            raise ValueError("oops")

        with Receiver() as rx, client() as c:
            rx.respond_with(broken)
            assert c.get(rx.url).status_code == 500
        assert [type(e) for e in rx.errors] == [ValueError]


class TestLatency:
    def test_delay_overlaps_across_concurrent_requests(self) -> None:
        """A 1 s delay on 8 concurrent requests takes about 1 s in all, and max_in_flight is 8."""

        def one(url: str) -> int:
            with client() as c:
                return c.get(url).status_code

        with Receiver() as rx:
            rx.default = Response(204, delay=1.0)
            start = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(one, [f"{rx.url}/{i}" for i in range(8)]))
            elapsed = time.monotonic() - start
            assert statuses == [204] * 8
            assert 1.0 <= elapsed < 2.5, elapsed
            assert rx.max_in_flight == 8

    def test_sequential_requests_are_one_in_flight(self) -> None:
        """Requests sent one after another never count as concurrent."""
        with Receiver() as rx, client() as c:
            for i in range(3):
                c.get(f"{rx.url}/{i}")
            assert rx.max_in_flight == 1


class TestMisbehaviour:
    def test_close_without_answer(self) -> None:
        """`close` drops the connection after reading the request: RemoteProtocolError."""
        with Receiver() as rx, client() as c:
            rx.script(Response(action="close"))
            with pytest.raises(httpx.RemoteProtocolError):
                c.post(f"{rx.url}/v1/batch", json={"batch": []})
            (req,) = rx.wait_for(1)
        assert req.json == {"batch": []}

    def test_reset_mid_response(self) -> None:
        """`reset` sends part of the head, then an RST: a read or protocol error."""
        with Receiver() as rx, client() as c:
            rx.script(Response(200, headers={"X-A": "1", "X-B": "2"}, body=b"x", action="reset"))
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                c.get(rx.url)
            assert c.get(rx.url).status_code == 204  # the next request is answered

    def test_hang_until_client_timeout(self) -> None:
        """`hang` never answers: a short client read timeout fires; exiting still stops."""
        with Receiver() as rx, client(timeout=0.3) as c:
            rx.default = Response(action="hang")
            with pytest.raises(httpx.ReadTimeout):
                c.get(rx.url)
            assert rx.in_flight == 1

    def test_close_all_connections_ends_a_hung_request(self) -> None:
        """`close_all_connections()` ends in-flight requests without an answer."""
        errors: list[BaseException] = []

        def send(url: str) -> None:
            try:
                with client() as c:
                    c.get(url)
            except httpx.HTTPError as e:
                errors.append(e)

        with Receiver() as rx:
            rx.default = Response(action="hang")
            t = threading.Thread(target=send, args=(rx.url,))
            t.start()
            rx.wait_for(1)
            rx.close_all_connections()
            t.join(10)
            assert rx.running and rx.in_flight == 0
        assert [type(e) for e in errors] == [httpx.RemoteProtocolError]


class TestLifecycle:
    def test_stop_refuses_then_start_on_the_same_port(self) -> None:
        """After `stop()` connections are refused; `start()` serves again on the same port."""
        with Receiver() as rx:
            url, port = rx.url, rx.port
            with client() as c:
                assert c.get(url).status_code == 204
            rx.stop()
            with client() as c, pytest.raises(httpx.ConnectError):
                c.get(url)
            rx.start()
            assert rx.port == port
            with client() as c:
                assert c.get(url).status_code == 204
            assert len(rx.requests) == 2

    def test_stop_with_an_open_keep_alive_connection(self) -> None:
        """`stop()` closes kept-alive connections too, and the port can be rebound at once."""
        with Receiver() as rx, client() as c:
            assert c.get(rx.url).status_code == 204
            rx.stop()
            rx.start()
            assert c.get(rx.url).status_code == 204

    def test_wait_for_timeout_says_what_arrived(self) -> None:
        """`wait_for` past its timeout raises an AssertionError listing the requests received."""
        with Receiver() as rx, client() as c:
            c.get(f"{rx.url}/only?a=1")
            with pytest.raises(
                AssertionError, match=r"expected 2 request.*got 1: \['GET /only\?a=1'\]"
            ):
                rx.wait_for(2, timeout=0.2)

    def test_no_thread_left_after_exit(self) -> None:
        """Leaving the context ends the receiver's thread."""
        before = set(threading.enumerate())
        with Receiver() as rx, client() as c:
            c.get(rx.url)
        assert set(threading.enumerate()) <= before
