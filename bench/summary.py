"""One table of the figures the other benches wrote (bench/results/*.json), next to issue 12's
targets, each marked met or not: what `make bench` ends with.

    .venv/bin/python bench/summary.py [--results bench/results]

A bench that did not run (no results file yet, or nginx missing for the delivery bench) shows
as "not measured". Throughputs come with their ratio to the bare loop of the same run: absolute
figures drift on shared machines, ratios less.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

RESULTS = Path(__file__).resolve().parent / "results"
#: issue 12's bar and goal for `run --once` and backfill, lines/s on 2 cores.
BAR, GOAL = 136_000, 250_000
MAX_CPU_US = 15.0
MAX_TIMES_BARE = 3.0
MAX_RSS_MIB = 300e6 / 2**20  # 300 MB
#: The team brief's delivery targets to a local receiver (issue 12 asks for the figures only).
KM_MIN, SEGMENT_MIN = 2_000, 50_000


class Row(NamedTuple):
    what: str
    figure: str
    target: str
    #: True met, False not met, None nothing to judge (not measured, or no target).
    met: bool | None


def load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def _k(n: float) -> str:
    return f"{n / 1000:,.1f}k"


def throughput_rows(run_once: dict[str, Any] | None, backfill: dict[str, Any] | None) -> list[Row]:
    rows: list[Row] = []
    issue = (run_once or {}).get("corpora", {}).get("issue")
    if issue is None:
        rows.append(Row("run --once, issue corpus", "not measured", f">= {_k(BAR)} lines/s", None))
    else:
        lps, bare = issue["lines_per_s"], issue["bare_lines_per_s"]
        lines = run_once["lines"] if run_once else 0
        rows += [
            Row(
                f"run --once, issue corpus ({lines:,} lines)",
                f"{_k(lps)} lines/s ({lps / GOAL:.0%} of the {_k(GOAL)} goal)",
                f">= {_k(BAR)} lines/s",
                lps >= BAR,
            ),
            Row(
                "  time against the bare loop, same run",
                f"{bare / lps:.1f}x (bare {_k(bare)} lines/s)",
                f"<= {MAX_TIMES_BARE:.0f}x",
                bare / lps <= MAX_TIMES_BARE,
            ),
            Row(
                "  CPU per line, all processes",
                f"{issue['cpu_us_per_line']:.1f} us",
                f"<= {MAX_CPU_US:.0f} us",
                issue["cpu_us_per_line"] <= MAX_CPU_US,
            ),
            Row("  peak RSS, largest process", f"{issue['peak_rss_mib']:.0f} MiB", "", None),
        ]
    if backfill is None:
        rows.append(Row("backfill, gzipped history", "not measured", f">= {_k(BAR)} lines/s", None))
    else:
        b, bare = backfill["backfill"], backfill["bare"]
        rows += [
            Row(
                f"backfill, {backfill['lines']:,} lines gzipped in {backfill['files']} file(s)",
                f"{_k(b['lines_per_s'])} lines/s, {bare['lines_per_s'] / b['lines_per_s']:.1f}x "
                "the bare zcat loop",
                f">= {_k(BAR)} lines/s",
                b["lines_per_s"] >= BAR,
            ),
            Row(
                "  CPU per line, all processes",
                f"{b['cpu_s'] / backfill['lines'] * 1e6:.1f} us",
                f"<= {MAX_CPU_US:.0f} us",
                b["cpu_s"] / backfill["lines"] * 1e6 <= MAX_CPU_US,
            ),
            Row("  peak RSS, all processes summed", f"{b['peak_rss_mib']:.0f} MiB", "", None),
        ]
    return rows


def scale_rows(scale: dict[str, Any] | None, identity: dict[str, Any] | None) -> list[Row]:
    rows: list[Row] = []
    runs = (scale or {}).get("runs", {})
    visitors = {k: v for k, v in runs.items() if k.endswith("visitors")}
    if len(visitors) >= 2:
        costs = [v["cpu_us_per_line"] for v in visitors.values()]
        spread = max(costs) / min(costs)
        counts = " / ".join(k.removesuffix(" visitors") for k in visitors)
        rows.append(
            Row(
                f"CPU per line at {counts} visitors",
                " / ".join(f"{c:.1f}" for c in costs) + f" us ({spread:.2f}x spread)",
                "flat (<= 1.10x, this table's reading)",
                spread <= 1.10,
            )
        )
    files = {k.strip(): v for k, v in runs.items() if "files" in k}
    base = runs.get("20,000 visitors")  # scale.py cuts its 20k-visitor corpus into files
    for name, run in files.items():
        if base is not None:
            ratio = run["cpu_us_per_line"] / base["cpu_us_per_line"]
            rows.append(
                Row(
                    f"  the same lines {name}",
                    f"{run['cpu_us_per_line']:.1f} us per line ({ratio:.2f}x one file)",
                    "flat (<= 1.10x)",
                    ratio <= 1.10,
                )
            )
    if not rows:
        rows.append(Row("CPU per line by distinct visitors", "not measured", "flat", None))
    if identity is None:
        rows.append(Row("identity corpus", "not measured", "", None))
    else:
        v = identity["visitors"]
        rows += [
            Row(
                f"identity corpus, {v:,} visitors, {identity['hits']:,} hits",
                f"{identity['hits_per_s']:,} hits/s, {identity['wrong_merges']} wrong merges",
                "0 wrong merges",
                identity["wrong_merges"] == 0,
            ),
        ]
        summed = identity.get("peak_rss_all_processes_mib")
        shown = f"{identity['peak_rss_mib']:.0f} MiB largest process" + (
            f", {summed:.0f} MiB all processes summed" if summed is not None else ""
        )
        judged = summed if summed is not None else identity["peak_rss_mib"]
        rows.append(
            Row(
                "  peak RSS",
                shown,
                f"<= 300 MB ({MAX_RSS_MIB:.0f} MiB) at 1M visitors",
                judged <= MAX_RSS_MIB if v >= 1_000_000 else None,
            )
        )
    return rows


def delivery_rows(deliver: dict[str, Any] | None) -> list[Row]:
    rows: list[Row] = []
    sinks = (deliver or {}).get("sinks", {})
    for name, floor in (("kissmetrics", KM_MIN), ("segment", SEGMENT_MIN)):
        got = sinks.get(name)
        if not got:
            rows.append(Row(f"delivery to a local nginx, {name}", "not measured", "", None))
            continue
        best = max(got["results"], key=lambda r: r["messages_per_s"])
        rows.append(
            Row(
                f"delivery to a local nginx, {name}",
                f"{best['messages_per_s']:,} messages/s, {best['cpu_us_per_message']:.0f} us CPU "
                f"each (max_events {best['max_events']})",
                f">= {floor:,} messages/s (brief)",
                best["messages_per_s"] >= floor,
            )
        )
    return rows


#: Targets of issue 12 that `make bench` does not measure, and where they are measured.
ELSEWHERE = (
    Row("run --once against Matomo's importer", "not measured (no checkout)", ">= 6x", None),
    Row("live tail latency p99 at 10k lines/s", "bench/tailing.py latency", "<= 250 ms", None),
    Row("idle CPU with 1,000 idle files", "bench/tailing.py idle --files 1000", "~0", None),
)


def table(results: Path) -> list[Row]:
    return [
        *throughput_rows(load(results, "run_once"), load(results, "backfill")),
        *scale_rows(load(results, "scale"), load(results, "identity")),
        *delivery_rows(load(results, "deliver")),
        *ELSEWHERE,
    ]


def render(rows: list[Row]) -> str:
    mark = {True: "met", False: "NOT MET", None: ""}
    w0 = max(len(r.what) for r in rows)
    w1 = max(len(r.figure) for r in rows)
    w2 = max(len(r.target) for r in rows)
    lines = [f"{'what':<{w0}}  {'figure':<{w1}}  {'target':<{w2}}  status"]
    lines += [f"{r.what:<{w0}}  {r.figure:<{w1}}  {r.target:<{w2}}  {mark[r.met]}" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    print(render(table(args.results)))
    written = sorted(args.results.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if written:
        print(
            f"from {args.results}: "
            + ", ".join(
                f"{p.name} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(p.stat().st_mtime))})"
                for p in written
            )
        )


if __name__ == "__main__":
    main()
