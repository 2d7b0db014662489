"""SIGHUP config reload (SPEC §7): what a new config changes, and what of it applies live.

Sources are added, removed or changed live: files a source keeps matching stay open and are not
re-read, files its globs no longer match are closed (positions kept), new matches are opened; the
tailing timers and state collection apply at once; anything
else (identity, events, sink, privacy, metrics, log, state_dir) is reported as needing a restart
and keeps its running value.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import Config

#: Top-level keys a reload applies live (besides `sources`).
LIVE_KEYS = ("rotate_wait", "max_rotated_hold", "max_line_bytes")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    #: The config to run with from now on: the old one with the live changes applied.
    config: Config
    added: list[str]
    removed: list[str]
    changed: list[str]
    #: Top-level keys that differ but take effect only at the next restart.
    needs_restart: list[str]


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Compare two validated configs; the result keeps `old`'s value for every key that cannot
    change while running."""
    before = {s.name: s for s in old.sources}
    after = {s.name: s for s in new.sources}
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    changed = [n for n in after if n in before and before[n] != after[n]]
    update: dict[str, object] = {"sources": new.sources}
    for key in LIVE_KEYS:
        update[key] = getattr(new, key)
    update["state"] = old.state.model_copy(
        update={"forget_files_after": new.state.forget_files_after}
    )
    needs_restart = []
    for key in type(old).model_fields:
        if key in ("sources", "state", *LIVE_KEYS):
            continue
        if getattr(old, key) != getattr(new, key):
            needs_restart.append(key)
    if old.state.on_corrupt != new.state.on_corrupt:
        needs_restart.append("state.on_corrupt")
    config = old.model_copy(update=update)
    return ReloadPlan(config, added, removed, changed, needs_restart)
