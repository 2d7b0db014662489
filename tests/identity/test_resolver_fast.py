"""`Resolver.hit`'s fast path (a cached, unshared device's repeat hit) decides exactly what the
general path decides: for any interleaving of hits (with and without km_ni and sessions), logins,
logouts, identity changes and cache evictions, a resolver with the fast path and one forced onto
the general path give the same attributions, events, counters and changed state."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.identity.graph import Changes
from agent.identity.memory_store import MemoryIdentityStore
from agent.identity.resolver import Attribution, Resolver
from agent.native import is_compiled
from tests.identity.test_properties import event

#: Besides B.40's: a device with a `~` (escaped: never the fast path), more people than the R4
#: breaker allows.
DEVICES = ["device0xyz", "dev~C3xyz"]
USERS = ["user0@x.com", "ann@x.com", "bob@x.com", "cy@x.com"]
SESSIONS = ["session0abc", "sessB2"]


step = st.one_of(
    event,  # SCENARIOS B.40's hits, logins and logouts
    st.tuples(
        st.just("hit"),
        st.none() | st.sampled_from(DEVICES),
        st.none() | st.sampled_from(USERS),
        st.none() | st.sampled_from(SESSIONS),
    ),
    st.tuples(
        st.just("change"), st.none(), st.sampled_from(USERS), st.none() | st.sampled_from(USERS)
    ),
    st.tuples(st.just("commit"), st.none(), st.none(), st.none()),
)
#: Gaps up to two days (R4 idle gaps, the once-a-day last_seen write); negative ones are late
#: hits (R6: decided by their own event time).
script = st.lists(
    st.tuples(step, st.integers(min_value=-7200, max_value=2 * 86400)), min_size=1, max_size=60
)


def _state(changes: Changes) -> tuple[Any, ...]:
    return (
        sorted(repr(d) for d in changes.devices),
        sorted(repr(n) for n in changes.named),
        sorted(repr(s) for s in changes.sessions),
        list(changes.aliases),
    )


def _play(fast_path: bool, steps: list[tuple[tuple[Any, ...], int]]) -> list[Any]:
    store = MemoryIdentityStore()
    # A tiny cache: devices are evicted and loaded again, through the store.
    resolver = Resolver(store, max_named_per_device=2, cache_size=2, fast_path=fast_path)
    out: list[Any] = []
    t = 1_700_000_000.0
    for (kind, device, user, session), gap in steps:
        t += gap
        if kind == "hit":
            out.append(resolver.hit(t, device, user, session))
        elif kind == "login":
            out.append(resolver.login(t, user, device, session))
        elif kind == "logout":
            out.append(resolver.logout(t, session, device))
        elif kind == "change" and session is not None:
            out.append(resolver.identity_change(t, user, session))
        elif kind == "commit":
            changes = resolver.take_changes()
            out.append(_state(changes))
            store.save(changes)
            resolver.end_batch()
    out.append(_state(resolver.take_changes()))
    out.append(sorted(resolver.counts.items()))
    return out


@pytest.mark.timeout(120)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script)
def test_fast_path_decides_as_the_general_path(
    steps: list[tuple[tuple[Any, ...], int]],
) -> None:
    """Same input, same attributions, aliases, counters and state, with or without the fast
    path."""
    assert _play(True, steps) == _play(False, steps)


@pytest.mark.timeout(30)
@pytest.mark.skipif(is_compiled(), reason="a compiled Resolver's methods cannot be wrapped")
def test_fast_path_serves_a_known_devices_repeat_hit() -> None:
    """A cached device's repeat hit (anonymous, or with the km_ni its epoch is bound to) is
    answered by the fast path, with the general path's attribution."""
    resolver = Resolver(MemoryIdentityStore())
    calls: list[Attribution | None] = []
    fast = resolver._repeat_hit

    def spy(dev: Any, ts: float, named: str | None) -> Attribution | None:
        calls.append(fast(dev, ts, named))
        return calls[-1]

    resolver._repeat_hit = spy  # type: ignore[method-assign]
    first = resolver.hit(100.0, "devA1xyz", None)
    assert calls == []  # not cached yet: the general path
    assert resolver.hit(160.0, "devA1xyz", None) == (first[0], [])
    assert calls == [Attribution("devA1xyz", None, "device", False)]
    resolver.hit(200.0, "devA1xyz", "ann@x.com")  # the login (R2 by cookie): general path
    assert calls[-1] is None
    again = resolver.hit(260.0, "devA1xyz", "ann@x.com")
    assert again == (Attribution("devA1xyz", "ann@x.com", "named", False), [])
    assert calls[-1] == again[0]
    assert resolver.hit(300.0, "devA1xyz", None)[0] == Attribution(
        "devA1xyz", "ann@x.com", "named", False
    )
