"""`make bench`'s last table (bench/summary.py): each figure against issue 12's target, marked
met or not, and a bench that has not run shown as not measured rather than guessed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.summary import table

pytestmark = pytest.mark.timeout(10)


def write(results: Path, name: str, data: object) -> None:
    (results / f"{name}.json").write_text(json.dumps(data))


def test_figures_are_judged_against_the_targets(tmp_path: Path) -> None:
    """run --once under the bar is not met on every count; Kissmetrics over 2,000/s is met,
    Segment under 50,000/s is not."""
    write(
        tmp_path,
        "run_once",
        {
            "lines": 1_000_000,
            "corpora": {
                "issue": {
                    "lines_per_s": 66_000,
                    "bare_lines_per_s": 600_000,
                    "cpu_us_per_line": 26.0,
                    "peak_rss_mib": 153,
                }
            },
        },
    )
    result = {"max_events": 500, "messages_per_s": 4_500, "cpu_us_per_message": 240}
    segment = {"max_events": 500, "messages_per_s": 40_000, "cpu_us_per_message": 20}
    write(
        tmp_path,
        "deliver",
        {"sinks": {"kissmetrics": {"results": [result]}, "segment": {"results": [segment]}}},
    )
    rows = {r.what.strip(): r for r in table(tmp_path)}
    assert rows["run --once, issue corpus (1,000,000 lines)"].met is False
    assert rows["time against the bare loop, same run"].figure.startswith("9.1x")
    assert rows["CPU per line, all processes"].met is False
    assert rows["delivery to a local nginx, kissmetrics"].met is True
    assert rows["delivery to a local nginx, segment"].met is False


def test_a_bench_that_did_not_run_is_not_measured(tmp_path: Path) -> None:
    """With no results at all, every row says not measured (or which bench measures it) and
    none claims met or not met."""
    rows = table(tmp_path)
    assert rows
    assert all(r.met is None for r in rows)
    assert all(r.figure.startswith(("not measured", "bench/")) for r in rows)
