"""The Segment sink (SPEC §4 `segment`): outbox messages → `POST /v1/batch`, one request per batch.

The wire (body, headers, limits, 400 bodies) is `segment_wire`; the outcome table is
`agent.sinks.http`. What this module adds is the mapping of one batch's response onto its
messages:

    message over 32,000 bytes      Reject too_large, never sent
    2xx                            every message Delivered
    400 naming messages            those Reject http_400 (the endpoint's reason); the others
                                   Retry http_4xx, so the sender resends them without the bad ones
    413, or a 400 naming nothing   bisected inside this `send`: each half is re-sent (one after
                                   the other) until the one message that still fails is
                                   dead-lettered alone (Reject http_413 / http_400); a half that
                                   is accepted is Delivered
    anything else                  `classify_status` / `classify_exception` for every message

A half that meets a transient or sink-level failure (a 5xx, a 401, a reset) gives that outcome to
its messages and to the halves not sent yet: bisection stops at the first failure that is not
about the messages. A bisection of n messages makes at most 2n - 1 requests (a full binary tree);
`_Budget` enforces the bound anyway.

Secrets: the write key and token live only in the prepared `Authorization` header and the
envelope; neither `repr`, `describe`, any outcome `detail` nor any log line carries them (details
are built from status lines, `segment_wire`'s reasons and host:port only — never a body).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import httpx
import structlog

from agent import __version__
from agent.config import Config
from agent.config.schema import SegmentSinkConfig
from agent.errors import StartupError
from agent.sinks import segment_wire as wire
from agent.sinks.base import DELIVERED, OutboxMessage, Outcome, Pause, Reject, Retry
from agent.sinks.http import build_client, classify_exception, classify_status, redact_url, request
from agent.state.outbox import message_id

if TYPE_CHECKING:
    from agent.sinks.registry import SinkParts

__all__ = ["SegmentSink", "build"]

log = structlog.get_logger("trackd.sink")

#: The detail of a message retried because others of its request were dead-lettered.
RESENT_DETAIL: Final = "resent without the rejected messages"


class _Budget:
    """Requests one `send` may still make (a bisection of n messages needs at most 2n - 1)."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


class SegmentSink:
    """An `HttpSink` posting batches to a Segment-compatible `/v1/batch` endpoint.

    `wall` is the wall clock (`sentAt` of each attempt, HTTP-date `Retry-After`); `client`
    replaces the pooled client `build_client` makes (it is then not closed by `aclose`)."""

    __slots__ = (
        "_client",
        "_envelope",
        "_headers",
        "_max_backoff",
        "_owns_client",
        "_url",
        "_wall",
        "max_request_bytes",
        "max_request_messages",
        "name",
    )

    def __init__(
        self,
        sink: SegmentSinkConfig,
        *,
        version: str = __version__,
        wall: Callable[[], float] = time.time,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        write_key = sink.write_key.get_secret_value() if sink.write_key is not None else None
        token = sink.token.get_secret_value() if sink.token is not None else None
        needed = "token" if sink.auth == "bearer" else "write_key"
        if not (token if sink.auth == "bearer" else write_key):
            # Config loading reports this already; this guards configs built in code.
            raise StartupError(
                f"sink.{needed}: required for auth: {sink.auth} (set {needed}: ${{ENV_VAR}}, "
                f"{needed}_file: PATH, or a systemd credential named {needed})"
            )
        auth = wire.auth_headers(sink.auth, write_key, token)
        url, appended = wire.normalize_url(sink.url)
        self.name = "segment"
        self._url = url
        self._wall = wall
        self._max_backoff = sink.retry.max_backoff
        self._envelope = wire.SegmentEnvelope(
            version, write_key if sink.auth == "bearer" else None, sink.gzip
        )
        self._headers: dict[str, str] = {**auth, "User-Agent": wire.user_agent(version)}
        self.max_request_messages = min(sink.batch.max_events, wire.MAX_REQUEST_MESSAGES)
        # The batcher counts each body plus one separator between bodies, which is exactly what
        # the envelope adds around them besides its fixed overhead: a request it cuts is at most
        # wire.MAX_REQUEST_BYTES uncompressed, envelope included.
        self.max_request_bytes: int | None = wire.MAX_REQUEST_BYTES - self._envelope.overhead()
        self._owns_client = client is None
        self._client = client if client is not None else build_client(sink, sink.concurrency)
        if appended:
            log.info("segment_url_completed", url=redact_url(url), appended="/v1/batch")

    def __repr__(self) -> str:
        return f"SegmentSink(url={redact_url(self._url)!r}, gzip={self._envelope.gzip})"

    @property
    def url(self) -> str:
        """The batch endpoint requests go to (after `wire.normalize_url`)."""
        return self._url

    def describe(self) -> str:
        return redact_url(self._url)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # -- sending ---------------------------------------------------------------------------------

    async def send(self, batch: Sequence[OutboxMessage], retry: int) -> Sequence[Outcome]:
        out: list[Outcome | None] = [None] * len(batch)
        sizes = [len(m.body) for m in batch]
        for i in wire.oversized(sizes):
            out[i] = Reject(
                "too_large",
                f"message of {sizes[i]} bytes is over Segment's {wire.MAX_MESSAGE_BYTES}-byte limit",
            )
        rest = [i for i, o in enumerate(out) if o is None]
        if rest:
            budget = _Budget(2 * len(rest))
            # The sender already cut the batch to the limits: this is one request. The split is
            # only a guard for callers that did not.
            for start, end in wire.split_requests(
                [sizes[i] for i in rest], self._envelope.overhead(), self.max_request_messages
            ):
                await self._deliver(batch, rest[start:end], retry, out, budget)
        assert all(o is not None for o in out)
        return [o for o in out if o is not None]

    async def _deliver(
        self,
        batch: Sequence[OutboxMessage],
        idx: list[int],
        retry: int,
        out: list[Outcome | None],
        budget: _Budget,
    ) -> Retry | Pause | None:
        """Send the messages `batch[i] for i in idx` and set their outcomes in `out`, bisecting
        a 413 or a plain 400. Returns the failure that was not about the messages (a transport
        error, a 5xx, a 401, …) when one ended it: a bisection stops there."""
        if budget.left <= 0:
            spent = Retry("http_4xx", "bisection stopped: request budget exhausted")
            _fill(out, idx, spent)
            return spent
        budget.left -= 1
        response = await self._post([batch[i].body for i in idx], retry)
        if not isinstance(response, httpx.Response):
            _fill(out, idx, response)
            return response
        status = response.status_code
        if 200 <= status <= 299:
            _fill(out, idx, DELIVERED)
            return None
        if status == 400:
            errors = wire.parse_errors(response.content)
            if errors is not None:
                ids = [message_id(batch[i].body) or "" for i in idx]
                matched = wire.match_errors(errors, ids)
                if matched:
                    resend = Retry("http_4xx", RESENT_DETAIL)
                    for pos, i in enumerate(idx):
                        reason = matched.get(pos)
                        out[i] = resend if reason is None else Reject("http_400", reason)
                    return None
        if status in (400, 413):
            if len(idx) == 1:
                what = "HTTP 413 Content Too Large" if status == 413 else "HTTP 400 Bad Request"
                out[idx[0]] = Reject(f"http_{status}", f"{what}: refused when sent alone")
                return None
            for half in wire.bisect(len(idx)):
                stop = await self._deliver(batch, [idx[p] for p in half], retry, out, budget)
                if stop is not None:
                    # The rest would fare the same: leave it to the sender's backoff.
                    _fill(out, [i for i in idx if out[i] is None], stop)
                    return stop
            return None
        outcome = classify_status(
            status, response.headers, self._wall(), max_backoff=self._max_backoff
        )
        _fill(out, idx, outcome)
        return outcome if isinstance(outcome, Retry | Pause) else None

    async def _post(self, bodies: list[bytes], retry: int) -> httpx.Response | Retry | Pause:
        """One POST attempt (`sentAt` = now); a transport failure comes back as its outcome."""
        content, headers = self._envelope.encode(bodies, wire.sent_at(self._wall()))
        headers.update(self._headers)
        if retry > 0:
            headers["X-Retry-Count"] = str(retry)
        try:
            return await request(self._client, "POST", self._url, content=content, headers=headers)
        except httpx.TransportError as exc:
            return classify_exception(exc)


def _fill(out: list[Outcome | None], idx: Sequence[int], outcome: Outcome) -> None:
    for i in idx:
        out[i] = outcome


def build(config: Config) -> SinkParts:
    """The sink of a `sink.type: segment` config (`BUILDERS`). A missing credential is a
    `StartupError` naming the keys that provide it."""
    # Imported here: the registry imports this module for its BUILDERS entry.
    from agent.sinks.registry import SinkParts

    sink = config.sink
    assert isinstance(sink, SegmentSinkConfig)
    return SinkParts(http=SegmentSink(sink))
