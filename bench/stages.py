"""Per-stage cost of the hot path, in µs per line, on one core and in one process (process CPU time,
so other load on the machine does not count).

    .venv/bin/python bench/stages.py [--lines 200000] [--corpus issue|bench] [--profile FILE]

The stages are the pipeline's own objects, built from the same config `run --once` uses (fresh
state, file sink): split (the block into lines); parse (decode + the source's parser) and prepare
(`Preparer`), or where the native kernel runs the two in one, `BlockPreparer.lines`
(TRACKD_KERNEL=0 measures the pure path's two); ship (a worker result's round trip: marshal,
then the pool's pickle); emit (prefetch + resolve + assemble + encode,
`Pipeline.consume_batch`); commit (the file sink write + fsync and the state transaction).
`--profile` writes a cProfile of the whole in-process read instead.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import logging
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))
if "agent" not in sys.modules:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import file_sink_config
from gen import NGINX_FORMAT, access_log, issue_log

from agent.config.load import load_config
from agent.pipeline.core import BATCH, COMMIT_EVERY
from agent.pipeline.workers import ship_block, unship_block
from agent.records import FileRef
from agent.runtime import Runtime
from agent.sinks.registry import build_sink
from agent.state.db import ensure_state_dir


class _Row:
    """What the commit needs of a tracked file: its row's position fields."""

    offset = 0
    marker_len = 0
    marker: bytes | None = None


class _Tracked:
    def __init__(self) -> None:
        self.row = _Row()


def corpus(kind: str, path: Path, lines: int) -> Path:
    if kind == "issue":
        return issue_log(path, lines)
    return access_log(path, lines)


def build(work: Path, log: Path) -> Runtime:
    # The agent's loggers in this process: warnings and up, as the bench config asks of trackd.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    work.mkdir(parents=True, exist_ok=True)
    cfg = file_sink_config(work, log, NGINX_FORMAT, start_at="beginning")
    rt = Runtime(load_config(str(cfg)))
    ensure_state_dir(rt.config.state_dir)
    rt.sink = build_sink(rt.config)
    rt._open_pipeline(rt.sink)
    return rt


def tune_gc() -> None:
    """The cyclic-GC settings `trackd run` / `backfill` (`cli._tune_gc`) and the workers use: with
    CPython's defaults the collections over the retained records would be counted as stage time
    (~20% of it) that the agent does not spend."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def stages(log: Path, work: Path) -> dict[str, float]:
    """µs per line of each stage over `log`."""
    rt = build(work, log)
    tune_gc()
    pipe = rt.pipeline
    assert pipe is not None
    data = log.read_bytes()
    n = data.count(b"\n")
    ref = FileRef(1, "web", str(log), "0" * 64)
    pipe._files[1] = _Tracked()  # type: ignore[assignment]
    out: dict[str, float] = {}

    t = time.process_time()
    lines = data[:-1].split(b"\n")
    out["split"] = time.process_time() - t

    ctx = pipe.blocks.sources["web"]
    if ctx.kernel is not None:
        # The native kernel does parse and prepare in one call per block (lines it leaves to
        # the pure path are done inside the same call to `lines`): one stage.
        t = time.process_time()
        prepared = []
        offset = 0
        for i in range(0, len(lines), 4096):
            block = lines[i : i + 4096]
            end = offset + sum(len(x) + 1 for x in block)
            prepared.extend(pipe.blocks.lines(ref, offset, end, block))
            offset = end
        out["parse + prepare (native kernel)"] = time.process_time() - t
    else:
        parser = ctx.parser
        t = time.process_time()
        records = [parser(line.decode("utf-8", "replace")) for line in lines]
        out["parse"] = time.process_time() - t

        prepare = pipe.preparer.prepare
        t = time.process_time()
        offset = 0
        prepared = []
        for line, rec in zip(lines, records, strict=True):
            end = offset + len(line) + 1
            p = prepare(ref, offset, end, line, rec)  # type: ignore[arg-type]
            offset = end
            if p is not None:
                prepared.append(p)
        out["prepare"] = time.process_time() - t

    t = time.process_time()
    for i in range(0, len(prepared), 4096):
        shipped = pickle.dumps(ship_block(prepared[i : i + 4096]))
        unship_block(pickle.loads(shipped))  # noqa: S301 (our own bytes, as the pool does)
    out["ship (marshal both ways)"] = time.process_time() - t

    emit = commit = 0.0
    for i in range(0, len(prepared), BATCH):
        t = time.process_time()
        pipe.consume_batch(prepared[i : i + BATCH])
        emit += time.process_time() - t
        if pipe.chunk.records >= COMMIT_EVERY:
            t = time.process_time()
            pipe.commit()
            commit += time.process_time() - t
    t = time.process_time()
    pipe.commit()
    commit += time.process_time() - t
    out["emit (resolve, assemble, encode)"] = emit
    out["commit (sink write, state)"] = commit
    if rt.sink is not None and rt.sink.direct is not None:
        rt.sink.direct.close()
    us = {k: v / n * 1e6 for k, v in out.items()}
    us["total"] = sum(us.values())
    return us


def profile(log: Path, work: Path, dest: Path) -> None:
    """cProfile of reading `log` in process (no workers), as `run --once` does it."""
    import os

    from agent.pipeline.once import read_snapshot

    os.environ["TRACKD_WORKERS"] = "0"
    rt = build(work, log)
    tune_gc()
    prof = cProfile.Profile()
    prof.enable()
    read_snapshot(rt)
    prof.disable()
    prof.dump_stats(dest)
    print(f"wrote {dest}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--corpus", choices=("issue", "bench"), default="issue")
    ap.add_argument("--profile", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        log = corpus(args.corpus, tmp / "access.log", args.lines)
        if args.profile is not None:
            profile(log, tmp / "work", args.profile)
            return
        result = stages(log, tmp / "work")
    finally:
        shutil.rmtree(tmp)
    print(f"{'stage (' + args.corpus + ' corpus, one core)':<40}{'µs/line':>10}")
    for key, value in result.items():
        print(f"{key:<40}{value:>10.2f}")


def run(lines: int, kind: str) -> dict[str, Any]:
    """The stage table for `bench/run_once.py`."""
    tmp = Path(tempfile.mkdtemp())
    try:
        return stages(corpus(kind, tmp / "access.log", lines), tmp / "work")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
