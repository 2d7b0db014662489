"""Peak memory of `trackd run` (a real daemon into the file sink), from /proc/<pid>/status VmHWM:

    .venv/bin/python bench/memory.py overlong [--mib 100]
        a 1 MiB line, then a line of `--mib` MiB with no newline for a while (SCENARIOS 26):
        both are skipped (too_long), the lines around them delivered
    .venv/bin/python bench/memory.py burst [--lines 2000000]
        that many lines appended as fast as Python writes them (SCENARIOS 25), until every
        one is delivered

Prints a table and writes bench/results/memory-<mode>.json. (These figures were asserted by
tests/sources/test_tailer.py once — under 200 MiB and 300 MiB — and are measured here instead.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import peak_rss_mib, report  # noqa: E402
from tests.helpers import metric, wait_for_metric, write_access_log  # noqa: E402
from tests.sources.tailing import TOO_LONG, Agent, overlong_agent, write_overlong  # noqa: E402


def overlong(work: Path, mib: int) -> dict[str, float]:
    """Peak RSS while a 1 MiB line and a `mib` MiB line (no newline for a while) are skipped."""
    agent, log, port = overlong_agent(work)
    agent.start()
    try:
        agent.wait_seqs(10)
        baseline = peak_rss_mib(agent.pid)
        write_overlong(log, mib)
        wait_for_metric(port, TOO_LONG, 120)
        with log.open("ab") as fh:
            fh.write(b"\n")
        write_access_log(log, 10, 5)
        agent.wait_seqs(15, timeout=300)
        skipped = metric(port, TOO_LONG) or 0.0
        peak = peak_rss_mib(agent.pid)
        assert agent.stop() == 0
    finally:
        agent.close()
    return {"line_mib": mib, "skipped": skipped, "rss_before_mib": baseline, "peak_rss_mib": peak}


def burst(work: Path, lines: int) -> dict[str, float]:
    """Peak RSS and throughput while a burst of `lines` lines is written and caught up with."""
    log = work / "app.log"
    log.touch()
    agent = Agent(work, [str(log)]).start()
    try:
        baseline = peak_rss_mib(agent.pid)
        started = time.monotonic()
        for first in range(0, lines, 100_000):
            write_access_log(log, first, min(100_000, lines - first))
        written = time.monotonic() - started
        agent.wait_seqs(lines, timeout=1800)
        caught_up = time.monotonic() - started
        peak = peak_rss_mib(agent.pid)
        assert agent.stop() == 0
    finally:
        agent.close()
    return {
        "lines": lines,
        "write_s": written,
        "caught_up_s": caught_up,
        "lines_per_s": lines / caught_up,
        "rss_before_mib": baseline,
        "peak_rss_mib": peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="mode", required=True)
    ovl = sub.add_parser("overlong")
    ovl.add_argument("--mib", type=int, default=100, help="MiB of the line with no newline")
    bst = sub.add_parser("burst")
    bst.add_argument("--lines", type=int, default=2_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trackd-bench-") as tmp:
        if args.mode == "overlong":
            result = overlong(Path(tmp), args.mib)
        else:
            result = burst(Path(tmp), args.lines)
    report(f"memory-{args.mode}", result, width=16)


if __name__ == "__main__":
    main()
