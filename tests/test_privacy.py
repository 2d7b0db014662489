"""Privacy and identity options end to end (SPEC §1.3, §8): cookieless: drop, hash_named,
optout_cookie, ip modes, redact_params."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.helpers import TEST_SECRET, read_messages, run_trackd
from tests.identity.world import World, pages

D = "devAAAAAAAA"


def test_cookieless_drop_emits_nothing_for_cookieless_hits(tmp_path: Path) -> None:
    """With identity.cookieless: drop, a hit without usable cookies produces no message."""
    w = World(tmp_path, cookieless="drop")
    kept = w.hit(0, device=D)
    dropped = w.hit(1)
    messages, _ = w.run()
    assert kept in pages(messages) and dropped not in pages(messages)


def test_hash_named_sends_a_salted_hash_and_keeps_aliases(tmp_path: Path) -> None:
    """privacy.hash_named: sha256 replaces every named id by sha256(secret + id), in userId
    and aliases alike, so joins still work; the plain id never leaves."""
    w = World(tmp_path)
    w.login(0.5, "alice@x.com", device=D)
    h = w.hit(5, device=D)
    cfg = w.write()
    cfg.write_text(cfg.read_text() + "privacy: {hash_named: sha256}\n")
    proc = run_trackd("run", "--once", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    out = (tmp_path / "out.jsonl").read_text()
    hashed = hashlib.sha256(TEST_SECRET.encode() + b"alice@x.com").hexdigest()
    messages = read_messages(tmp_path / "out.jsonl")
    assert pages(messages)[h]["userId"] == hashed
    assert [m["userId"] for m in messages if m["type"] == "alias"] == [hashed]
    assert "alice@x.com" not in out


def test_optout_cookie_drops_the_hit(tmp_path: Path) -> None:
    """A hit carrying privacy.optout_cookie emits nothing."""
    w = World(tmp_path)
    h = w.hit(0, raw_cookie=f"km_ai={D}; km_optout=1")
    ok = w.hit(1, device=D)
    cfg = w.write()
    cfg.write_text(cfg.read_text() + "privacy: {optout_cookie: km_optout}\n")
    assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
    found = pages(read_messages(tmp_path / "out.jsonl"))
    assert h not in found and ok in found


def test_ip_is_truncated_by_default_and_redacted_params_never_leave(tmp_path: Path) -> None:
    """context.ip is the /24 by default; `token` and `email` query values are replaced."""
    w = World(tmp_path)
    h = w.hit(0, device=D, ip="198.51.100.77", path="/reset?token=abc123&email=a%40b.c&x=1")
    messages, _ = w.run()
    page = next(m for m in messages if m["type"] == "page")
    assert page["context"]["ip"] == "198.51.100.0"
    assert page["properties"]["search"] == "?token=REDACTED&email=REDACTED&x=1"
    assert h.startswith("/reset")
    raw = (tmp_path / "out.jsonl").read_text()
    assert "abc123" not in raw and "198.51.100.77" not in raw
