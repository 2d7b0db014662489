"""Does the cost per line stay flat as the work grows? `trackd run --once` over the issue-12 corpus
(bench/gen.py `issue_log`) with more and more distinct visitors, and over the same lines split
into many files, next to the bare loop of the same file in the same run.

    .venv/bin/python bench/scale.py [--lines 1000000] [--visitors 1000,20000,100000,1000000]
                                    [--files 1,100] [--workers N]
    .venv/bin/python bench/scale.py --quick        # 200k lines; 1k, 20k and 200k visitors

Each row is one run on a fresh state (file sink, workers auto unless `--workers`): lines/s, CPU
µs/line of every process (trackd, its forkserver and workers), peak RSS, and the ratio to the bare
loop. The files rows use the 20k-visitor corpus cut into N files of consecutive lines (as a busy
host's vhosts or a day of hourly rotations look). Prints a table and writes
bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results
from gen import bare_loop, issue_log
from run_once import BARE, _reap, _subreaper, run_once


def split_files(log: Path, dest: Path, files: int) -> list[Path]:
    """`log` cut into `files` files of consecutive lines under `dest` (their paths). Streamed:
    a bench process holding the corpus would lend its RSS to the trackd it forks (ru_maxrss)."""
    dest.mkdir(parents=True, exist_ok=True)
    with log.open("rb") as fh:
        total = sum(1 for _ in fh)
    per = -(-total // files)
    paths = [dest / f"access-{i:04d}.log" for i in range(files)]
    with log.open("rb") as fh:
        for path in paths:
            with path.open("wb") as out:
                out.writelines(itertools.islice(fh, per))
    return paths


def run_files(paths: list[Path], work: Path, lines: int, workers: str | None) -> dict[str, Any]:
    """`run_once` over a glob matching `paths` (one source, every file)."""
    return run_once(paths[0].parent / "access-*.log", work, lines, workers)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--visitors", default="1000,20000,100000,1000000")
    ap.add_argument("--files", default="1,100")
    ap.add_argument("--workers", default=None, help="TRACKD_WORKERS for the runs (default: auto)")
    ap.add_argument("--quick", action="store_true", help="200k lines; 1k, 20k, 200k visitors")
    args = ap.parse_args()
    if args.quick:
        args.lines, args.visitors, args.files = 200_000, "1000,20000,200000", "1,20"
    visitors = [int(v) for v in args.visitors.split(",")]
    file_counts = [int(f) for f in args.files.split(",") if int(f) > 1]
    files_on = 20_000 if 20_000 in visitors else visitors[0]
    _subreaper()
    print(f"{args.lines:,} lines, {os.cpu_count()} CPUs, TRACKD_WORKERS={args.workers or 'auto'}")
    print(
        f"{'run':<22}{'bare l/s':>11}{'trackd l/s':>12}{'ratio':>7}{'CPU µs/line':>13}"
        f"{'peak RSS MiB':>14}"
    )
    rows: dict[str, Any] = {}

    def show(name: str, bare: float, result: dict[str, Any]) -> None:
        rows[name] = {"bare_lines_per_s": round(bare), **result}
        print(
            f"{name:<22}{bare:>11,.0f}{result['lines_per_s']:>12,.0f}"
            f"{result['lines_per_s'] / bare:>7.2f}{result['cpu_us_per_line']:>13.1f}"
            f"{result['peak_rss_mib']:>14.0f}",
            flush=True,
        )

    for count in visitors:
        with tempfile.TemporaryDirectory() as tmp:
            log = issue_log(Path(tmp) / "access.log", args.lines, visitors=count)
            bare = bare_loop(log, BARE)
            show(
                f"{count:,} visitors",
                bare,
                run_once(log, Path(tmp) / "run", args.lines, args.workers),
            )
            for files in file_counts if count == files_on else []:
                paths = split_files(log, Path(tmp) / f"files{files}", files)
                work = Path(tmp) / f"run-files{files}"
                show(f"  in {files} files", bare, run_files(paths, work, args.lines, args.workers))
                _reap(0.0)
    with contextlib.suppress(OSError):
        write_results("scale", lines=args.lines, runs=rows)


if __name__ == "__main__":
    main()
