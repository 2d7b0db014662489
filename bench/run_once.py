"""End-to-end throughput of `trackd run --once` (read -> parse -> resolve -> encode -> commit ->
deliver into a file), next to a bare `for line in f: regex.match(line)` loop over the same file,
with the CPU it took (every process: trackd, its forkserver and workers) and the peak RSS.

    .venv/bin/python bench/run_once.py [--lines 1000000] [--corpus issue|bench|both] [--repeat 1]
    .venv/bin/python bench/run_once.py --quick        # 100k lines of each corpus, best of 1

Corpora (bench/gen.py): `issue`, the issue-12 yardstick (nginx combined + cookie, 20k visitors,
~77% page views, km_ni logins); `bench`, the friendlier one. Then the per-stage table of one
process (bench/stages.py). Prints tables and writes bench/results/run_once.json. Ratios are to the
bare loop of the same run: absolute figures drift on shared machines.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stages
from common import file_sink_config, measure, write_results
from gen import NGINX_FORMAT, access_log, bare_loop, issue_log

BARE = re.compile(
    rb'(?P<ip>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<req>[^"]*)" (?P<status>\d+) '
    rb'(?P<bytes>\S+) "(?P<ref>[^"]*)" "(?P<ua>[^"]*)" "(?P<cookie>[^"]*)"'
)
#: prctl(2): orphaned descendants (the forkserver and its workers) become our children, so their
#: CPU time adds to RUSAGE_CHILDREN once they are reaped.
PR_SET_CHILD_SUBREAPER = 36


def _subreaper() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap(timeout: float = 20.0) -> None:
    """Wait for every remaining descendant (the forkserver ends once trackd is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def run_once(log: Path, work: Path, lines: int, workers: str | None) -> dict[str, Any]:
    """One `run --once` of `log` into a fresh state: lines/s, CPU µs/line, peak RSS, summary."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = file_sink_config(work, log, NGINX_FORMAT, start_at="beginning")
    env = dict(os.environ)
    if workers is not None:
        env["TRACKD_WORKERS"] = workers
    _reap(0.0)
    run = measure(
        [sys.executable, "-m", "agent", "run", "--once", "-c", str(cfg)], env=env, reap=_reap
    )
    return {
        "lines_per_s": lines / float(run["wall_s"]),
        "cpu_us_per_line": float(run["cpu_s"]) / lines * 1e6,
        "peak_rss_mib": run["peak_process_rss_mib"],
        "peak_rss_all_processes_mib": run["peak_rss_mib"],
        "summary": str(run["stderr"]).strip().splitlines()[-1],
    }


def corpus(kind: str, path: Path, lines: int) -> Path:
    return issue_log(path, lines) if kind == "issue" else access_log(path, lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--corpus", choices=("issue", "bench", "both"), default="both")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workers", default=None, help="TRACKD_WORKERS for the runs (default: auto)")
    ap.add_argument("--stage-lines", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="100k lines, 50k for the stage table")
    args = ap.parse_args()
    if args.quick:
        args.lines, args.stage_lines, args.repeat = 100_000, 50_000, 1
    _subreaper()
    kinds = ("issue", "bench") if args.corpus == "both" else (args.corpus,)
    results: dict[str, Any] = {}
    build = subprocess.run(
        [sys.executable, "-m", "agent", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(
        f"{build}: {args.lines:,} lines, {os.cpu_count()} CPUs, TRACKD_WORKERS={args.workers or 'auto'}"
    )
    head = f"{'corpus':<8}{'bare l/s':>11}{'trackd l/s':>12}{'ratio':>7}{'CPU µs/line':>13}"
    print(head + f"{'peak RSS MiB':>14}")
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            log = corpus(kind, Path(tmp) / "access.log", args.lines)
            bare = max(bare_loop(log, BARE) for _ in range(args.repeat))
            runs = [
                run_once(log, Path(tmp) / f"run{i}", args.lines, args.workers)
                for i in range(args.repeat)
            ]
        best = max(runs, key=lambda r: r["lines_per_s"])
        results[kind] = {"bare_lines_per_s": round(bare), **best, "runs": runs}
        print(
            f"{kind:<8}{bare:>11,.0f}{best['lines_per_s']:>12,.0f}"
            f"{best['lines_per_s'] / bare:>7.2f}{best['cpu_us_per_line']:>13.1f}"
            f"{best['peak_rss_mib']:>14.0f}"
        )
    for kind in kinds:
        print(f"summary ({kind}): {results[kind]['summary']}")
    table = {}
    for kind in kinds:
        table[kind] = stages.run(args.stage_lines, kind)
    print(f"\nper stage, one process, {args.stage_lines:,} lines (µs/line)")
    print(f"{'stage':<36}" + "".join(f"{k:>10}" for k in kinds))
    for stage in table[kinds[0]]:
        print(f"{stage:<36}" + "".join(f"{table[k][stage]:>10.2f}" for k in kinds))
    with contextlib.suppress(OSError):
        write_results("run_once", lines=args.lines, corpora=results, stages=table)


if __name__ == "__main__":
    main()
