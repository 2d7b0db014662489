"""The shipped systemd unit: the directives SPEC §7 requires, and its exposure score."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "trackd.service"


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_has_the_required_directives() -> None:
    """Type=notify, check before start and reload, no restart on exit 3, a watchdog, state dir,
    absolute paths, the API key credential, and the hardening SPEC §7 lists."""
    d = _directives()
    assert d["Type"] == ["notify"]
    assert d["ExecStart"] == ["/opt/trackd/bin/trackd -c /etc/trackd/trackd.yaml run"]
    assert d["ExecStartPre"][0].endswith(" check")
    assert d["ExecReload"][0].endswith(" check") and "kill -HUP $MAINPID" in d["ExecReload"][1]
    assert d["Restart"] == ["on-failure"] and d["RestartPreventExitStatus"] == ["3"]
    assert d["WatchdogSec"] == ["30s"] and d["StateDirectory"] == ["trackd"]
    assert int(d["TimeoutStopSec"][0].rstrip("s")) > 10  # above the default shutdown_timeout
    assert d["SupplementaryGroups"] == ["adm"]
    # The root-only file systemd/install.sh writes; trackd reads it as $CREDENTIALS_DIRECTORY/api_key.
    assert d["LoadCredential"] == ["api_key:/etc/trackd/credentials/api_key"]
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "UMask": "077",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "ProtectKernelTunables": "yes",
    }.items():
        assert d[key][0] == value, key
    assert "@system-service" in d["SystemCallFilter"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_offline_exposure_is_at_most_2() -> None:
    """`systemd-analyze security --offline=yes` rates the unit 2.0 or better."""
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert m is not None, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0
