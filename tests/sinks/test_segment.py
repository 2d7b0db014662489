"""The Segment sink (agent/sinks/segment.py) against the real loopback receiver (tests/receiver.py),
and end to end through `trackd run --once`.

In-process tests drive `SegmentSink.send` directly, the way the `Sender` does; the end-to-end ones
run the trackd binary as a subprocess pointed at the receiver.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent import __version__
from agent.config.schema import BatchConfig, RetryConfig, SegmentSinkConfig
from agent.errors import StartupError
from agent.sinks.base import Delivered, OutboxMessage, Outcome, Pause, Reject, Retry
from agent.sinks.batcher import Batcher
from agent.sinks.segment import SegmentSink
from agent.sinks.segment_wire import MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES, sent_at
from tests.helpers import free_port, make_config, run_trackd, write_access_log
from tests.receiver import Receiver, Request, Response

KEY = "wk-SEGMENT-s3cr3t-0123456789"
TOKEN = "tok-SEGMENT-s3cr3t-abcdef"
NOW = 1_790_000_000.0
OK = Response.json({"success": True})


@pytest.fixture
def rx(rx: Receiver) -> Receiver:
    """The shared receiver, answering `{"success": true}` unless a test scripts otherwise."""
    rx.default = OK
    return rx


def body(seq: int, size: int = 0) -> bytes:
    """A compact message with messageId `m-<seq>` second (as SPEC §3.1), padded to `size` bytes."""
    head = b'{"type":"track","messageId":"m-%05d","event":"Signed Up","properties":{"pad":"' % seq
    tail = b'"}}'
    pad = max(0, size - len(head) - len(tail))
    return head + b"x" * pad + tail


def batch_of(n: int, *, attempts: int = 0) -> list[OutboxMessage]:
    return [OutboxMessage(i + 1, body(i), None, attempts) for i in range(n)]


def config(url: str, **kw: Any) -> SegmentSinkConfig:
    fields: dict[str, Any] = {"type": "segment", "url": url, "write_key": KEY, "gzip": False}
    fields.update(kw)
    return SegmentSinkConfig(**fields)


def clock(*times: float) -> Callable[[], float]:
    """A wall clock returning `times` in turn, then the last one forever."""
    left = list(times)

    def wall() -> float:
        return left.pop(0) if len(left) > 1 else left[0]

    return wall


@contextlib.asynccontextmanager
async def open_sink(
    cfg: SegmentSinkConfig, wall: Callable[[], float] = lambda: NOW
) -> AsyncIterator[SegmentSink]:
    sink = SegmentSink(cfg, wall=wall)
    try:
        yield sink
    finally:
        await sink.aclose()


async def send_batch(
    cfg: SegmentSinkConfig, batch: list[OutboxMessage], retry: int = 0
) -> list[Outcome]:
    """The outcomes of one `send` of `batch` by a sink opened on `cfg` (closed afterwards)."""
    async with open_sink(cfg) as sink:
        return await sink.send(batch, retry)


def ids_of(req: Request) -> list[str]:
    return [m["messageId"] for m in req.json["batch"]]


def responder_failing(bad: set[str], status: int) -> Callable[[Request], Response]:
    """`status` to any request whose batch holds a messageId in `bad`, 200 otherwise."""

    def respond(req: Request) -> Response:
        return Response(status) if bad & set(ids_of(req)) else OK

    return respond


# --- the body ------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.anyio
class TestBody:
    async def test_body_is_the_exact_envelope_around_verbatim_messages(self, rx: Receiver) -> None:
        """The body is `{"batch":[m…],"sentAt":…,"context":{"library":…}}` with message bytes verbatim."""
        batch = batch_of(3)
        await send_batch(config(rx.url), batch)
        expected = (
            b'{"batch":['
            + b",".join(m.body for m in batch)
            + b'],"sentAt":"'
            + sent_at(NOW).encode()
            + b'","context":{"library":{"name":"trackd","version":"'
            + __version__.encode()
            + b'"}}}'
        )
        assert rx.requests[0].decoded == expected

    async def test_library_name_is_trackd(self, rx: Receiver) -> None:
        """The batch-level context names the library `trackd` and its version."""
        await send_batch(config(rx.url), batch_of(1))
        assert rx.requests[0].json["context"] == {
            "library": {"name": "trackd", "version": __version__}
        }

    async def test_gzip_body_decodes_to_the_uncompressed_form(self, rx: Receiver) -> None:
        """With gzip on, the receiver's gunzipped body equals the body sent with gzip off."""
        batch = batch_of(20)
        async with open_sink(config(rx.url, gzip=True)) as zipped:
            await zipped.send(batch, 0)
        async with open_sink(config(rx.url, gzip=False)) as plain:
            await plain.send(batch, 0)
        gz, raw = rx.requests
        assert gz.headers["content-encoding"] == "gzip"
        assert gz.body != gz.decoded
        assert "content-encoding" not in raw.headers
        assert gz.decoded == raw.body

    async def test_base_url_gets_v1_batch(self, rx: Receiver) -> None:
        """A URL without a path is posted to `/v1/batch`."""
        async with open_sink(config(rx.url)) as sink:
            await sink.send(batch_of(1), 0)
            assert sink.url == f"{rx.url}/v1/batch"
        assert (rx.requests[0].method, rx.requests[0].path) == ("POST", "/v1/batch")

    async def test_url_with_a_path_is_kept(self, rx: Receiver) -> None:
        """A URL with a path is used as given."""
        await send_batch(config(f"{rx.url}/ingest/batch"), batch_of(1))
        assert rx.requests[0].path == "/ingest/batch"

    async def test_sent_at_is_the_wall_clock_of_each_attempt(self, rx: Receiver) -> None:
        """Two attempts of the same batch carry different `sentAt`s, from the injected wall."""
        async with open_sink(config(rx.url), wall=clock(NOW, NOW + 61.5)) as sink:
            await sink.send(batch_of(2), 0)
            await sink.send(batch_of(2), 1)
        first, second = (r.json["sentAt"] for r in rx.requests)
        assert (first, second) == (sent_at(NOW), sent_at(NOW + 61.5))


# --- headers -------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.anyio
class TestHeaders:
    async def test_basic_auth_is_base64_of_write_key_and_colon(self, rx: Receiver) -> None:
        """`auth: basic` sends `Basic base64(write_key + ":")`."""
        await send_batch(config(rx.url), batch_of(1))
        expected = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
        assert rx.requests[0].headers["authorization"] == expected

    async def test_basic_auth_puts_no_write_key_in_the_body(self, rx: Receiver) -> None:
        """With Basic auth the write key travels only in the header."""
        await send_batch(config(rx.url), batch_of(1))
        assert "writeKey" not in rx.requests[0].json

    async def test_bearer_sends_the_token_and_write_key_in_the_body(self, rx: Receiver) -> None:
        """`auth: bearer` with a write key sends `Bearer token` and `writeKey` in the body."""
        await send_batch(config(rx.url, auth="bearer", token=TOKEN), batch_of(1))
        req = rx.requests[0]
        assert req.headers["authorization"] == f"Bearer {TOKEN}"
        assert req.json["writeKey"] == KEY
        assert list(req.json)[-1] == "writeKey"

    async def test_bearer_without_write_key_has_no_write_key_field(self, rx: Receiver) -> None:
        """`auth: bearer` without a write key sends no `writeKey` field."""
        await send_batch(config(rx.url, auth="bearer", token=TOKEN, write_key=None), batch_of(1))
        assert "writeKey" not in rx.requests[0].json

    async def test_user_agent_and_content_type(self, rx: Receiver) -> None:
        """Requests carry `User-Agent: trackd/<version>` and `Content-Type: application/json`."""
        await send_batch(config(rx.url), batch_of(1))
        headers = rx.requests[0].headers
        assert headers["user-agent"] == f"trackd/{__version__}"
        assert headers["content-type"] == "application/json"

    async def test_no_retry_count_on_a_first_attempt(self, rx: Receiver) -> None:
        """A first attempt (retry 0) has no `X-Retry-Count`."""
        await send_batch(config(rx.url), batch_of(1))
        assert "x-retry-count" not in rx.requests[0].headers

    async def test_retry_count_on_a_retry(self, rx: Receiver) -> None:
        """A retry carries `X-Retry-Count: <retry>`."""
        await send_batch(config(rx.url), batch_of(1, attempts=3), 3)
        assert rx.requests[0].headers["x-retry-count"] == "3"


# --- limits --------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.anyio
class TestLimits:
    async def test_too_large_is_rejected_without_a_request(self, rx: Receiver) -> None:
        """A message over 32,000 bytes is dead-lettered `too_large`; the others are still sent."""
        batch = [
            OutboxMessage(1, body(0), None, 0),
            OutboxMessage(2, body(1, MAX_MESSAGE_BYTES + 1), None, 0),
            OutboxMessage(3, body(2), None, 0),
        ]
        outcomes = await send_batch(config(rx.url), batch)
        assert isinstance(outcomes[1], Reject) and outcomes[1].reason == "too_large"
        assert [outcomes[0], outcomes[2]] == [Delivered(), Delivered()]
        assert [ids_of(r) for r in rx.requests] == [["m-00000", "m-00002"]]

    async def test_only_too_large_messages_make_no_request(self, rx: Receiver) -> None:
        """A batch of only oversized messages makes no request at all."""
        batch = [OutboxMessage(1, body(0, MAX_MESSAGE_BYTES + 1), None, 0)]
        outcomes = await send_batch(config(rx.url), batch)
        assert [type(o) for o in outcomes] == [Reject]
        assert rx.requests == []

    async def test_message_of_exactly_the_limit_is_sent(self, rx: Receiver) -> None:
        """A message of exactly 32,000 bytes is sent."""
        batch = [OutboxMessage(1, body(0, MAX_MESSAGE_BYTES), None, 0)]
        assert await send_batch(config(rx.url), batch) == [Delivered()]

    async def test_max_request_messages_is_capped_at_2500(self) -> None:
        """`max_request_messages` is `batch.max_events`, at most 2,500."""
        big = config("http://127.0.0.1:9/", batch=BatchConfig(max_events=5000))
        small = config("http://127.0.0.1:9/", batch=BatchConfig(max_events=100))
        async with open_sink(big) as a, open_sink(small) as b:
            assert (a.max_request_messages, b.max_request_messages) == (2500, 100)

    @pytest.mark.parametrize("auth", ["basic", "bearer"])
    async def test_a_request_the_batcher_cuts_fits_in_500000_bytes(
        self, rx: Receiver, auth: str
    ) -> None:
        """The batcher's cut at `max_request_bytes` makes a body ≤ 500,000 bytes; one more won't fit."""
        cfg = config(rx.url, auth=auth, token=TOKEN)
        async with open_sink(cfg) as sink:
            assert sink.max_request_bytes is not None
            batcher: Batcher[bytes] = Batcher(10_000, 1.0, lambda: 0.0, size=len)
            for i in range(60):
                batcher.add(body(i, 9_999 + i % 7))
            taken = batcher.take(sink.max_request_messages, sink.max_request_bytes)
            await sink.send([OutboxMessage(i, b, None, 0) for i, b in enumerate(taken)], 0)
        sent = rx.requests[0].decoded
        assert len(sent) <= MAX_REQUEST_BYTES
        assert len(sent) + 1 + len(batcher.take(1)[0]) > MAX_REQUEST_BYTES


# --- 400 with an errors body ---------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.anyio
class TestErrorsBody:
    async def test_named_messages_are_dead_lettered_and_the_rest_retried(
        self, rx: Receiver
    ) -> None:
        """A 400 naming two messageIds dead-letters exactly those, with the reason; the rest Retry."""
        errors = [
            {"messageId": "m-00002", "reason": "invalid timestamp"},
            {"messageId": "m-00005", "reason": "userId too long"},
        ]
        rx.script(Response.json({"errors": errors}, status=400))
        outcomes = await send_batch(config(rx.url), batch_of(8))
        assert outcomes[2] == Reject("http_400", "invalid timestamp")
        assert outcomes[5] == Reject("http_400", "userId too long")
        others = [o for i, o in enumerate(outcomes) if i not in (2, 5)]
        assert all(isinstance(o, Retry) and o.reason == "http_4xx" for o in others)
        assert len(rx.requests) == 1

    async def test_errors_placed_by_index(self, rx: Receiver) -> None:
        """An error naming only an `index` dead-letters the message at that position."""
        rx.script(Response.json({"errors": [{"index": 1, "reason": "bad"}]}, status=400))
        outcomes = await send_batch(config(rx.url), batch_of(3))
        assert outcomes[1] == Reject("http_400", "bad")
        assert [type(outcomes[0]), type(outcomes[2])] == [Retry, Retry]

    async def test_errors_naming_nothing_sent_are_a_plain_400(self, rx: Receiver) -> None:
        """A 400 whose errors match no message is bisected like a plain 400."""
        rx.script(Response.json({"errors": [{"messageId": "nope", "reason": "x"}]}, status=400))
        outcomes = await send_batch(config(rx.url), batch_of(4))
        assert outcomes == [Delivered()] * 4
        assert len(rx.requests) == 3  # the whole batch, then each half


# --- bisection -----------------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.anyio
class TestBisect:
    async def test_413_bisects_down_to_the_one_bad_message(self, rx: Receiver) -> None:
        """A 413 caused by one message ends with that one Reject http_413 and all others Delivered."""
        n = 64
        rx.respond_with(responder_failing({"m-00037"}, 413))
        outcomes = await send_batch(config(rx.url), batch_of(n))
        assert isinstance(outcomes[37], Reject) and outcomes[37].reason == "http_413"
        assert all(o == Delivered() for i, o in enumerate(outcomes) if i != 37)
        assert len(rx.requests) <= 2 * math.log2(n) + 2

    async def test_bisection_delivers_each_message_in_exactly_one_accepted_request(
        self, rx: Receiver
    ) -> None:
        """Across the bisection, every good message was in exactly one accepted request."""
        rx.respond_with(responder_failing({"m-00005"}, 413))
        await send_batch(config(rx.url), batch_of(16))
        accepted = [i for r in rx.requests if r.response == OK for i in ids_of(r)]
        assert sorted(accepted) == [f"m-{i:05d}" for i in range(16) if i != 5]

    async def test_plain_400_bisects_too(self, rx: Receiver) -> None:
        """A 400 without an errors body bisects down to the one bad message, Reject http_400."""
        rx.respond_with(responder_failing({"m-00000"}, 400))
        outcomes = await send_batch(config(rx.url), batch_of(10))
        assert isinstance(outcomes[0], Reject) and outcomes[0].reason == "http_400"
        assert outcomes[1:] == [Delivered()] * 9

    async def test_two_bad_messages_are_each_dead_lettered_alone(self, rx: Receiver) -> None:
        """Two bad messages in different halves both end Reject; all the others Delivered."""
        rx.respond_with(responder_failing({"m-00002", "m-00013"}, 413))
        outcomes = await send_batch(config(rx.url), batch_of(16))
        rejected = [i for i, o in enumerate(outcomes) if isinstance(o, Reject)]
        assert rejected == [2, 13]
        assert sum(o == Delivered() for o in outcomes) == 14

    async def test_requests_stay_within_2n_when_every_message_fails(self, rx: Receiver) -> None:
        """When every message is refused, the bisection makes fewer than 2n requests."""
        n = 12
        rx.default = Response(413)
        outcomes = await send_batch(config(rx.url), batch_of(n))
        assert all(isinstance(o, Reject) and o.reason == "http_413" for o in outcomes)
        assert len(rx.requests) < 2 * n

    async def test_a_half_that_meets_a_5xx_stops_the_bisection(self, rx: Receiver) -> None:
        """A 503 on a half gives Retry to its messages and to the halves not yet sent."""
        rx.script(Response(413), Response(503))
        outcomes = await send_batch(config(rx.url), batch_of(8))
        assert all(isinstance(o, Retry) and o.reason == "http_5xx" for o in outcomes)
        assert len(rx.requests) == 2

    async def test_a_half_that_is_refused_the_key_pauses(self, rx: Receiver) -> None:
        """A 401 during the bisection pauses the rest: nothing is dead-lettered."""
        rx.script(Response(400), Response(200), Response(401))
        outcomes = await send_batch(config(rx.url), batch_of(8))
        assert outcomes[:4] == [Delivered()] * 4
        assert all(isinstance(o, Pause) for o in outcomes[4:])


# --- other statuses and the network --------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.anyio
class TestStatuses:
    async def test_2xx_delivers_every_message(self, rx: Receiver) -> None:
        """A 200 acknowledges every message of the request."""
        assert await send_batch(config(rx.url), batch_of(5)) == [Delivered()] * 5

    async def test_401_pauses_and_rejects_nothing(self, rx: Receiver) -> None:
        """A 401 is a Pause for every message (a wrong key never dead-letters)."""
        rx.default = Response(401)
        outcomes = await send_batch(config(rx.url), batch_of(4))
        assert all(isinstance(o, Pause) and o.reason == "http_4xx" for o in outcomes)
        assert len(rx.requests) == 1

    async def test_429_with_retry_after_is_retry_with_after(self, rx: Receiver) -> None:
        """A 429 with `Retry-After: 30` is Retry http_429 with after = 30."""
        rx.default = Response(429, headers={"Retry-After": "30"})
        outcomes = await send_batch(config(rx.url), batch_of(2))
        assert outcomes == [Retry("http_429", "HTTP 429 Too Many Requests", 30.0)] * 2

    async def test_retry_after_is_capped_at_max_backoff(self, rx: Receiver) -> None:
        """A `Retry-After` beyond `retry.max_backoff` is capped to it."""
        rx.default = Response(503, headers={"Retry-After": "3600"})
        outcomes = await send_batch(config(rx.url, retry=RetryConfig(max_backoff=60)), batch_of(1))
        assert isinstance(outcomes[0], Retry) and outcomes[0].after == 60.0

    async def test_500_is_retry(self, rx: Receiver) -> None:
        """A 500 is Retry http_5xx for every message."""
        rx.default = Response(500)
        outcomes = await send_batch(config(rx.url), batch_of(3))
        assert all(isinstance(o, Retry) and o.reason == "http_5xx" for o in outcomes)

    async def test_other_4xx_rejects_the_request_messages(self, rx: Receiver) -> None:
        """Another 4xx (422) dead-letters the request's messages with its status."""
        rx.default = Response(422)
        outcomes = await send_batch(config(rx.url), batch_of(2))
        assert all(isinstance(o, Reject) and o.reason == "http_422" for o in outcomes)
        assert len(rx.requests) == 1


@pytest.mark.timeout(10)
@pytest.mark.anyio
class TestNetwork:
    async def test_reset_mid_response_is_retry_reset(self, rx: Receiver) -> None:
        """A connection reset mid-response is Retry reset."""
        rx.default = Response(200, action="reset")
        outcomes = await send_batch(config(rx.url), batch_of(2))
        assert all(isinstance(o, Retry) and o.reason == "reset" for o in outcomes)

    async def test_resend_after_a_reset_carries_the_same_messages(self, rx: Receiver) -> None:
        """After a reset, the re-sent batch holds byte-identical messages (the receiver can dedupe)."""
        rx.script(Response(200, action="reset"))
        batch = batch_of(5)
        async with open_sink(config(rx.url), wall=clock(NOW, NOW + 5)) as sink:
            await sink.send(batch, 0)
            assert await sink.send(batch, 1) == [Delivered()] * 5
        first, second = (r.decoded for r in rx.requests)
        messages = b",".join(m.body for m in batch)
        assert messages in first and messages in second

    async def test_receiver_down_is_retry_connect(self) -> None:
        """Nothing listening is Retry connect."""
        outcomes = await send_batch(config(f"http://127.0.0.1:{free_port()}"), batch_of(2))
        assert all(isinstance(o, Retry) and o.reason == "connect" for o in outcomes)

    async def test_no_answer_within_the_timeout_is_retry_timeout(self, rx: Receiver) -> None:
        """An endpoint that never answers is Retry timeout after `sink.timeout`."""
        rx.default = Response(action="hang")
        outcomes = await send_batch(config(rx.url, timeout=0.3), batch_of(1))
        assert isinstance(outcomes[0], Retry) and outcomes[0].reason == "timeout"


# --- secrets -------------------------------------------------------------------------------------


SECRETS = (KEY, TOKEN, base64.b64encode(f"{KEY}:".encode()).decode())


def _details(outcomes: Sequence[Outcome]) -> str:
    return " ".join(repr(o) for o in outcomes)


@pytest.mark.timeout(20)
class TestSecrets:
    @pytest.mark.anyio
    async def test_repr_and_describe_carry_no_secret(self) -> None:
        """`repr` and `describe` show neither the write key nor the token (nor URL userinfo)."""
        cfg = config(f"http://user:{KEY}@127.0.0.1:9/v1/batch?k={KEY}", auth="bearer", token=TOKEN)
        async with open_sink(cfg) as sink:
            shown = repr(sink) + sink.describe()
        assert sink.describe() == "http://127.0.0.1:9/v1/batch"
        assert not any(secret in shown for secret in SECRETS)

    @pytest.mark.anyio
    @pytest.mark.parametrize("auth", ["basic", "bearer"])
    async def test_no_secret_in_details_or_logs(
        self, rx: Receiver, auth: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Across failures of every kind, no outcome detail and no log line holds a secret."""
        caplog.set_level(logging.DEBUG)
        rx.script(
            Response(401, body=KEY.encode()),
            Response(400, body=KEY.encode()),
            Response(200),
            Response(200),
            Response(413),
            Response(200),
            Response(200),
            Response(500, body=TOKEN.encode()),
            Response(200, action="reset"),
            Response.json({"errors": [{"index": 0, "reason": "bad"}]}, status=400),
        )
        seen: list[Outcome] = []
        with structlog.testing.capture_logs() as logs:
            async with open_sink(config(rx.url, auth=auth, token=TOKEN)) as sink:
                for _ in range(6):
                    seen.extend(await sink.send(batch_of(2), 0))
            async with open_sink(config(f"http://127.0.0.1:{free_port()}/")) as down:
                seen.extend(await down.send(batch_of(1), 0))
        text = _details(seen) + repr(logs) + caplog.text
        assert not any(secret in text for secret in SECRETS)
        assert {type(o) for o in seen} == {Pause, Delivered, Reject, Retry}

    @pytest.mark.anyio
    async def test_a_base_url_is_logged_once_without_secrets(self) -> None:
        """A base URL logs that `/v1/batch` was appended, once, with the redacted URL."""
        with structlog.testing.capture_logs() as logs:
            async with open_sink(config(f"http://127.0.0.1:9/?k={KEY}")):
                pass
        completed = [e for e in logs if e["event"] == "segment_url_completed"]
        assert len(completed) == 1
        assert completed[0]["url"] == "http://127.0.0.1:9/v1/batch"

    def test_missing_write_key_names_the_keys(self) -> None:
        """Basic auth without a write key is a StartupError naming write_key and write_key_file."""
        with pytest.raises(StartupError, match=r"sink\.write_key.*write_key_file"):
            SegmentSink(config("http://127.0.0.1:9/", write_key=None))

    def test_missing_token_names_the_keys(self) -> None:
        """Bearer auth without a token is a StartupError naming token and token_file."""
        with pytest.raises(StartupError, match=r"sink\.token.*token_file"):
            SegmentSink(config("http://127.0.0.1:9/", auth="bearer"))


# --- end to end through `trackd run --once` -------------------------------------------------------


def _e2e_config(tmp_path: Path, url: str, pages: int, **sink: Any) -> Path:
    log = tmp_path / "access.log"
    write_access_log(log, 0, pages)
    return make_config(
        tmp_path,
        paths=[str(log)],
        extra={"sink": {"type": "segment", "url": url, "write_key": "${SEG_KEY}", **sink}},
    )


def _page_ids(rx: Receiver) -> list[str]:
    """messageIds of the page messages in the requests the receiver answered 2xx."""
    out = []
    for req in rx.requests:
        assert req.path == "/v1/batch"
        if req.response is not None and 200 <= req.response.status < 300:
            out += [m["messageId"] for m in req.json["batch"] if m["type"] == "page"]
    return out


@pytest.mark.timeout(90)
class TestEndToEnd:
    def test_every_page_view_arrives_exactly_once(self, tmp_path: Path, rx: Receiver) -> None:
        """`run --once` delivers every page view once to /v1/batch, exit 0, key never printed."""
        cfg = _e2e_config(tmp_path, rx.url, 300, batch={"max_events": 50})
        proc = run_trackd("run", "--once", "-c", str(cfg), env={"SEG_KEY": KEY})
        assert proc.returncode == 0, proc.stderr
        ids = _page_ids(rx)
        assert len(ids) == 300
        assert len(set(ids)) == 300
        assert all(r.headers["content-encoding"] == "gzip" for r in rx.requests)
        assert KEY not in proc.stdout + proc.stderr

    def test_503s_then_200_still_deliver_everything(self, tmp_path: Path, rx: Receiver) -> None:
        """After two 503s, every page view is delivered (exactly once after dedupe), exit 0."""
        rx.script(Response(503), Response(503))
        cfg = _e2e_config(
            tmp_path,
            rx.url,
            120,
            batch={"max_events": 40},
            retry={"initial_backoff": "10ms", "max_backoff": "50ms"},
        )
        proc = run_trackd("run", "--once", "-c", str(cfg), env={"SEG_KEY": KEY})
        assert proc.returncode == 0, proc.stderr
        ids = _page_ids(rx)
        assert len(set(ids)) == 120
        assert len(ids) == 120  # a 503 acknowledges nothing: nothing is delivered twice
        assert [r.response.status for r in rx.requests[:2] if r.response] == [503, 503]
        assert KEY not in proc.stdout + proc.stderr
