"""Tailing figures of `trackd run` (a real daemon into the file sink):

    .venv/bin/python bench/tailing.py latency [--lines 500] [--every 0.02]
        write one line at a time; the time until its message is in the sink's file (p50/p99)
    .venv/bin/python bench/tailing.py idle [--files 1000] [--seconds 30]
        CPU of the daemon tailing that many idle files (after they were read)

Prints a table and writes bench/results/tailing-<mode>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.sources.tailer import HOT_WINDOW  # noqa: E402
from bench.common import cpu_seconds, report  # noqa: E402
from tests.helpers import access_line  # noqa: E402
from tests.sources.tailing import Agent  # noqa: E402


def latency(work: Path, lines: int, every: float) -> dict[str, float]:
    """Seconds from write() of a line to its message being complete in the sink file."""
    log = work / "app.log"
    log.touch()
    agent = Agent(work, [str(log)]).start()
    samples = []
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        out_size = 0
        for seq in range(lines):
            data = access_line(seq).encode()
            written = time.perf_counter()
            os.write(fd, data)
            # The observer polls the sink file's size every 0.2 ms: its own delay is negligible.
            while True:
                try:
                    size = os.stat(agent.out).st_size
                except FileNotFoundError:
                    size = 0
                if size > out_size:
                    samples.append(time.perf_counter() - written)
                    out_size = size
                    break
                time.sleep(0.0002)
            time.sleep(every)
        os.close(fd)
        assert agent.stop() == 0
    finally:
        agent.close()
    q = statistics.quantiles(samples, n=100)
    return {
        "lines": lines,
        "p50_ms": q[49] * 1e3,
        "p99_ms": q[98] * 1e3,
        "max_ms": max(samples) * 1e3,
    }


def idle(work: Path, files: int, seconds: float) -> dict[str, float]:
    """CPU % of the daemon over `seconds` once every file was read and nothing changes."""
    logs = work / "logs"
    for i in range(files):
        d = logs / f"d{i % 50}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.log").write_text(access_line(i))
    agent = Agent(work, [str(logs / "**" / "*.log")]).start()
    try:
        agent.wait_seqs(files, timeout=300)
        time.sleep(HOT_WINDOW + 2)  # let the files go cold (no longer on the fast timer)
        before, started = cpu_seconds(agent.pid), time.monotonic()
        time.sleep(seconds)
        used = cpu_seconds(agent.pid) - before
        elapsed = time.monotonic() - started
        fds = len(os.listdir(f"/proc/{agent.pid}/fd"))
        assert agent.stop() == 0
    finally:
        agent.close()
    return {"files": files, "seconds": elapsed, "cpu_percent": used / elapsed * 100, "fds": fds}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="mode", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--lines", type=int, default=500)
    lat.add_argument("--every", type=float, default=0.02, help="seconds between lines")
    idl = sub.add_parser("idle")
    idl.add_argument("--files", type=int, default=1000)
    idl.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trackd-bench-") as tmp:
        if args.mode == "latency":
            result = latency(Path(tmp), args.lines, args.every)
        else:
            result = idle(Path(tmp), args.files, args.seconds)
    report(f"tailing-{args.mode}", result, width=14)


if __name__ == "__main__":
    main()
