"""Worker processes prepare blocks exactly as the pipeline thread does."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config_text
from agent.pipeline.blocks import BlockPreparer
from agent.pipeline.prepare import Preparer
from agent.pipeline.stats import PipelineStats
from agent.pipeline.workers import PreparePool
from agent.records import FileRef
from tests.helpers import access_line


@pytest.mark.timeout(120)
def test_pool_results_equal_in_process_results(tmp_path: Path) -> None:
    """Prepared records and counters from a worker process are those of the same block prepared
    in process (cookieless, cookie, garbage and too-long lines)."""
    lines = [access_line(i).encode().rstrip(b"\n") for i in range(200)]
    lines += [b"garbage", b"x" * 70_000, access_line(9, cookie="-").encode().rstrip(b"\n")]
    block = b"\n".join(lines)
    config = load_config_text(
        "sources: [{name: web, kind: access, paths: [a.log], format: combined_cookie}]\n",
        str(tmp_path / "t.yaml"),
        {},
    )
    where = FileRef(7, "web", "/var/log/a.log", "ab" * 32)
    end = len(block) + 1

    local_stats = PipelineStats()
    local = BlockPreparer(config, Preparer(config, b"s3cret", local_stats.prepare), local_stats)
    expected = list(local.block(where, 0, end, block))

    pool = PreparePool(config, b"s3cret", processes=1)
    try:
        pool_stats = PipelineStats()
        got = list(pool.take(pool.submit(where, 0, end, block, 0), pool_stats))
    finally:
        pool.close()
    assert got == expected and len(got) == 201
    assert pool_stats.lines == local_stats.lines
    assert pool_stats.skipped == local_stats.skipped
    assert pool_stats.skipped[("web", "too_long")] == 1
    assert pool_stats.skipped[("web", "parse_error")] == 1


@pytest.mark.timeout(180)
def test_run_once_with_workers_is_byte_identical(tmp_path: Path) -> None:
    """`run --once` with worker processes (two access files and an app log with logins, merged
    by time) writes exactly the bytes the in-process path writes."""
    from tests.helpers import read_messages, run_trackd
    from tests.identity.world import World

    outputs = []
    for workers in ("0", "2"):
        work = tmp_path / f"w{workers}"
        work.mkdir()
        w = World(work)
        for v in range(3000):
            t = v * 0.7
            w.hit(t, device=f"dev{v % 300:05d}x", session=f"sess{v % 50:04d}x" if v % 3 else None)
            if v % 40 == 0:
                w.login(t + 0.2, f"user{v % 90}@x.com", session=f"sess{v % 50:04d}x")
        w.write()
        proc = run_trackd(
            "run", "--once", "-c", str(w.config()), env={"TRACKD_WORKERS": workers}, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert "read 3075 lines" in proc.stderr
        outputs.append([m for m in read_messages(work / "out.jsonl")])
    strip = [
        [
            {**m, "context": {**m["context"], "source": {**m["context"]["source"], "file": ""}}}
            for m in out
        ]
        for out in outputs
    ]
    assert strip[0] == strip[1] and len(strip[0]) > 3000


def test_shipping_keeps_rule_hits_and_their_values() -> None:
    """A block's records come back from `ship_block`/`unship_block` equal and typed as they
    left: rule hits as RuleHit (traits, properties, logout pairs intact), the rest as Prepared."""
    from agent.pipeline.prepare import Prepared, RuleHit
    from agent.pipeline.workers import ship_block, unship_block

    hit = RuleHit(
        2, "ann@x.com", "ok", "dev1", None, {"plan": "pro", "seats": 3, "n": [1.5, None]},
        {"path": "/signup"}, "Signup", ("s1", None), None,
    )  # fmt: skip
    plain = Prepared(
        11.0, "web", 0, 7, 40, b"x\n", 10.0, False, b"ab" * 16, "2024-01-01T00:00:10.000Z",
        "/var/log/a.log", "cd" * 32, "dev1", None, None, True, b'{"path":"/"}', b'"ip":"1.2.3.4",',
        None, "id-1", (),
    )  # fmt: skip
    ruled = plain._replace(offset=40, end=90, is_page=False, page=None, page_id=None, rules=(hit,))
    back = unship_block(ship_block([plain, ruled]))
    assert back == [plain, ruled]
    assert type(back[0]) is Prepared and type(back[1].rules[0]) is RuleHit
    assert back[1].rules[0].traits == {"plan": "pro", "seats": 3, "n": [1.5, None]}
