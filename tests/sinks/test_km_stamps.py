"""SecondAllocator (agent/sinks/kissmetrics.py): the `_t` of SPEC §4, assigned when the outbox row
is written, and its `km_seconds` rows (agent/state/kmseconds.py) in a real state database."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events.messages import (
    alias_message,
    encode,
    identify_message,
    page_message,
    track_message,
)
from agent.sinks.kissmetrics import MAX_SHIFT, WINDOW, SecondAllocator
from agent.sinks.km_wire import KmEncoder
from agent.state import kmseconds
from agent.state.db import ensure_state_dir, open_state, transaction

T0 = 1_795_000_000  # 2026-11-18T11:06:40Z


def iso(second: float) -> str:
    return (
        datetime.fromtimestamp(second, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def track(person: str, event: str, second: float, n: int = 0) -> bytes:
    return encode(track_message(f"m-{n}", iso(second), person, None, event, {}, {}))


def page(person: str, second: float) -> bytes:
    return encode(page_message("m-p", iso(second), None, person, None, {"path": "/"}, {}))


def identify(person: str, second: float) -> bytes:
    return encode(identify_message("m-i", iso(second), person, None, {"plan": "pro"}, {}))


def alias(user: str, previous: str, second: float) -> bytes:
    return encode(alias_message("m-a", iso(second), user, previous, {}))


def allocator() -> SecondAllocator:
    return SecondAllocator(KmEncoder("key-for-tests"))


def committed(alloc: SecondAllocator, bodies: list[bytes]) -> list[int | None]:
    """Stamp and commit, as the pipeline does when the transaction succeeds."""
    stamps = alloc.stamp(bodies)
    alloc.committed()
    return stamps


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    ensure_state_dir(str(tmp_path / "state"))
    c = open_state(str(tmp_path / "state"))
    yield c
    c.close()


def commit_through(
    conn: sqlite3.Connection, alloc: SecondAllocator, bodies: list[bytes]
) -> list[int | None]:
    """Stamp, save inside a real transaction, commit: the pipeline's order."""
    stamps = alloc.stamp(bodies)
    with transaction(conn):
        alloc.save(conn)
    alloc.committed()
    return stamps


class TestAssignment:
    def test_repeats_in_one_second_get_consecutive_seconds(self) -> None:
        """The same person, event and second three times → _t, _t+1, _t+2."""
        stamps = committed(allocator(), [track("bob", "Signed Up", T0 + 0.2, i) for i in range(3)])
        assert stamps == [T0, T0 + 1, T0 + 2]

    def test_first_message_keeps_the_floor_of_its_event_second(self) -> None:
        """A fractional event time is floored, as SPEC §4's `_t`."""
        assert committed(allocator(), [track("bob", "x", T0 + 0.999)]) == [T0]

    def test_names_collide_case_insensitively_after_cleaning(self) -> None:
        """`Signed Up`, `signed up` and `signed:up` are one Kissmetrics event: spread apart."""
        bodies = [track("bob", "Signed Up", T0), track("bob", "signed up", T0)]
        bodies.append(track("bob", "signed:up", T0))
        assert committed(allocator(), bodies) == [T0, T0 + 1, T0 + 2]

    def test_different_persons_do_not_collide(self) -> None:
        """Two people with the same event in the same second both keep that second."""
        stamps = committed(
            allocator(), [track("bob", "Signed Up", T0), track("amy", "Signed Up", T0)]
        )
        assert stamps == [T0, T0]

    def test_different_events_do_not_collide(self) -> None:
        """One person's two different events in one second both keep it."""
        assert committed(allocator(), [track("bob", "a", T0), track("bob", "b", T0)]) == [T0, T0]

    def test_set_requests_are_separate_from_events(self) -> None:
        """An identify (`/s`) and an event of one person in one second both keep it; two
        identifies are spread."""
        bodies = [track("bob", "Signed Up", T0), identify("bob", T0), identify("bob", T0)]
        assert committed(allocator(), bodies) == [T0, T0, T0 + 1]

    def test_page_uses_the_page_event_name(self) -> None:
        """A page collides with a track of the page event's name (`Viewed Page`)."""
        assert committed(allocator(), [page("d1", T0), track("d1", "viewed page", T0)]) == [
            T0,
            T0 + 1,
        ]

    def test_alias_gets_no_stamp(self) -> None:
        """An alias has no `_t`: its stamp is None and it takes no second."""
        alloc = allocator()
        assert committed(alloc, [alias("bob", "d1", T0)]) == [None]
        assert len(alloc) == 0

    def test_unusable_bodies_get_no_stamp(self) -> None:
        """Not JSON, not an object, or without an identity: None, never an exception."""
        no_person = encode(track_message("m", iso(T0), None, None, "x", {}, {}))
        assert committed(allocator(), [b"{nope", b"[1]", no_person]) == [None, None, None]

    def test_next_free_second_skips_taken_ones(self) -> None:
        """A second taken by an earlier event moves a later one past it, to the first gap."""
        alloc = allocator()
        committed(alloc, [track("bob", "e", T0 + 1), track("bob", "e", T0 + 3)])
        assert committed(
            alloc, [track("bob", "e", T0), track("bob", "e", T0), track("bob", "e", T0)]
        ) == [
            T0,
            T0 + 2,
            T0 + 4,
        ]


class TestCollapse:
    def test_exhausted_window_keeps_the_event_second_and_counts(self) -> None:
        """With T0..T0+300 all taken, the next repeat keeps T0 and `collapsed` counts it."""
        alloc = allocator()
        stamps = committed(alloc, [track("bob", "e", T0, i) for i in range(MAX_SHIFT + 2)])
        assert stamps[: MAX_SHIFT + 1] == list(range(T0, T0 + MAX_SHIFT + 1))
        assert stamps[-1] == T0
        assert alloc.collapsed == 1

    def test_collapse_is_counted_only_once_committed(self) -> None:
        """A rolled-back chunk's collapses are not counted (its messages are stamped again)."""
        alloc = allocator()
        committed(alloc, [track("bob", "e", T0, i) for i in range(MAX_SHIFT + 1)])
        alloc.stamp([track("bob", "e", T0)])
        alloc.rolled_back()
        assert alloc.collapsed == 0
        committed(alloc, [track("bob", "e", T0)])
        assert alloc.collapsed == 1


class TestTentative:
    def test_later_stamp_calls_see_tentative_seconds(self) -> None:
        """Two stamp calls before a commit never hand out the same second."""
        alloc = allocator()
        assert alloc.stamp([track("bob", "e", T0)]) == [T0]
        assert alloc.stamp([track("bob", "e", T0)]) == [T0 + 1]

    def test_rollback_frees_tentative_seconds(self) -> None:
        """After rolled_back(), the same messages get the same seconds again."""
        alloc = allocator()
        bodies = [track("bob", "e", T0, i) for i in range(3)]
        first = alloc.stamp(bodies)
        alloc.rolled_back()
        assert alloc.stamp(bodies) == first
        assert len(alloc) == 3

    def test_rollback_keeps_committed_seconds(self) -> None:
        """A rollback frees only the failed chunk's seconds, not earlier committed ones."""
        alloc = allocator()
        committed(alloc, [track("bob", "e", T0)])
        alloc.stamp([track("bob", "e", T0)])
        alloc.rolled_back()
        assert committed(alloc, [track("bob", "e", T0)]) == [T0 + 1]

    def test_committed_seconds_stay_taken(self) -> None:
        """After committed(), later chunks never reuse those seconds."""
        alloc = allocator()
        committed(alloc, [track("bob", "e", T0)])
        assert committed(alloc, [track("bob", "e", T0)]) == [T0 + 1]


class TestEviction:
    def test_assignments_older_than_an_hour_of_event_time_are_forgotten(self) -> None:
        """Once events are more than an hour (plus a bucket) newer, an old second is free again."""
        alloc = allocator()
        committed(alloc, [track("bob", "e", T0)])
        committed(alloc, [track("amy", "e", T0 + WINDOW + 120)])
        assert len(alloc) == 1
        assert committed(alloc, [track("bob", "e", T0)]) == [T0]

    def test_assignments_within_the_hour_are_kept(self) -> None:
        """Events less than an hour newer do not free a second."""
        alloc = allocator()
        committed(alloc, [track("bob", "e", T0)])
        committed(alloc, [track("amy", "e", T0 + WINDOW - 1)])
        assert committed(alloc, [track("bob", "e", T0)]) == [T0 + 1]

    def test_memory_is_bounded_by_the_window(self) -> None:
        """Ten hours of one event per second keep about an hour of assignments in memory."""
        alloc = allocator()
        for hour in range(10):
            committed(alloc, [track(f"p{s}", "e", T0 + hour * 3600 + s) for s in range(0, 3600, 1)])
        assert len(alloc) <= WINDOW + 2 * 60


class TestPersistence:
    def test_save_writes_rows_to_km_seconds(self, conn: sqlite3.Connection) -> None:
        """save() inside the transaction writes one row per tentative assignment."""
        alloc = allocator()
        commit_through(conn, alloc, [track("bob", "Signed Up", T0), track("bob", "signed up", T0)])
        assert sorted(kmseconds.load(conn, 0)) == [
            ("bob", "signed up", T0),
            ("bob", "signed up", T0 + 1),
        ]

    def test_restart_never_reuses_a_second(self, tmp_path: Path) -> None:
        """A new allocator that loads the state continues after the seconds already assigned."""
        state = str(tmp_path / "state")
        ensure_state_dir(state)
        conn = open_state(state)
        commit_through(conn, allocator(), [track("bob", "e", T0, i) for i in range(3)])
        conn.close()
        conn = open_state(state)
        alloc = allocator()
        alloc.load(conn)
        assert commit_through(conn, alloc, [track("bob", "e", T0)]) == [T0 + 3]
        conn.close()

    def test_rolled_back_transaction_leaves_no_rows(self, conn: sqlite3.Connection) -> None:
        """A chunk transaction that fails writes nothing; the allocator frees the seconds."""
        alloc = allocator()
        alloc.stamp([track("bob", "e", T0)])
        with pytest.raises(RuntimeError), transaction(conn):
            alloc.save(conn)
            raise RuntimeError("disk full")
        alloc.rolled_back()
        assert kmseconds.load(conn, 0) == []
        assert commit_through(conn, alloc, [track("bob", "e", T0)]) == [T0]

    def test_save_expires_rows_older_than_the_window(self, conn: sqlite3.Connection) -> None:
        """Rows an hour of event time older than the newest event are deleted by save()."""
        alloc = allocator()
        commit_through(conn, alloc, [track("bob", "e", T0)])
        commit_through(conn, alloc, [track("amy", "e", T0 + WINDOW + 1)])
        assert kmseconds.load(conn, 0) == [("amy", "e", T0 + WINDOW + 1)]

    def test_expire_returns_the_rows_deleted(self, conn: sqlite3.Connection) -> None:
        """kmseconds.expire counts what it forgot; INSERT OR IGNORE keeps duplicates out."""
        with transaction(conn):
            kmseconds.save(conn, [("a", "e", 1), ("a", "e", 1), ("a", "e", 5)])
            assert kmseconds.expire(conn, 5) == 1
        assert kmseconds.load(conn, 0) == [("a", "e", 5)]
        assert kmseconds.newest(conn) == 5


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["bob", "amy", "Bob"]),
                st.sampled_from(["Signed Up", "signed up", "signed:up", "Paid", "paid,"]),
                st.integers(min_value=0, max_value=30),
            ),
            max_size=60,
        ),
        st.integers(min_value=1, max_value=8),
    )
    def test_seconds_are_distinct_and_not_before_the_event(
        self, events: list[tuple[str, str, int]], chunk: int
    ) -> None:
        """For any sequence, each (person, clean name) gets distinct seconds >= its event's."""
        alloc = allocator()
        bodies = [track(p, n, T0 + s, i) for i, (p, n, s) in enumerate(events)]
        stamps: list[int | None] = []
        for i in range(0, len(bodies), chunk):
            stamps += committed(alloc, bodies[i : i + chunk])
        seen: dict[tuple[str, str], set[int]] = defaultdict(set)
        for (person, name, second), t in zip(events, stamps, strict=True):
            assert t is not None and t >= T0 + second
            key = (person, name.replace(",", " ").replace(":", " ").lower())
            assert t not in seen[key]
            seen[key].add(t)
