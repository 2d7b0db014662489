"""The fault matrix (bench/faults.py, issue 13) at CI scale: every fault — kill -9, SIGTERM,
real logrotate, a full disk under the sink and the state, HTTP endpoints down (Segment and
Kissmetrics), a full outbox, a damaged or killed backfill — run against the real product, and
no row may lose or duplicate a line. First, the matrix's own counting (bench/faults_count.py)
is shown to catch a duplicate, a loss and a re-send."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import SLOW_SCALE
from tests.receiver import Receiver, Response

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "bench" / "faults.py"


def _load(name: str) -> ModuleType:
    """A bench/ module by path (bench/ is not a package); sys.path is left as it was."""
    saved = list(sys.path)
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


faults_count = _load("faults_count")
faults = _load("faults")


def _page(seq: int, mid: str | None = None) -> dict[str, Any]:
    return {"type": "page", "messageId": mid or f"m{seq}", "properties": {"path": f"/p/{seq}"}}


# -- the counting --------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_file_sink_count_catches_a_duplicate_and_a_loss(tmp_path: Path) -> None:
    """In the file sink a second copy of a line is a duplicate even under the same messageId; a
    line missing is a loss; a torn last line is not counted; a line never written is extra."""
    out = tmp_path / "out.jsonl"
    lines = [_page(0), _page(1), _page(1), _page(3), _page(9), {"type": "identify"}]
    out.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in lines) + b'{"type":"pa')
    tally = faults_count.file_sink(out, range(4))
    assert tally == faults_count.Tally(lines=4, out=5, dup=1, lost=1, resent=0, extra=1)


@pytest.mark.timeout(20)
def test_segment_count_tells_a_resend_from_a_duplicate() -> None:
    """At a Segment endpoint: a line acknowledged twice with the same messageId and bytes is a
    re-send, a line sent under a second messageId a duplicate, a line only ever refused (503) a
    loss."""
    with Receiver() as rx:
        rx.script(Response(204), Response(204), Response(204), Response(503))
        with httpx.Client(base_url=rx.url) as client:
            for batch in (
                [_page(0), _page(1)],
                [_page(1)],  # the same bytes again: a re-send
                [_page(0, "other-id")],  # the same line under another id: a duplicate
                [_page(2)],  # refused: never acknowledged
            ):
                client.post("/v1/batch", json={"batch": batch})
        tally = faults_count.segment(rx, range(3))
    assert tally == faults_count.Tally(lines=3, out=4, dup=1, lost=1, resent=1, extra=0)


@pytest.mark.timeout(20)
def test_kissmetrics_count_reads_viewed_url_and_the_whole_query() -> None:
    """At a Kissmetrics endpoint each `/e` is one page view named by `Viewed URL`; the same query
    again (same `_t`) is a re-send, another `_t` for the same view a duplicate."""
    with Receiver() as rx:
        with httpx.Client(base_url=rx.url) as client:
            for url, t in (("/p/0", 1), ("/p/0", 1), ("/p/1", 1), ("/p/1", 2)):
                client.get("/e", params={"_n": "Viewed Page", "Viewed URL": url, "_t": t})
        tally = faults_count.kissmetrics(rx, range(3))
    assert tally == faults_count.Tally(lines=3, out=4, dup=1, lost=1, resent=1, extra=0)


@pytest.mark.timeout(20)
def test_a_row_fails_on_a_duplicate_a_loss_a_resend_or_a_problem() -> None:
    """A row passes only with lines in and no duplicate, no loss, no problem noted, and no
    same-id re-send unless the fault allows one; the table says FAIL for the others."""
    ok = faults.Row("k", "a fault", "file", lines=10, out=10)
    assert ok.passed
    for bad in (
        replace(ok, dup=1),
        replace(ok, lost=1),
        replace(ok, resent=1),
        replace(ok, problems=["exit 1"]),
        replace(ok, lines=0, out=0),
    ):
        assert not bad.passed, bad
    assert replace(ok, resent=3, resend_allowed=True).passed
    table = faults.table([ok, replace(ok, key="k2", lost=1, problems=["2 lost"])])
    assert table.count("PASS") == 1 and table.count("FAIL") == 1
    assert "PROBLEM: 2 lost" in table


# -- the matrix ----------------------------------------------------------------------------------


#: `make test` runs the matrix at its CI scale (`--quick`, about 45 s), `make test-full` at full.
SCALE = [] if SLOW_SCALE == "full" else ["--quick"]
TIMEOUT = 600 if SLOW_SCALE == "full" else 300


@pytest.fixture(scope="module")
def matrix() -> dict[str, Any]:
    """`bench/faults.py --quick --json`, run once for the module: its JSON document."""
    done = subprocess.run(
        [sys.executable, str(FAULTS), *SCALE, "--json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT - 20,
        cwd=ROOT,
        check=False,
    )
    assert done.stdout.strip(), f"no JSON from faults.py (exit {done.returncode}): {done.stderr}"
    data: dict[str, Any] = orjson.loads(done.stdout)
    data["exit"] = done.returncode
    data["table"] = done.stderr
    return data


def _listed() -> list[str]:
    done = subprocess.run(
        [sys.executable, str(FAULTS), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_every_fault_delivers_every_line_exactly_once(matrix: dict[str, Any]) -> None:
    """Each row wrote lines, and delivered every one of them with no duplicate and no loss (and
    no other problem it noted); the command exits 0."""
    rows = matrix["rows"]
    bad = [
        f"{r['key']}: lines={r['lines']} dup={r['dup']} lost={r['lost']} problems={r['problems']}"
        for r in rows
        if r["lines"] <= 0 or r["dup"] != 0 or r["lost"] != 0 or r["problems"]
    ]
    assert bad == [], "\n".join(bad) + "\n" + matrix["table"]
    assert all(r["passed"] for r in rows)
    assert matrix["exit"] == 0, matrix["table"]


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_the_matrix_runs_every_listed_fault(matrix: dict[str, Any]) -> None:
    """The JSON has one row per fault `--list` names, in order: none skipped silently."""
    assert [r["key"] for r in matrix["rows"]] == _listed()
    assert len(matrix["rows"]) >= 20


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_same_id_resends_only_where_at_least_once_applies(matrix: dict[str, Any]) -> None:
    """A line acknowledged twice under the same messageId is allowed only in the rows where the
    sender was cut off mid-request (kill -9, the end of a SIGTERM drain); the file sink rows and
    the endpoint-outage rows re-send nothing that was acknowledged."""
    for r in matrix["rows"]:
        if not r["resend_allowed"]:
            assert r["resent"] == 0, r
    allowed = {r["key"] for r in matrix["rows"] if r["resend_allowed"]}
    assert allowed == {"kill9-http", "sigterm-http"}
