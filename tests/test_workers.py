"""Worker processes prepare blocks exactly as the pipeline thread does."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config_text
from agent.emit import PipelineStats
from agent.lines import LinePreparer
from agent.prepare import Preparer, Where
from agent.workers import PreparePool
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
    where = Where("web", "/var/log/a.log", "ab" * 32, 7)
    end = len(block) + 1

    local_stats = PipelineStats()
    local = LinePreparer(config, Preparer(config, b"s3cret", local_stats.prepare), local_stats)
    expected = list(local.lines(where, 0, end, block.split(b"\n")))

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
