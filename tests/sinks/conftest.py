"""Fixtures the sink tests share: the anyio backend, the loopback receiver, a TLS certificate, a
state database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.state.db import open_state
from tests.receiver import Receiver
from tests.sinks.support import CertPair, make_self_signed


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio only (the agent's event loop)."""
    return "asyncio"


@pytest.fixture
def rx() -> Iterator[Receiver]:
    """A running tests/receiver.py `Receiver` on 127.0.0.1, stopped after the test."""
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    """A self-signed certificate for 127.0.0.1 and localhost, made with openssl (else
    `cryptography`); the tests that need it are skipped when neither is there."""
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    """A fresh state database in `tmp_path/state` (the file sink tests' committed lengths)."""
    (tmp_path / "state").mkdir()
    return open_state(str(tmp_path / "state"))
