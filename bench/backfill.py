"""`trackd backfill` over a gzipped history, next to a bare `zcat | python regex loop` over the
same file, measured in the same run: lines/s, CPU seconds (all processes: workers included),
peak RSS (summed over its processes, from /proc).

    .venv/bin/python bench/backfill.py [--lines 1000000] [--workers auto|0|N] [--files N]

`--files N` cuts the history into N archives of consecutive lines (`access.log-00000.gz` …, as
hourly rotations look) and backfills them all: a year of hourly logs is 8,760 files.

Prints a table and writes bench/results/backfill.json.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import file_sink_config, measure
from gen import NGINX_FORMAT, access_log
from run_once import BARE

#: The bare loop CONVENTIONS.md names, reading decompressed lines from stdin.
BARE_LOOP = f"""
import re, sys
rx = re.compile({BARE.pattern!r})
n = 0
for line in sys.stdin.buffer:
    m = rx.match(line)
    if m is not None:
        d = m.groupdict()
        d["cookie"].split(b"; ")
    n += 1
print(n)
"""


def cut(plain: Path, logs: Path, files: int, lines: int) -> list[str]:
    """`plain` as `files` gzipped archives of consecutive lines, oldest first (the bare loop
    reads the single archive of the same lines)."""
    per = -(-lines // files)
    out: list[str] = []
    with plain.open("rb") as src:
        for n in range(files):
            path = logs / f"access.log-{n:05d}.gz"
            with gzip.open(path, "wb", compresslevel=6) as dst:
                dst.writelines(itertools.islice(src, per))
            out.append(str(path))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--workers", default="auto", help="TRACKD_WORKERS (auto: trackd decides)")
    ap.add_argument("--files", type=int, default=1, help="archives to cut the history into")
    args = ap.parse_args()
    if shutil.which("zcat") is None:
        raise SystemExit("zcat not found")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain = access_log(root / "plain.log", args.lines)
        logs = root / "logs"
        logs.mkdir()
        packed = logs / "access.log.1.gz"
        with plain.open("rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        sizes = (plain.stat().st_size, packed.stat().st_size)
        targets = [str(packed)]
        if args.files > 1:
            targets = cut(plain, logs, args.files, args.lines)
            sizes = (sizes[0], sum(os.path.getsize(t) for t in targets))
        plain.unlink()

        bare = measure(
            ["/bin/sh", "-c", f'zcat "{packed}" | "{sys.executable}" -c "$BARE_LOOP"'],
            env={**os.environ, "BARE_LOOP": BARE_LOOP},
        )
        assert int(str(bare["stdout"]).strip()) == args.lines
        env = dict(os.environ)
        if args.workers != "auto":
            env["TRACKD_WORKERS"] = args.workers
        work = root / "work"
        work.mkdir()
        cfg = file_sink_config(work, packed.parent / "access.log", NGINX_FORMAT)
        trackd = measure(
            [sys.executable, "-m", "agent", "backfill", "-c", str(cfg), *targets], env=env
        )
        summary = str(trackd["stderr"]).strip().splitlines()
    rows = [("zcat | python bare regex loop", bare), ("trackd backfill", trackd)]
    print(
        f"{args.lines:,} lines, {sizes[0] / (1 << 20):.0f} MiB plain, "
        f"{sizes[1] / (1 << 20):.0f} MiB gzipped in {args.files:,} file(s); "
        f"{os.cpu_count()} cpus; workers={args.workers}"
    )
    print(f"{'measure':<34}{'lines/s':>12}{'wall s':>9}{'CPU s':>9}{'peak RSS MiB (sum)':>20}")
    for name, r in rows:
        wall = float(r["wall_s"])
        print(
            f"{name:<34}{args.lines / wall:>12,.0f}{wall:>9.2f}{float(r['cpu_s']):>9.2f}"
            f"{float(r['peak_rss_mib']):>20.0f}"
        )
    print(f"ratio trackd / bare: {float(bare['wall_s']) / float(trackd['wall_s']):.2f}")
    print("summary: " + next((s for s in summary if s.startswith("trackd backfill:")), "(none)"))
    out = Path(__file__).resolve().parent / "results" / "backfill.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "lines": args.lines,
                "plain_bytes": sizes[0],
                "gzip_bytes": sizes[1],
                "workers": args.workers,
                "files": args.files,
                **{
                    key: {
                        "lines_per_s": round(args.lines / float(r["wall_s"])),
                        "wall_s": round(float(r["wall_s"]), 2),
                        "cpu_s": round(float(r["cpu_s"]), 2),
                        "peak_rss_mib": round(float(r["peak_rss_mib"])),
                    }
                    for key, r in (("bare", bare), ("backfill", trackd))
                },
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
