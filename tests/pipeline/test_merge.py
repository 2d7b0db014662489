"""The k-way merge of `run --once` and backfill (SPEC §1.4): with per-file floors it starts a
file only once the merge reaches it, and still gives `heapq.merge`'s order record for record."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pipeline.order import START_AHEAD, merged

Rec = tuple[float, str, int, int]

# Key steps of a quarter of START_AHEAD: files overlap, tie, and start late or ahead of time.
STEP = START_AHEAD / 4
# A file: its records' sort keys, in file order.
keys = st.lists(st.integers(min_value=0, max_value=60).map(lambda k: k * STEP), max_size=12)


def records(file_id: int, stream_keys: list[float]) -> list[Rec]:
    return [(k, "web", 100 * i, file_id) for i, k in enumerate(stream_keys)]


@settings(max_examples=300, deadline=None)
@given(
    files=st.lists(st.tuples(keys, st.booleans(), st.integers(0, 3)), min_size=2, max_size=8),
    sort_each=st.booleans(),
)
def test_the_order_is_heapq_merges_with_any_valid_floors(
    files: list[tuple[list[float], bool, int]], sort_each: bool
) -> None:
    """Whatever the files (sorted or not within a file, ties across files) and whatever valid
    floors (each file's first key, lower, or -inf), the lazy merge yields exactly what
    `heapq.merge` over every file does."""
    streams = [records(i, sorted(k) if sort_each else k) for i, (k, _, _) in enumerate(files)]
    floors = []
    for recs, (_, unknown, below) in zip(streams, files, strict=True):
        if unknown or not recs:
            floors.append(-math.inf)
        else:
            floors.append(recs[0][0] - below * STEP)
    want = list(heapq.merge(*[iter(s) for s in streams]))
    got = list(merged([iter(s) for s in streams], floors))  # type: ignore[arg-type]
    assert got == want


def test_a_file_starts_only_when_the_merge_reaches_its_floor() -> None:
    """Ten files of consecutive hours: while the merge yields one hour, at most that file and
    the next are started (a year of hourly logs holds a file or two open, not thousands)."""
    started: list[int] = []
    live: set[int] = set()
    most = 0

    def stream(i: int) -> Iterator[Any]:
        nonlocal most
        started.append(i)
        live.add(i)
        most = max(most, len(live))
        for minute in range(60):
            yield (i * 3600.0 + minute * 60 + 1, "web", minute, i)
        live.discard(i)

    floors = [i * 3600.0 for i in range(10)]
    out = list(merged([stream(i) for i in range(10)], floors))
    assert [r[0] for r in out] == sorted(r[0] for r in out)
    assert len(out) == 600
    assert started == list(range(10))
    assert most <= 2
