"""pytest configuration: the `slow` marker's scale and shared fixtures."""

from __future__ import annotations

import os

import pytest

#: `make test` runs slow tests at CI scale; `make test-full` at full scale.
SLOW_SCALE = os.environ.get("TRACKD_SLOW_SCALE", "ci")


def scaled(ci: int, full: int) -> int:
    """An iteration count: `ci` under `make test`, `full` under `make test-full`."""
    return full if SLOW_SCALE == "full" else ci


@pytest.fixture(autouse=True)
def _no_inherited_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a TRACKD_CONFIG or systemd credentials from the developer's shell."""
    monkeypatch.delenv("TRACKD_CONFIG", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
