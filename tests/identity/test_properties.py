"""SCENARIOS.md B.40: for any interleaving of hits, logins and logouts over a few devices, users
and sessions (no identity_change rule in play), no alias ever links two named identities, every
alias links a device epoch to a named id, and replay is deterministic — through real runs."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.identity.world import World, aliases

DEVICES = [f"device{i}xyz" for i in range(3)]
USERS = [f"user{i}@x.com" for i in range(4)]
SESSIONS = [f"session{i}abc" for i in range(3)]
EPOCH = re.compile(r"^device\dxyz(~\d+)?$")

event = st.one_of(
    st.tuples(
        st.just("hit"),
        st.sampled_from(DEVICES),
        st.none() | st.sampled_from(USERS),
        st.none() | st.sampled_from(SESSIONS),
    ),
    st.tuples(
        st.just("login"),
        st.none() | st.sampled_from(DEVICES),
        st.sampled_from(USERS),
        st.none() | st.sampled_from(SESSIONS),
    ),
    st.tuples(
        st.just("logout"),
        st.none() | st.sampled_from(DEVICES),
        st.none(),
        st.none() | st.sampled_from(SESSIONS),
    ),
)
timeline = st.lists(
    st.tuples(event, st.integers(min_value=1, max_value=900)), min_size=1, max_size=30
)


def _play(
    work: Path, script: list[tuple[tuple[str, str | None, str | None, str | None], int]]
) -> None:
    w = World(work)
    t = 0.0
    for (kind, device, user, session), gap in script:
        t += gap
        if kind == "hit":
            assert device is not None
            w.hit(
                t, device=device, named=user.replace("@", "%40") if user else None, session=session
            )
        elif kind == "login":
            assert user is not None
            w.login(t + 0.5, user, device=device, session=session)
        else:
            w.logout(t + 0.5, device=device, session=session)
    w.run(in_process=True)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(timeline)
def test_random_interleavings_never_merge_two_people(
    script: list[tuple[tuple[str, str | None, str | None, str | None], int]],
) -> None:
    """Aliases only ever link one device epoch to one named id; replay gives the same bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _play(work, script)
        first = (work / "out.jsonl").read_bytes() if (work / "out.jsonl").exists() else b""
        from tests.helpers import read_messages

        messages = read_messages(work / "out.jsonl")
        bound: dict[str, set[str]] = defaultdict(set)
        for previous, user in aliases(messages):
            assert EPOCH.match(previous), f"alias from a non-device id {previous!r}"
            assert user in USERS, f"alias to a non-named id {user!r}"
            bound[previous].add(user)
        for epoch, users in bound.items():
            assert len(users) == 1, f"epoch {epoch} aliased to {sorted(users)}"
        for m in messages:
            if m["type"] in ("page", "track") and "anonymousId" in m and "userId" in m:
                # an epoch paired with a person is never aliased to anyone else
                assert bound.get(m["anonymousId"], {m["userId"]}) == {m["userId"]}
        shutil.rmtree(work / "state")
        if (work / "out.jsonl").exists():
            (work / "out.jsonl").unlink()
        World(work).run(in_process=True)
        again = (work / "out.jsonl").read_bytes() if (work / "out.jsonl").exists() else b""
        assert again == first
