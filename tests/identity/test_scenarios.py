"""SCENARIOS.md section B (31-39), each through a real `trackd run --once` on log files."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.identity.world import World, aliases, log_events, pages

D, D2 = "devAAAAAAAA", "devBBBBBBBB"


def test_31_anonymous_then_login(tmp_path: Path) -> None:
    """Hits before an app login stay anonymous (person D); later ones carry N; one alias(D, N)."""
    w = World(tmp_path)
    before = [w.hit(t, device=D) for t in (0, 5, 10)]
    w.login(20.5, "n@x.com", device=D)
    after = [w.hit(t, device=D) for t in (30, 40)]
    messages, _ = w.run(in_process=True)
    by_path = pages(messages)
    for p in before:
        assert by_path[p]["anonymousId"] == D and "userId" not in by_path[p]
    for p in after:
        assert (by_path[p]["anonymousId"], by_path[p]["userId"]) == (D, "n@x.com")
    assert aliases(messages) == [(D, "n@x.com")]


def test_32_login_joined_by_session_cookie_hit_after(tmp_path: Path) -> None:
    """The app login names only the session; the hit carrying device + session 2 s later joins
    them: later hits are N's and exactly one alias(D, N) is sent."""
    w = World(tmp_path)
    early = w.hit(0, device=D)
    w.login(10.2, "n@x.com", session="sess123456")
    joined = w.hit(12, device=D, session="sess123456")
    later = w.hit(30, device=D)
    messages, _ = w.run(in_process=True)
    by_path = pages(messages)
    assert "userId" not in by_path[early]
    assert by_path[joined]["userId"] == "n@x.com" and by_path[later]["userId"] == "n@x.com"
    assert aliases(messages) == [(D, "n@x.com")]


def test_32_login_joined_by_session_cookie_hit_before(tmp_path: Path) -> None:
    """The variant: the hit carrying device + session comes 2 s before the login."""
    w = World(tmp_path)
    w.hit(8, device=D, session="sess123456")
    w.login(10.2, "n@x.com", session="sess123456")
    later = w.hit(30, device=D)
    messages, _ = w.run(in_process=True)
    assert pages(messages)[later]["userId"] == "n@x.com"
    assert aliases(messages) == [(D, "n@x.com")]


def test_33_shared_computer_gets_a_new_epoch(tmp_path: Path) -> None:
    """N1 then N2 log in on one device without a logout: no alias between N1 and N2 or D and
    N2; D~1 is aliased to N2 and carries N2's later hits; one conflict is counted."""
    w = World(tmp_path)
    w.login(1.5, "n1@x.com", device=D)
    h1 = w.hit(10, device=D)
    w.login(20.5, "n2@x.com", device=D)
    h2 = w.hit(30, device=D)
    messages, stderr = w.run()
    assert aliases(messages) == [(D, "n1@x.com"), (f"{D}~1", "n2@x.com")]
    by_path = pages(messages)
    assert (by_path[h1]["anonymousId"], by_path[h1]["userId"]) == (D, "n1@x.com")
    assert (by_path[h2]["anonymousId"], by_path[h2]["userId"]) == (f"{D}~1", "n2@x.com")
    assert by_path[h2]["context"]["identity"]["contested"] is True
    assert "1 conflicts" in stderr


def test_34_logout_then_anonymous_then_new_login(tmp_path: Path) -> None:
    """After a logout the device is in epoch D~1 (anonymous); the next login aliases D~1,
    never D again."""
    w = World(tmp_path)
    w.login(1.5, "n1@x.com", device=D, session="s1aaaaaa")
    w.logout(10.5, session="s1aaaaaa")
    anon = w.hit(20, device=D)
    w.login(30.5, "n2@x.com", device=D)
    h2 = w.hit(40, device=D)
    messages, stderr = w.run()
    by_path = pages(messages)
    assert by_path[anon]["anonymousId"] == f"{D}~1" and "userId" not in by_path[anon]
    assert (by_path[h2]["anonymousId"], by_path[h2]["userId"]) == (f"{D}~1", "n2@x.com")
    assert aliases(messages) == [(D, "n1@x.com"), (f"{D}~1", "n2@x.com")]
    assert "0 conflicts" in stderr


def test_35_kiosk_is_marked_shared_at_the_fourth_login(tmp_path: Path) -> None:
    """Five people log in on one kiosk within a day: it is shared from the 4th distinct login;
    later hits without a live session or km_ni are never attributed to a person."""
    w = World(tmp_path)
    for i in range(5):
        w.login(100.5 * (i + 1), f"user{i}@x.com", device=D)
    late = w.hit(1000, device=D)
    with_cookie = w.hit(1010, device=D, named="user4%40x.com")
    messages, _ = w.run(in_process=True)
    by_path = pages(messages)
    assert "userId" not in by_path[late]
    assert by_path[late]["context"]["identity"]["contested"] is True
    assert by_path[with_cookie]["userId"] == "user4@x.com"
    users = [u for _, u in aliases(messages)]
    assert users == [f"user{i}@x.com" for i in range(5)]
    epochs = [p for p, _ in aliases(messages)]
    assert len(set(epochs)) == 5  # every person got an epoch of their own


def test_36_junk_ids_never_become_people(tmp_path: Path) -> None:
    """Placeholder cookies and a `guest` login make no person and no alias; they are counted."""
    w = World(tmp_path)
    junk = ["-", "undefined", "%22abc%22", "x" * 300]
    paths = [w.hit(i, raw_cookie=f"km_ai={v}; km_ni=null") for i, v in enumerate(junk)]
    w.login(10.5, "guest", device=D)
    messages, stderr = w.run()
    by_path = pages(messages)
    for p in paths:
        assert by_path[p]["anonymousId"].startswith("anon-") and "userId" not in by_path[p]
    assert aliases(messages) == []
    assert not [m for m in messages if m["type"] == "identify"]
    junk = {e["kind"]: e["count"] for e in log_events(stderr, "identity_junk")}
    assert junk == {"device": 4, "named": 5}  # four km_ni=null and the `guest` login
    skipped = [(e["rule"], e["reason"]) for e in log_events(stderr, "rule_skipped")]
    assert skipped == [("login", "junk_user")]


def test_37_cookieless_hits_get_one_derived_id_per_day(tmp_path: Path) -> None:
    """Same IP and agent within a day share a derived id; the next day gets another; derived
    ids are never aliased."""
    w = World(tmp_path)
    a = w.hit(0)
    b = w.hit(3600)
    c = w.hit(86400)
    other = w.hit(10, ip="198.51.100.1")
    messages, _ = w.run(in_process=True)
    by_path = pages(messages)
    assert by_path[a]["anonymousId"] == by_path[b]["anonymousId"]
    assert by_path[a]["anonymousId"] != by_path[c]["anonymousId"]
    assert by_path[a]["anonymousId"] != by_path[other]["anonymousId"]
    assert all(by_path[p]["anonymousId"].startswith("anon-") for p in (a, b, c, other))
    assert aliases(messages) == []


def test_38_replay_into_fresh_state_is_byte_identical(tmp_path: Path) -> None:
    """The same logs into fresh state give the same bytes (same persons, aliases, ids, keys)."""
    w = World(tmp_path)
    w.hit(0, device=D)
    w.login(5.5, "n1@x.com", device=D, session="s1aaaaaa")
    w.hit(6, device=D, session="s1aaaaaa")
    w.login(9.5, "n2@x.com", device=D)
    w.hit(12)
    w.hit(13, device=D2, named="n3%40x.com")
    w.run()
    first = (tmp_path / "out.jsonl").read_bytes()
    shutil.rmtree(tmp_path / "state")
    (tmp_path / "out.jsonl").unlink()
    w.run()
    assert (tmp_path / "out.jsonl").read_bytes() == first
    assert first.count(b"\n") == 8  # 4 pages, 2 identifies, 2 aliases


def test_39_late_events_resolve_by_history_and_never_rewrite(tmp_path: Path) -> None:
    """A late login only adds its alias; committed messages stay as they were; late hits resolve
    by the binding history at their own time."""
    w = World(tmp_path)
    w.hit(0, device=D)
    w.hit(30, device=D)
    first, _ = w.run()
    assert aliases(first) == [] and all("userId" not in m for m in first)
    w.login(20.5, "n@x.com", device=D)
    before = w.hit(10, device=D)  # written late, but from before the login
    after = w.hit(25, device=D)
    messages, _ = w.run(in_process=True)
    assert messages[: len(first)] == first  # nothing rewritten
    by_path = pages(messages)
    assert "userId" not in by_path[before]
    assert by_path[after]["userId"] == "n@x.com"
    assert aliases(messages) == [(D, "n@x.com")]


def test_identity_change_links_two_named_ids(tmp_path: Path) -> None:
    """R7: an email change sends alias(old, new) and later hits naming the old id resolve to
    the new one."""
    w = World(tmp_path)
    w.login(1.5, "old@x.com", device=D)
    w.change(10.5, "old@x.com", "new@x.com")
    h = w.hit(20, device=D)
    messages, _ = w.run(in_process=True)
    assert aliases(messages) == [(D, "old@x.com"), ("old@x.com", "new@x.com")]
    assert pages(messages)[h]["userId"] == "new@x.com"
