"""KissmetricsSink (agent/sinks/kissmetrics.py) against the real HTTP receiver of tests/receiver.py:
one request per message as SPEC §4 lays it out, every outcome of "All HTTP sinks", the api key
kept out of everything printable, and `trackd run --once` delivering an access log end to end."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
from pydantic import SecretStr

from agent.config.schema import KissmetricsSinkConfig, RetryConfig
from agent.events.messages import (
    alias_message,
    encode,
    identify_message,
    page_message,
    track_message,
)
from agent.sinks.base import Delivered, OutboxMessage, Outcome, Pause, Reject, Retry
from agent.sinks.kissmetrics import KissmetricsSink
from agent.sinks.km_wire import KmEncoder
from tests.helpers import access_line, make_config, run_trackd
from tests.receiver import Receiver, Response

KEY = "km-SECRET-5f3a9c77e1"
T = 1_795_752_000  # 2026-11-27T04:00:00Z
TS = "2026-11-27T04:00:00.000Z"
DEVICE = "qFq2LweZugFNE4o49hLhmRPBW34"
# Message bodies as `make demo` writes them (config/demo.yaml on config/samples), rebuilt with
# the same builders the pipeline uses.
CONTEXT: dict[str, Any] = {
    "ip": "203.0.113.0",
    "userAgent": "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "identity": {"resolution": "device", "contested": False},
    "source": {"name": "web", "file": "/var/log/nginx/access.log", "offset": 0},
}
PAGE = encode(
    page_message(
        "9c327094-e176-588f-9fd5-1574c0df55a3",
        TS,
        None,
        DEVICE,
        None,
        {
            "path": "/",
            "search": "",
            "url": "https://shop.example.com/",
            "referrer": "https://www.google.com/",
        },
        CONTEXT,
    )
)
TRACK = encode(
    track_message(
        "26f24915-aeeb-59d6-8df7-82bf66f1ad2e",
        TS,
        None,
        DEVICE,
        "Viewed Pricing",
        {"plan": "pro"},
        CONTEXT,
    )
)
IDENTIFY = encode(
    identify_message(
        "1de232c2-6f4e-5401-ae25-a39084a250e2",
        TS,
        "alice@example.com",
        DEVICE,
        {"email": "Alice@Example.com", "user_id": 1042},
        CONTEXT,
    )
)
ALIAS = encode(
    alias_message("145a876f-de5c-5b54-a367-3ed97d682d49", TS, "alice@example.com", DEVICE, CONTEXT)
)


def config(url: str, **kw: Any) -> KissmetricsSinkConfig:
    fields: dict[str, Any] = {
        "type": "kissmetrics",
        "url": url,
        "api_key": SecretStr(KEY),
        "timeout": 5.0,
        "retry": RetryConfig(max_backoff=60.0),
        **kw,
    }
    return KissmetricsSinkConfig(**fields)


@pytest.fixture
async def sink(rx: Receiver) -> AsyncIterator[KissmetricsSink]:
    async with contextlib.aclosing(KissmetricsSink(config(rx.url + "/"))) as s:
        yield s


def msg(body: bytes, stamp: int | None = T, row: int = 1) -> OutboxMessage:
    return OutboxMessage(row, body, stamp, 0)


async def send_one(sink: KissmetricsSink, body: bytes, stamp: int | None = T) -> Outcome:
    outcomes = await sink.send([msg(body, stamp)], 0)
    assert len(outcomes) == 1
    return outcomes[0]


@pytest.mark.anyio
@pytest.mark.timeout(20)
class TestRequests:
    @pytest.mark.parametrize(
        ("body", "stamp", "path", "pairs"),
        [
            pytest.param(
                PAGE,
                T,
                "/e",
                [
                    ("_k", KEY),
                    ("_p", DEVICE),
                    ("_n", "Viewed Page"),
                    ("_t", str(T)),
                    ("_d", "1"),
                    ("Referrer", "https://www.google.com/"),
                    ("Viewed URL", "https://shop.example.com/"),
                ],
                id="page",
            ),
            pytest.param(
                TRACK,
                T,
                "/e",
                [
                    ("_k", KEY),
                    ("_p", DEVICE),
                    ("_n", "Viewed Pricing"),
                    ("_t", str(T)),
                    ("_d", "1"),
                    ("plan", "pro"),
                ],
                id="track",
            ),
            pytest.param(
                IDENTIFY,
                T,
                "/s",
                [
                    ("_k", KEY),
                    ("_p", "alice@example.com"),
                    ("_t", str(T)),
                    ("_d", "1"),
                    ("email", "Alice@Example.com"),
                    ("user_id", "1042"),
                ],
                id="identify",
            ),
            pytest.param(
                ALIAS,
                None,
                "/a",
                [("_k", KEY), ("_p", DEVICE), ("_n", "alice@example.com")],
                id="alias",
            ),
        ],
    )
    async def test_each_message_is_one_get_request(
        self,
        sink: KissmetricsSink,
        rx: Receiver,
        body: bytes,
        stamp: int | None,
        path: str,
        pairs: list[tuple[str, str]],
    ) -> None:
        """Each message is delivered as one GET with exactly these pairs, in order: a page → /e
        with _n = Viewed Page, `Viewed URL` and `Referrer`, no raw fields; a track → /e with its
        event name and properties after _d; an identify → /s with _p = userId, _t, _d and the
        traits; an alias → /a with _p = previousId and _n = userId only (its stamp is None)."""
        assert await send_one(sink, body, stamp) == Delivered()
        (req,) = rx.wait_for(1)
        assert (req.method, req.path) == ("GET", path)
        assert req.pairs == pairs

    async def test_query_bytes_are_the_encoders_exactly(
        self, sink: KissmetricsSink, rx: Receiver
    ) -> None:
        """The request line carries the encoder's query byte for byte (`%20`, uppercase hex)."""
        body = encode(
            track_message("m", TS, "Bob Smith", None, "Signed Up", {"a/b": "x:y z"}, CONTEXT)
        )
        await send_one(sink, body)
        expected = KmEncoder(KEY).encode_body(body, T)
        assert rx.wait_for(1)[0].query == getattr(expected, "query", None)
        assert "%20" in rx.requests[0].query and "+" not in rx.requests[0].query

    async def test_stamp_is_sent_as_t(self, sink: KissmetricsSink, rx: Receiver) -> None:
        """The stamp written with the outbox row is the `_t` sent, not the event second."""
        await send_one(sink, TRACK, T + 7)
        assert rx.wait_for(1)[0].params["_t"] == str(T + 7)

    async def test_missing_stamp_sends_the_event_second(
        self, sink: KissmetricsSink, rx: Receiver
    ) -> None:
        """A row without a stamp (written before the sink stamped) sends the floor of its time."""
        await send_one(sink, TRACK, None)
        assert rx.wait_for(1)[0].params["_t"] == str(T)

    async def test_long_event_is_posted_as_a_form(
        self, sink: KissmetricsSink, rx: Receiver
    ) -> None:
        """An /e query over 2000 bytes goes as POST /e with the exact encoded body as a form."""
        body = encode(
            track_message("m-long", TS, "bob", None, "Long", {"note": "x" * 3000}, CONTEXT)
        )
        assert await send_one(sink, body) == Delivered()
        (req,) = rx.wait_for(1)
        expected = KmEncoder(KEY).encode_body(body, T)
        assert (req.method, req.path, req.query) == ("POST", "/e", "")
        assert req.headers["content-type"] == "application/x-www-form-urlencoded"
        assert req.body == getattr(expected, "body", None)
        assert req.params["note"] == "x" * 3000 and req.params["_n"] == "Long"

    async def test_user_agent_names_trackd(self, sink: KissmetricsSink, rx: Receiver) -> None:
        """Every request says it comes from trackd and its version."""
        await send_one(sink, TRACK)
        assert rx.wait_for(1)[0].headers["user-agent"].startswith("trackd/")

    async def test_several_messages_are_several_requests(
        self, sink: KissmetricsSink, rx: Receiver
    ) -> None:
        """A batch of n messages is n requests and n outcomes, in order."""
        outcomes = await sink.send([msg(PAGE, T, 1), msg(TRACK, T, 2), msg(ALIAS, None, 3)], 0)
        assert outcomes == [Delivered()] * 3
        assert [r.path for r in rx.wait_for(3)] == ["/e", "/e", "/a"]

    async def test_too_long_identity_never_reaches_the_endpoint(
        self, sink: KissmetricsSink, rx: Receiver
    ) -> None:
        """An identity over 255 characters is dead-lettered `too_long` without a request."""
        body = encode(track_message("m", TS, "u" * 256, None, "Signed Up", {}, CONTEXT))
        outcome = await send_one(sink, body)
        assert isinstance(outcome, Reject) and outcome.reason == "too_long"
        assert "u" * 256 not in outcome.detail
        await send_one(sink, TRACK)  # a request that does go: the receiver saw only that one
        assert [r.params["_p"] for r in rx.wait_for(1)] == [DEVICE]

    async def test_unencodable_message_is_rejected_invalid(
        self, sink: KissmetricsSink, rx: Receiver
    ) -> None:
        """A body that is not a message is dead-lettered `invalid`, without a request."""
        outcome = await send_one(sink, b"not json")
        assert isinstance(outcome, Reject) and outcome.reason == "invalid"
        assert rx.requests == []


@pytest.mark.anyio
@pytest.mark.timeout(20)
class TestOutcomes:
    @pytest.mark.parametrize("status", [200, 204, 304])
    async def test_2xx_and_304_are_delivered(
        self, sink: KissmetricsSink, rx: Receiver, status: int
    ) -> None:
        """Any 2xx, and 304 (Kissmetrics answers pixels with it), acknowledges the message."""
        rx.script(Response(status, body=b"GIF89a" if status == 200 else b""))
        assert await send_one(sink, TRACK) == Delivered()

    @pytest.mark.parametrize(
        ("response", "kind", "reason"),
        [
            pytest.param(Response(400, body=b"bad"), Reject, "http_400", id="400"),
            pytest.param(Response(401), Pause, "http_4xx", id="401"),
            pytest.param(Response(500), Retry, "http_5xx", id="500"),
        ],
    )
    async def test_error_status_outcome(
        self, sink: KissmetricsSink, rx: Receiver, response: Response, kind: type, reason: str
    ) -> None:
        """A 400 dead-letters the message as http_400; a 401 (a wrong key) pauses the sink
        instead of dead-lettering (http_4xx); a 500 is a Retry http_5xx."""
        rx.script(response)
        outcome = await send_one(sink, TRACK)
        assert isinstance(outcome, kind) and outcome.reason == reason

    async def test_503_with_retry_after_is_retried_after(
        self, sink: KissmetricsSink, rx: Receiver
    ) -> None:
        """A 503 with `Retry-After: 30` is a Retry held for 30 s."""
        rx.script(Response(503, headers={"Retry-After": "30"}))
        outcome = await send_one(sink, TRACK)
        assert isinstance(outcome, Retry)
        assert (outcome.reason, outcome.after) == ("http_5xx", 30.0)

    async def test_retry_after_is_capped_at_max_backoff(
        self, sink: KissmetricsSink, rx: Receiver
    ) -> None:
        """A `Retry-After` longer than sink.retry.max_backoff (60 s here) is cut to it."""
        rx.script(Response(429, headers={"Retry-After": "3600"}))
        outcome = await send_one(sink, TRACK)
        assert isinstance(outcome, Retry) and (outcome.reason, outcome.after) == ("http_429", 60.0)

    async def test_307_is_followed_with_the_same_body(
        self, sink: KissmetricsSink, rx: Receiver
    ) -> None:
        """A 307 is followed with method and form body kept."""
        body = encode(track_message("m", TS, "bob", None, "Long", {"note": "y" * 2500}, CONTEXT))
        rx.script(Response(307, headers={"Location": "/moved/e"}))
        assert await send_one(sink, body) == Delivered()
        first, second = rx.wait_for(2)
        assert (second.method, second.path, second.body) == ("POST", "/moved/e", first.body)

    async def test_reset_is_retried_with_the_same_request(
        self, sink: KissmetricsSink, rx: Receiver
    ) -> None:
        """A connection reset mid-response is Retry reset; the re-send is byte-identical (same
        `_t`, same query), so Kissmetrics can drop the duplicate (SCENARIOS 23)."""
        rx.script(Response(action="reset"))
        message = msg(TRACK, T + 3)
        (outcome,) = await sink.send([message], 0)
        assert isinstance(outcome, Retry) and outcome.reason == "reset"
        assert await sink.send([message], 1) == [Delivered()]
        first, second = rx.wait_for(2)
        assert (first.method, first.path, first.query) == (second.method, second.path, second.query)
        assert first.params["_t"] == str(T + 3)

    async def test_stopped_endpoint_is_retried_connect(
        self, sink: KissmetricsSink, rx: Receiver
    ) -> None:
        """Nothing listening is a Retry connect."""
        rx.stop()
        outcome = await send_one(sink, TRACK)
        assert isinstance(outcome, Retry) and outcome.reason == "connect"

    async def test_slow_answer_past_the_timeout_is_retried_timeout(self, rx: Receiver) -> None:
        """An endpoint slower than sink.timeout is a Retry timeout."""
        rx.script(Response(200, delay=2.0))
        async with contextlib.aclosing(KissmetricsSink(config(rx.url, timeout=0.3))) as sink:
            outcome = await send_one(sink, TRACK)
        assert isinstance(outcome, Retry) and outcome.reason == "timeout"


class TestSecrets:
    def test_repr_and_describe_hold_no_key(self, rx: Receiver) -> None:
        """repr() and describe() show the redacted base URL, never the key."""
        sink = KissmetricsSink(config(rx.url + "/"))
        assert sink.describe() == rx.url
        assert KEY not in repr(sink) and KEY not in sink.describe()
        assert rx.url in repr(sink)

    def test_missing_key_is_a_startup_error_naming_the_keys(self) -> None:
        """A config without an api key is refused, saying how to give one."""
        from agent.errors import StartupError

        with pytest.raises(StartupError) as err:
            KissmetricsSink(KissmetricsSinkConfig(type="kissmetrics"))
        text = str(err.value)
        assert "sink.api_key" in text and "sink.api_key_file" in text and "credential" in text

    @pytest.mark.anyio
    @pytest.mark.timeout(30)
    async def test_no_outcome_or_log_carries_the_key(
        self,
        sink: KissmetricsSink,
        rx: Receiver,
        caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Across every kind of outcome, no detail, stdlib log (httpx's, at DEBUG) or output
        contains the key."""
        caplog.set_level(logging.DEBUG)
        rx.script(
            Response(200),
            Response(400, body=KEY.encode()),
            Response(401),
            Response(503, headers={"Retry-After": "1"}),
            Response(action="reset"),
            Response(301, headers={"Location": f"/x?_k={KEY}"}),
        )
        outcomes = [await send_one(sink, TRACK) for _ in range(6)]
        rx.stop()
        outcomes.append(await send_one(sink, TRACK))
        assert {type(o) for o in outcomes} == {Delivered, Reject, Pause, Retry}
        assert "HTTP Request" in caplog.text  # httpx did log each request: redacted
        printed = capsys.readouterr()
        for text in [*map(repr, outcomes), caplog.text, printed.out, printed.err]:
            assert KEY not in text


def run_once(tmp_path: Path, log: Path, url: str, **sink: Any) -> CompletedProcess[str]:
    """`trackd run --once` on `log` into a Kissmetrics sink at `url` (key from ${KM_KEY}, more
    sink settings from `sink`), checked to exit 0."""
    cfg = make_config(
        tmp_path,
        paths=[str(log)],
        extra={"sink": {"type": "kissmetrics", "url": url, "api_key": "${KM_KEY}", **sink}},
    )
    done = run_trackd("run", "--once", "-c", str(cfg), env={"KM_KEY": KEY}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


class TestEndToEnd:
    @pytest.mark.timeout(90)
    def test_run_once_delivers_every_page_view_once(self, tmp_path: Path, rx: Receiver) -> None:
        """`trackd run --once` sends each access-log page view exactly once as /e (Viewed
        Page, `Viewed URL`), exits 0, and never prints the key it got from ${KM_KEY}."""
        log = tmp_path / "access.log"
        count = 40
        with log.open("w") as fh:
            for seq in range(count):
                fh.write(access_line(seq, ts=f"28/Nov/2026:10:00:{seq % 60:02d} +0000"))
        done = run_once(tmp_path, log, rx.url)
        assert KEY not in done.stdout + done.stderr
        events = [r for r in rx.requests if r.path == "/e"]
        assert {r.params["_n"] for r in events} == {"Viewed Page"}
        assert all(r.params["_k"] == KEY for r in rx.requests)
        seqs = sorted(int(r.params["Viewed URL"].rsplit("/", 1)[1]) for r in events)
        assert seqs == list(range(count))

    @pytest.mark.timeout(90)
    def test_run_once_spreads_one_visitors_same_second_hits(
        self, tmp_path: Path, rx: Receiver
    ) -> None:
        """Five page views of one visitor in one second arrive with `_t` = T..T+4 (the stamper
        runs in the real pipeline), and the assignments are in the state afterwards."""
        log = tmp_path / "access.log"
        with log.open("w") as fh:
            for seq in range(5):
                fh.write(access_line(seq, cookie="km_ai=visitor-one-abc"))
        run_once(tmp_path, log, rx.url)
        second = 1_795_860_000  # 28/Nov/2026:10:00:00 +0000
        assert sorted(int(r.params["_t"]) for r in rx.requests) == [second + i for i in range(5)]
        conn = sqlite3.connect(tmp_path / "state" / "state.db")
        try:
            rows = conn.execute("SELECT second FROM km_seconds ORDER BY second").fetchall()
            left = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        finally:
            conn.close()
        assert [s for (s,) in rows] == [second + i for i in range(5)]
        assert left == 0

    @pytest.mark.timeout(90)
    def test_run_once_resends_a_reset_request_with_the_same_t(
        self, tmp_path: Path, rx: Receiver
    ) -> None:
        """A connection reset on the first request is retried by the sender with the same query
        (same `_t`), and the run still delivers everything (SCENARIOS 23)."""
        log = tmp_path / "access.log"
        log.write_text("".join(access_line(seq) for seq in range(3)))
        rx.script(Response(action="reset"))
        retry = {"initial_backoff": "100ms", "max_backoff": "1s"}
        done = run_once(tmp_path, log, rx.url, concurrency=1, retry=retry)
        assert KEY not in done.stdout + done.stderr
        got = rx.requests
        assert len(got) == 4
        first = got[0]
        assert first.response is not None and first.response.action == "reset"
        again = [r for r in got[1:] if r.query == first.query]
        assert len(again) == 1
        urls = sorted(r.params["Viewed URL"] for r in got[1:])
        assert urls == sorted({r.params["Viewed URL"] for r in got})
