"""The Kissmetrics sink (SPEC §4): one request per outbox message, and the `_t` it carries.

- `KissmetricsSink` is the `HttpSink` the `Sender` feeds: it encodes each message with
  `KmEncoder` (agent/sinks/km_wire.py) and sends it, `GET url + path?query`, or a `POST` of the
  form body when the query is over 2000 bytes, over one pool of keep-alive connections: the
  `KeepAlivePool` of agent/sinks/keepalive.py (one request per message makes httpx's per-request
  CPU cost the sink's ceiling), or, with `sink.proxy` set (or a client passed in), an httpx
  client (`build_client`). The answer becomes an outcome through
  `classify_status(accept_304=True)` / `classify_exception` either way; a message that cannot be
  encoded (an identity over 255 characters) is dead-lettered without a request.
- `SecondAllocator` is the `Stamper` that picks `_t` when the outbox row is written, so a
  re-sent message carries the same second (SPEC §4, SCENARIOS 23): Kissmetrics drops a
  same-person, same-event, same-second repeat, so two events of one person in one second are
  spread over consecutive seconds.

The api key travels in the URL query (`_k`). It is held only inside the encoder's encoded
prefix; nothing here logs or reprs a URL with its query, and outcome details come from
agent/sinks/http.py, which builds them from the status and host:port only.
"""

from __future__ import annotations

import heapq
import logging
import re
import sqlite3
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import httpx
import orjson

import agent
from agent.config import Config
from agent.config.schema import KissmetricsSinkConfig
from agent.errors import StartupError
from agent.sinks import http
from agent.sinks.backoff import Clock, SystemClock
from agent.sinks.base import HttpSink, OutboxMessage, Outcome, Reject
from agent.sinks.keepalive import KeepAlivePool, client_ssl_context
from agent.sinks.km_wire import FORM_CONTENT_TYPE, KmEncoder, KmTooLong
from agent.state import kmseconds

if TYPE_CHECKING:
    from agent.sinks.registry import SinkParts

__all__ = ["MAX_SHIFT", "WINDOW", "KissmetricsSink", "SecondAllocator", "build"]

#: Seconds of event time an assignment is kept (SPEC §4: 1 h), counted back from the newest
#: event second seen.
WINDOW = 3600
#: How far `_t` may move past the event second; beyond it the event second is kept (collapsed).
MAX_SHIFT = 300
#: Assignments are evicted by buckets of this many seconds (a bucket goes once all of it is
#: older than the window, so up to a bucket more than the window is kept).
_BUCKET = 60

_Key = tuple[str, str, int]


class SecondAllocator:
    """The `Stamper` of the Kissmetrics sink: `_t` for each message as its outbox row is written.

    `_t` is the event second moved to the smallest second >= it not yet assigned to (`_p`,
    clean(`_n`) lower-cased), `/s` standing for the name of set requests; the keys come from
    `KmEncoder.stamp_key`. Alias messages (no `_t`) and messages the encoder would refuse get
    None. When every second up to `MAX_SHIFT` past the event second is taken, the event second
    itself is used and `collapsed` counted (`trackd_km_collapsed_total`).

    `stamp` assigns tentatively: later messages of the chunk and later `stamp` calls see those
    seconds as taken, until `rolled_back()` frees them; `save(conn)` writes them to
    `km_seconds` (and forgets rows older than the window) inside the chunk's transaction;
    `committed()` makes them permanent. Memory holds only assignments within `WINDOW` seconds
    (plus one bucket) of the newest committed event second. Not thread-safe: it runs on the
    pipeline thread.
    """

    __slots__ = (
        "_assigned",
        "_buckets",
        "_encoder",
        "_heap",
        "_newest",
        "_pending_collapsed",
        "_pending_newest",
        "_tentative",
        "collapsed",
    )

    def __init__(self, encoder: KmEncoder) -> None:
        self._encoder = encoder
        #: Every second in force, tentative ones included, as (person, name, second).
        self._assigned: set[_Key] = set()
        #: Committed assignments by `second // _BUCKET`, for eviction; `_heap` orders the buckets.
        self._buckets: dict[int, list[_Key]] = {}
        self._heap: list[int] = []
        self._tentative: list[_Key] = []
        #: The newest event second of committed messages (None: none seen yet).
        self._newest: int | None = None
        self._pending_newest: int | None = None
        self._pending_collapsed = 0
        #: Messages whose `_t` could not be moved to a free second (`trackd_km_collapsed_total`).
        self.collapsed = 0

    def __repr__(self) -> str:
        return (
            f"SecondAllocator(assigned={len(self._assigned)}, tentative={len(self._tentative)}, "
            f"collapsed={self.collapsed})"
        )

    def __len__(self) -> int:
        """Seconds held in memory (tentative ones included)."""
        return len(self._assigned)

    # -- the Stamper protocol ----------------------------------------------------------------

    def load(self, conn: sqlite3.Connection) -> None:
        """Read the assignments still in force (at start, before the first chunk)."""
        top = kmseconds.newest(conn)
        if top is None:
            return
        # The newest event second is at least the newest assigned second - MAX_SHIFT; rows older
        # than the window measured from there can no longer matter.
        floor = top - MAX_SHIFT
        keys = [(p, n, s) for p, n, s in kmseconds.load(conn, floor - WINDOW)]
        self._assigned.update(keys)
        self._index(keys)
        if self._newest is None or floor > self._newest:
            self._newest = floor
        self._pending_newest = self._newest

    def stamp(self, bodies: Sequence[bytes]) -> list[int | None]:
        """`_t` for each message (None: the message has none), in order; tentative until
        `committed()`."""
        key_of = self._encoder.stamp_key
        loads = orjson.loads
        assigned = self._assigned
        add = assigned.add
        record = self._tentative.append
        newest = self._pending_newest
        collapsed = 0
        out: list[int | None] = []
        put = out.append
        for body in bodies:
            try:
                message = loads(body)
            except orjson.JSONDecodeError:
                put(None)
                continue
            if type(message) is not dict:
                put(None)
                continue
            key = key_of(message)
            if key is None:
                put(None)
                continue
            second = key[2]
            if newest is None or second > newest:
                newest = second
            if key in assigned:
                person, name, _ = key
                t = second + 1
                limit = second + MAX_SHIFT
                while t <= limit and (person, name, t) in assigned:
                    t += 1
                if t > limit:
                    collapsed += 1
                    put(second)
                    continue
                key = (person, name, t)
            add(key)
            record(key)
            put(key[2])
        self._pending_newest = newest
        self._pending_collapsed += collapsed
        return out

    def save(self, conn: sqlite3.Connection) -> None:
        """Write the tentative assignments and forget rows older than the window (inside the
        chunk's transaction)."""
        if self._tentative:
            kmseconds.save(conn, self._tentative)
        if self._pending_newest is not None:
            kmseconds.expire(conn, self._pending_newest - WINDOW)

    def committed(self) -> None:
        """The chunk's transaction committed: the tentative assignments are permanent."""
        self._index(self._tentative)
        self._tentative = []
        self.collapsed += self._pending_collapsed
        self._pending_collapsed = 0
        self._newest = self._pending_newest
        self._evict()

    def rolled_back(self) -> None:
        """The chunk's transaction failed: free the tentative seconds."""
        discard = self._assigned.discard
        for key in self._tentative:
            discard(key)
        self._tentative = []
        self._pending_collapsed = 0
        self._pending_newest = self._newest

    # -- memory ------------------------------------------------------------------------------

    def _index(self, keys: Sequence[_Key]) -> None:
        buckets = self._buckets
        for key in keys:
            b = key[2] // _BUCKET
            held = buckets.get(b)
            if held is None:
                buckets[b] = [key]
                heapq.heappush(self._heap, b)
            else:
                held.append(key)

    def _evict(self) -> None:
        """Forget committed assignments whose whole bucket is older than the window."""
        if self._newest is None:
            return
        # Bucket b covers [b*_BUCKET, (b+1)*_BUCKET): it goes once all of it is < horizon.
        last = (self._newest - WINDOW) // _BUCKET
        heap = self._heap
        discard = self._assigned.discard
        while heap and heap[0] < last:
            for key in self._buckets.pop(heapq.heappop(heap)):
                discard(key)


#: What a form POST adds to the pool's Host and User-Agent.
_POST_HEADERS = ((b"Content-Type", FORM_CONTENT_TYPE.encode("ascii")),)

_KEY_PAIR = re.compile(r"_k=[^&\s'\"]*")
#: The stdlib loggers httpx and httpcore write requests and responses to (URLs, a redirect's
#: `Location`); filters do not propagate to child loggers, so each gets its own.
_HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)


class _NoKeyInHttpLogs(logging.Filter):
    """httpx logs every request's full URL (INFO) and httpcore the response headers (DEBUG); the
    Kissmetrics key is in the query (and in a redirect's `Location` that echoes it). URLs are
    logged as `redact_url` gives them, and any other `_k=` value is masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, httpx.URL) for a in args):
            args = record.args = tuple(
                http.redact_url(str(a)) if isinstance(a, httpx.URL) else a for a in args
            )
        if "_k=" in str(record.msg) or (args and "_k=" in str(args)):
            record.msg = _KEY_PAIR.sub("_k=<redacted>", record.getMessage())
            record.args = None
        return True


def _guard_http_logs() -> None:
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoKeyInHttpLogs) for f in logger.filters):
            logger.addFilter(_NoKeyInHttpLogs())


def _api_key(sink: KissmetricsSinkConfig) -> str:
    key = sink.api_key.get_secret_value() if sink.api_key is not None else ""
    if not key:
        # config/load.py refuses such a config already; this guards configs built in code.
        raise StartupError(
            "sink.api_key: required for sink type kissmetrics (set sink.api_key: ${ENV_VAR}, "
            "sink.api_key_file: PATH, or a systemd credential named api_key)"
        )
    return key


class KissmetricsSink:
    """`HttpSink` for Kissmetrics: one request per message (SPEC §4); see the module docstring.

    `properties_dropped` counts the properties the encoder dropped
    (`trackd_km_properties_dropped_total`)."""

    name = "kissmetrics"
    max_request_messages = 1
    max_request_bytes: int | None = None

    def __init__(
        self,
        sink: KissmetricsSinkConfig,
        *,
        clock: Clock | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._encoder = KmEncoder(_api_key(sink), sink.page_event)
        _guard_http_logs()
        self._base = sink.url.rstrip("/")
        self._where = http.redact_url(self._base)
        self._max_backoff = sink.retry.max_backoff
        self._clock: Clock = clock or SystemClock()
        user_agent = f"trackd/{agent.__version__}"
        #: The keep-alive pool, unless a proxy (or a client given) means httpx.
        self._pool: KeepAlivePool | None = None
        self._client: httpx.AsyncClient | None = client
        if client is None and sink.proxy is None:
            https = self._base.lower().startswith("https:")
            try:
                self._pool = KeepAlivePool(
                    self._base,
                    max_connections=sink.concurrency,
                    timeout=sink.timeout,
                    ssl_context=client_ssl_context(sink.tls) if https else None,
                    user_agent=user_agent,
                )
            except ValueError:
                # config/validate.py refuses such a URL already; this guards configs built in code.
                raise StartupError(
                    f"sink.url: invalid URL {self._where!r} (expected http:// or https://…)"
                ) from None
        elif client is None:
            self._client = http.build_client(sink, sink.concurrency)
        self._headers = {"User-Agent": user_agent}
        self._post_headers = {**self._headers, "Content-Type": FORM_CONTENT_TYPE}

    def __repr__(self) -> str:
        return f"KissmetricsSink(url={self._where!r})"

    @property
    def properties_dropped(self) -> int:
        """Properties dropped by the encoder so far (`trackd_km_properties_dropped_total`)."""
        return self._encoder.properties_dropped

    def describe(self) -> str:
        return self._where

    async def send(self, batch: Sequence[OutboxMessage], retry: int) -> Sequence[Outcome]:
        """One request per message, in order (the sender hands over one at a time)."""
        return [await self._send_one(msg) for msg in batch]

    async def _send_one(self, msg: OutboxMessage) -> Outcome:
        req = self._encoder.encode_body(msg.body, msg.stamp)
        if isinstance(req, KmTooLong):
            return Reject(req.reason, req.detail)
        status: int
        headers: Mapping[str, str]
        try:
            if self._pool is not None:
                if req.method == "POST":
                    answer = await self._pool.request(
                        "POST", req.target, headers=_POST_HEADERS, body=req.body
                    )
                else:
                    answer = await self._pool.request("GET", req.target)
                status, headers = answer.status, answer.headers
            else:
                assert self._client is not None
                url = self._base + req.target
                if req.method == "POST":
                    response = await http.request(
                        self._client, "POST", url, content=req.body, headers=self._post_headers
                    )
                else:
                    response = await http.request(self._client, "GET", url, headers=self._headers)
                status, headers = response.status_code, response.headers
        except httpx.TransportError as exc:
            return http.classify_exception(exc)
        return http.classify_status(
            status, headers, self._clock.time(), max_backoff=self._max_backoff, accept_304=True
        )

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self._client is not None:
            await self._client.aclose()


def build(config: Config) -> SinkParts:
    """`sink.type: kissmetrics` -> the sink and the stamper that assigns its `_t`."""
    # Here, not at the top: the registry imports this module to list it in BUILDERS.
    from agent.sinks.registry import SinkParts

    sink = config.sink
    assert isinstance(sink, KissmetricsSinkConfig)
    http_sink: HttpSink = KissmetricsSink(sink)
    # Its own encoder: the stamper runs on the pipeline thread, the sink on the event loop, and
    # an encoder's name cache is not shared across threads.
    stamper = SecondAllocator(KmEncoder(_api_key(sink), sink.page_event))
    return SinkParts(http=http_sink, stamper=stamper)
