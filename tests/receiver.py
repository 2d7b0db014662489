"""A real HTTP/1.1 receiver on a free 127.0.0.1 port, for the Kissmetrics- and Segment-style sinks.

    with Receiver() as rx:
        rx.script(Response(500), Response(429, headers={"Retry-After": "30"}))
        ...  # point a sink (in-process, or the trackd binary as a subprocess) at rx.url
        got = rx.wait_for(3)

It runs on raw asyncio streams in its own event loop on a background thread, so async tests (with
their own loop) and subprocess tests can both send to it. It keeps connections alive, reads bodies
by Content-Length or chunked, gunzips `Content-Encoding: gzip`, parses query strings, form and JSON
bodies, and records every request with the response it was given. Responses come from
`respond_with(fn)` (if set and it returns one), then the `script(...)` queue in order, then
`default` (204). A response can be delayed (real latency: concurrent requests overlap), or be a
misbehaviour: `close` (no answer), `reset` (half the headers, then RST) or `hang` (no answer until
the receiver stops). `stop()`/`start()` take the endpoint down and back up on the same port.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import http
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

import httpx

__all__ = ["Receiver", "Request", "Response"]

Action = Literal["respond", "close", "reset", "hang"]
#: Longest request line + header block accepted.
_HEAD_LIMIT = 1 << 20
_NO_BODY_STATUSES = {204, 304}


@dataclass(frozen=True)
class Response:
    """What the receiver does with one request. `delay` (seconds) is waited before any action
    (except `hang`, which never answers). `action`: `respond` sends status/headers/body; `close`
    closes the connection without an answer; `reset` sends the status line and half the headers,
    then an RST (SO_LINGER 0); `hang` never answers until the receiver stops (or
    `close_all_connections()`)."""

    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    action: Action = "respond"

    @classmethod
    def json(cls, obj: Any, status: int = 200, **kw: Any) -> Response:
        """A JSON response (Content-Type: application/json)."""
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return cls(status=status, headers=headers, body=json.dumps(obj).encode(), **kw)


@dataclass
class Request:
    """One request as received. `body` is the raw body; `decoded` the body after
    Content-Encoding (gzip/deflate); `pairs` the decoded (key, value) pairs of the query string and,
    for `application/x-www-form-urlencoded`, of the body (query first); `json` the parsed decoded
    body or None; `connection` numbers the TCP connection it came on (same number = keep-alive)."""

    method: str
    path: str
    query: str
    pairs: list[tuple[str, str]]
    headers: httpx.Headers
    body: bytes
    decoded: bytes
    json: Any
    received_at: float
    connection: int
    response: Response | None = None

    @property
    def params(self) -> dict[str, str]:
        """`pairs` as a dict (the last value wins for repeated keys)."""
        return dict(self.pairs)


class _BadRequest(Exception):
    pass


class Receiver:
    """A real HTTP/1.1 server on 127.0.0.1; see the module docstring. Thread-safe: every public
    method may be called from any thread (not from a `respond_with` callable, which runs on the
    receiver's loop)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        #: The response for requests the responder and the script leave unanswered.
        self.default = Response()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._requests: list[Request] = []
        self._script: collections.deque[Response] = collections.deque()
        self._responder: Callable[[Request], Response | None] | None = None
        self._in_flight = 0
        self._max_in_flight = 0
        self._conn_ids = 0
        #: Exceptions raised by a `respond_with` callable (the request got a 500).
        self.errors: list[BaseException] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the endpoint is listening."""
        return self._server is not None

    def start(self, timeout: float = 10.0) -> None:
        """Listen (again): the first start picks a free port, later ones rebind the same port."""
        if self._thread is None:
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(ready,), name=f"receiver-{id(self):x}", daemon=True
            )
            self._thread.start()
            if not ready.wait(timeout):
                raise RuntimeError("receiver loop did not start")
        self._call(self._listen(), timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Take the endpoint down: stop listening and close every connection (hung requests
        included). New connections are refused until `start()`."""
        if self._loop is not None:
            self._call(self._unlisten(), timeout)

    def close_all_connections(self, timeout: float = 10.0) -> None:
        """Close every open connection (in-flight requests get no answer); keep listening."""
        if self._loop is not None:
            self._call(self._drop_connections(), timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop and end the background loop and thread (the context manager's exit)."""
        thread, loop, shutdown = self._thread, self._loop, self._shutdown
        if thread is None or loop is None or shutdown is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already gone
            loop.call_soon_threadsafe(shutdown.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("receiver thread did not stop")
        self._thread = self._loop = self._shutdown = None

    def _run(self, ready: threading.Event) -> None:
        asyncio.run(self._main(ready))

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        ready.set()
        await self._shutdown.wait()
        await self._unlisten()

    def _call(self, coro: Any, timeout: float) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True, limit=_HEAD_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._drop_connections()
        if server is not None:
            await server.wait_closed()

    async def _drop_connections(self) -> None:
        tasks, writers = list(self._tasks), list(self._writers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in writers:
            w.close()
        for w in writers:
            with contextlib.suppress(OSError):
                await w.wait_closed()

    # -- scripting -------------------------------------------------------------------------------

    def script(self, *responses: Response) -> None:
        """Queue responses, used in order for the next requests (before `default`)."""
        with self._lock:
            self._script.extend(responses)

    def respond_with(self, fn: Callable[[Request], Response | None] | None) -> None:
        """Answer with `fn(request)` (called on the receiver's loop); a None from it falls through
        to the script and `default`. `respond_with(None)` removes it."""
        with self._lock:
            self._responder = fn

    def clear(self) -> None:
        """Forget the recorded requests, the script and `max_in_flight`."""
        with self._lock:
            self._requests.clear()
            self._script.clear()
            self._max_in_flight = self._in_flight

    # -- observing -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        """A snapshot of the requests received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests being answered (received, not yet fully answered) at once."""
        with self._lock:
            return self._max_in_flight

    @property
    def in_flight(self) -> int:
        """Requests received and not yet answered."""
        with self._lock:
            return self._in_flight

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Request]:
        """Block until at least `count` requests were received; return all received so far.
        On timeout, raise an AssertionError listing what did arrive."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= count, timeout):
                got = [f"{r.method} {r.path}?{r.query}" for r in self._requests]
                raise AssertionError(
                    f"receiver at {self.url} expected {count} request(s) within {timeout}s, got {len(got)}: {got}"
                )
            return list(self._requests)

    # -- the server ------------------------------------------------------------------------------

    def _choose(self, req: Request) -> Response:
        with self._lock:
            responder = self._responder
        if responder is not None:
            try:
                chosen = responder(req)
            except Exception as exc:  # noqa: BLE001 - the test sees it in .errors and a 500
                with self._lock:
                    self.errors.append(exc)
                return Response(500, body=repr(exc).encode())
            if chosen is not None:
                return chosen
        with self._lock:
            return self._script.popleft() if self._script else self.default

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        with self._lock:
            self._conn_ids += 1
            conn = self._conn_ids
        try:
            while await self._one(reader, writer, conn):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, _BadRequest):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int
    ) -> bool:
        """Read and answer one request; False when the connection is to be closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise
            return False  # the client closed an idle keep-alive connection
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise _BadRequest(lines[0]) from None
        fields = []
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise _BadRequest(line)
                fields.append((name.strip(), value.strip()))
        headers = httpx.Headers(fields)
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(reader, headers)
        req = self._parse(method, target, headers, body, conn)
        resp = self._choose(req)
        req.response = resp
        with self._cond:
            self._requests.append(req)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._cond.notify_all()
        try:
            return await self._answer(req, resp, version, writer)
        finally:
            with self._lock:
                self._in_flight -= 1

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: httpx.Headers) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _BadRequest(size_line) from None
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        length = headers.get("content-length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise _BadRequest(length) from None
        return await reader.readexactly(n)

    @staticmethod
    def _parse(method: str, target: str, headers: httpx.Headers, body: bytes, conn: int) -> Request:
        path, _, query = target.partition("?")
        encoding = headers.get("content-encoding", "").lower()
        decoded = body
        try:
            if encoding in ("gzip", "x-gzip"):
                decoded = gzip.decompress(body)
            elif encoding == "deflate":
                decoded = zlib.decompress(body)
        except (OSError, EOFError, zlib.error):
            decoded = body
        pairs = parse_qsl(query, keep_blank_values=True)
        if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            pairs += parse_qsl(decoded.decode("utf-8", "replace"), keep_blank_values=True)
        parsed: Any = None
        if decoded:
            try:
                parsed = json.loads(decoded)
            except ValueError:
                parsed = None
        return Request(
            method=method,
            path=path,
            query=query,
            pairs=pairs,
            headers=headers,
            body=body,
            decoded=decoded,
            json=parsed,
            received_at=time.monotonic(),
            connection=conn,
        )

    @staticmethod
    async def _answer(
        req: Request, resp: Response, version: str, writer: asyncio.StreamWriter
    ) -> bool:
        if resp.action == "hang":
            await asyncio.get_running_loop().create_future()  # until cancelled by stop()
        if resp.delay > 0:
            await asyncio.sleep(resp.delay)
        if resp.action == "close":
            return False
        keep = req.headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        try:
            reason = http.HTTPStatus(resp.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {resp.status} {reason}"]
        names = {k.lower() for k in resp.headers}
        lines += [f"{k}: {v}" for k, v in resp.headers.items()]
        no_body = resp.status in _NO_BODY_STATUSES or resp.status < 200
        if "content-length" not in names and not no_body:
            lines.append(f"Content-Length: {len(resp.body)}")
        if not keep and "connection" not in names:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if resp.action == "reset":
            status_end = head.index(b"\r\n") + 2
            writer.write(head[: status_end + (len(head) - status_end) // 2])
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        writer.write(head if no_body or req.method == "HEAD" else head + resp.body)
        await writer.drain()
        return keep
