"""End-to-end throughput of `trackd run --once` (read -> parse -> resolve -> encode -> commit ->
deliver into a file), next to a bare `for line in f: regex.match(line)` loop over the same file.

    .venv/bin/python bench/run_once.py [--lines 100000] [--repeat 3]

Prints a table and writes bench/results/run_once.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import file_sink_config
from gen import NGINX_FORMAT, access_log, bare_loop

BARE = re.compile(
    rb'(?P<ip>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<req>[^"]*)" (?P<status>\d+) '
    rb'(?P<bytes>\S+) "(?P<ref>[^"]*)" "(?P<ua>[^"]*)" "(?P<cookie>[^"]*)"'
)


def run_once(log: Path, work: Path) -> tuple[float, str]:
    work.mkdir(parents=True, exist_ok=True)
    cfg = file_sink_config(work, log, NGINX_FORMAT, start_at="beginning")
    lines = sum(1 for _ in log.open("rb"))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--once", "-c", str(cfg)],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - start
    return lines / elapsed, proc.stderr.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = access_log(Path(tmp) / "access.log", args.lines)
        bare = max(bare_loop(log, BARE) for _ in range(args.repeat))
        runs = [run_once(log, Path(tmp) / f"run{i}") for i in range(args.repeat)]
    best = max(r[0] for r in runs)
    print(f"{'measure':<44}{'lines/s':>12}")
    print(f"{'bare regex+groupdict+cookie split loop':<44}{bare:>12,.0f}")
    print(f"{'trackd run --once (end to end, best of ' + str(args.repeat) + ')':<44}{best:>12,.0f}")
    print(f"{'ratio trackd / bare':<44}{best / bare:>12.2f}")
    print(f"summary of the last run: {runs[-1][1]}")
    out = Path(__file__).resolve().parent / "results" / "run_once.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "lines": args.lines,
                "bare_lines_per_s": round(bare),
                "run_once_lines_per_s": [round(r[0]) for r in runs],
                "best_lines_per_s": round(best),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
