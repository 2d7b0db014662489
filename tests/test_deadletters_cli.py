"""`trackd deadletters list | retry | drop` as a subprocess (SPEC §4 segment 400s, §5.1, §6).

The dead letters come from a real `trackd run --once` against the loopback `Receiver`, which
400-rejects chosen lines with a Segment errors body. With no daemon running the command takes the
state lock itself; while `trackd run` runs, it leaves a request that the daemon applies.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import make_config, run_trackd, wait_until, write_access_log
from tests.receiver import Receiver, Request, Response
from tests.sources.tailing import Agent

WRITE_KEY = "wk-DEADLETTERS-s3cr3t-4c7e1b"
#: The lines the receiver refuses until it is told otherwise.
REJECTED = (3, 7, 11)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKD_TEST_WRITE_KEY", WRITE_KEY)


def seq_of(message: dict[str, Any]) -> int:
    return int(message["properties"]["path"].rsplit("/", 1)[1])


class Endpoint:
    """A Receiver that answers 400 naming every message of a line in `reject`, 200 otherwise."""

    def __init__(self, rx: Receiver) -> None:
        self.rx = rx
        self.reject: set[int] = set(REJECTED)
        #: messageId of each rejected line, as it was sent.
        self.ids: dict[int, str] = {}
        rx.respond_with(self._answer)

    def _answer(self, req: Request) -> Response | None:
        errors = []
        for index, m in enumerate(req.json["batch"]):
            if seq_of(m) in self.reject:
                self.ids[seq_of(m)] = m["messageId"]
                errors.append({"index": index, "messageId": m["messageId"], "reason": "no way"})
        if errors:
            return Response.json({"errors": errors}, status=400)
        return Response.json({"success": True})

    def delivered(self) -> list[tuple[int, str]]:
        """(seq, messageId) of every message in a request answered 200."""
        return [
            (seq_of(m), m["messageId"])
            for r in self.rx.requests
            if r.response is not None and r.response.status == 200
            for m in r.json["batch"]
        ]


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with Receiver() as rx:
        yield Endpoint(rx)


def sink(url: str) -> dict[str, Any]:
    return {
        "type": "segment",
        "url": url + "/v1/batch",
        "write_key": "${TRACKD_TEST_WRITE_KEY}",
        "batch": {"max_events": 10, "max_wait": "50ms"},
        "retry": {"initial_backoff": "10ms", "max_backoff": "200ms"},
        "concurrency": 2,
    }


def deadletters(cfg: Path, *args: str) -> Any:
    """`trackd deadletters ARGS --json`: the parsed output (exit 0 asserted)."""
    proc = run_trackd("deadletters", *args, "--json", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


@pytest.fixture
def dead(tmp_path: Path, endpoint: Endpoint) -> Path:
    """A state whose `run --once` dead-lettered the lines in REJECTED: its config."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 30)
    cfg = make_config(tmp_path, paths=[str(log)], extra={"sink": sink(endpoint.rx.url)})
    proc = run_trackd("run", "--once", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert sorted(s for s, _ in endpoint.delivered()) == sorted(set(range(30)) - set(REJECTED))
    return cfg


class TestList:
    @pytest.mark.timeout(60)
    def test_json_lists_each_rejected_message_with_its_reason(
        self, dead: Path, endpoint: Endpoint
    ) -> None:
        """`list --json` shows every rejected message: reason http_400, the endpoint's reason,
        the messageId that was sent."""
        data = deadletters(dead, "list")
        assert data["total"] == 3 and data["by_reason"] == {"http_400": 3}
        entries = data["dead_letters"]
        assert {d["messageId"] for d in entries} == set(endpoint.ids.values())
        assert all(d["reason"] == "http_400" and "no way" in d["detail"] for d in entries)
        assert all(d["sink"] == "segment" and d["type"] == "page" for d in entries)

    @pytest.mark.timeout(60)
    def test_text_names_reason_and_message_ids_but_never_the_key(
        self, dead: Path, endpoint: Endpoint
    ) -> None:
        """`list` (text) names the count, the reason and each messageId; the write key (plain
        or as Basic credentials) appears nowhere."""
        proc = run_trackd("deadletters", "list", "-c", str(dead))
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout + proc.stderr
        assert "3 dead letter(s): 3 http_400" in out
        assert all(mid in out for mid in endpoint.ids.values())
        basic = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        as_json = run_trackd("deadletters", "list", "--json", "-c", str(dead))
        for text in (out, as_json.stdout + as_json.stderr):
            assert WRITE_KEY not in text and basic not in text


class TestRetryAndDrop:
    @pytest.mark.timeout(60)
    def test_retry_ids_moves_exactly_those_back_and_they_are_delivered_with_their_ids(
        self, dead: Path, endpoint: Endpoint
    ) -> None:
        """`retry ID ID` (no daemon: the command takes the lock) moves exactly those dead
        letters back; the next `run --once` delivers them under the same messageIds."""
        entries = sorted(deadletters(dead, "list")["dead_letters"], key=lambda d: d["id"])
        chosen, kept = entries[:2], entries[2]
        proc = run_trackd("deadletters", "retry", *(str(d["id"]) for d in chosen), "-c", str(dead))
        assert proc.returncode == 0, proc.stderr
        assert "2 message(s) back in the outbox (applied by this command)" in proc.stdout
        left = deadletters(dead, "list")["dead_letters"]
        assert [d["messageId"] for d in left] == [kept["messageId"]]
        endpoint.reject.clear()
        before = len(endpoint.delivered())
        again = run_trackd("run", "--once", "-c", str(dead))
        assert again.returncode == 0, again.stderr
        assert sorted(mid for _, mid in endpoint.delivered()[before:]) == sorted(
            d["messageId"] for d in chosen
        )

    @pytest.mark.timeout(60)
    def test_drop_all_empties_the_dead_letters(self, dead: Path) -> None:
        """`drop` without ids drops every dead letter."""
        proc = run_trackd("deadletters", "drop", "-c", str(dead))
        assert proc.returncode == 0, proc.stderr
        assert "3 dead letter(s) dropped (applied by this command)" in proc.stdout
        assert deadletters(dead, "list") == {"total": 0, "by_reason": {}, "dead_letters": []}
        listing = run_trackd("deadletters", "list", "-c", str(dead))
        assert listing.stdout.strip() == "no dead letters"


@pytest.mark.timeout(60)
def test_retry_while_the_daemon_runs_is_applied_by_it(tmp_path: Path, endpoint: Endpoint) -> None:
    """With `trackd run` holding the lock, `retry` leaves a request the daemon applies (the
    command says so) and the messages reach the endpoint under their messageIds."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 30)
    agent = Agent(tmp_path, [str(log)], {"sink": sink(endpoint.rx.url)})
    try:
        agent.start()
        cfg = agent.cfg
        wait_until(lambda: len(endpoint.delivered()) == 27, 30, "27 lines delivered")
        wait_until(lambda: deadletters(cfg, "list")["total"] == 3, 30, "3 dead letters")
        endpoint.reject.clear()
        before = len(endpoint.delivered())
        proc = run_trackd("deadletters", "retry", "-c", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert "3 message(s) back in the outbox (applied by the running trackd)" in proc.stdout
        wait_until(lambda: len(endpoint.delivered()) == before + 3, 30, "the retried messages")
        assert agent.stop() == 0
    finally:
        agent.close()
    assert sorted(mid for _, mid in endpoint.delivered()[before:]) == sorted(
        endpoint.ids[s] for s in REJECTED
    )
    assert deadletters(cfg, "list")["total"] == 0
