"""How the SQLite store encodes a device's state: the shortcut for a plain anonymous device
writes the bytes the general encoding writes, and every blob reads back as the device."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.identity.graph import Device, Epoch
from agent.identity.sqlite_store import _device_blob, _device_from

times = st.floats(min_value=1.2e9, max_value=2.2e9, allow_nan=False) | st.integers(
    min_value=1_200_000_000, max_value=2_200_000_000
)
epochs = st.builds(
    Epoch,
    index=st.integers(min_value=0, max_value=50),
    started=times,
    named=st.none() | st.text(min_size=1, max_size=12),
    bound_at=st.none() | times,
    contested=st.booleans(),
)
devices = st.builds(
    Device,
    device=st.text(min_size=5, max_size=20),
    epochs=st.lists(epochs, min_size=1, max_size=3),
    shared_since=st.none() | times,
    recent_named=st.lists(st.tuples(times, st.text(min_size=1, max_size=8)), max_size=2),
    last_seen=times,
)
plain = st.builds(
    Device,
    device=st.text(min_size=5, max_size=20),
    epochs=st.builds(Epoch, index=st.integers(min_value=0, max_value=3), started=times).map(
        lambda e: [e]
    ),
    last_seen=times,
)


def general(dev: Device) -> bytes:
    """The device's state as one JSON object: epochs, shared since, recent logins."""
    return orjson.dumps(
        {
            "e": [[e.index, e.started, e.named, e.bound_at, e.contested] for e in dev.epochs],
            "s": dev.shared_since,
            "r": dev.recent_named,
        }
    )


@settings(max_examples=800, deadline=None)
@given(dev=st.one_of(plain, devices))
def test_the_blob_is_the_general_encoding(dev: Device) -> None:
    """Plain or not, the blob is byte for byte the general encoding (old rows read the same)."""
    assert _device_blob(dev) == general(dev)


@settings(max_examples=400, deadline=None)
@given(dev=st.one_of(plain, devices))
def test_a_blob_reads_back_as_the_device(dev: Device) -> None:
    """Epochs, shared mark and recent logins survive the round trip."""
    back = _device_from(dev.device, _device_blob(dev), dev.last_seen)
    assert back.epochs == dev.epochs
    assert back.shared_since == dev.shared_since
    assert back.recent_named == [(float(t), n) for t, n in dev.recent_named]
