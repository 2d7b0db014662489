"""The pipeline's counters: metrics, `status` and the `run --once` summary read them (counts,
never values). Worker processes keep their own and the parent absorbs them (`workers.py`)."""

from __future__ import annotations

from collections import Counter, deque

from agent.pipeline.prepare import PrepareStats


class PipelineStats:
    """Counters the pipeline keeps; metrics and summaries read them (never values, only counts)."""

    def __init__(self) -> None:
        self.lines: Counter[str] = Counter()
        self.skipped: Counter[tuple[str, str]] = Counter()
        self.messages: Counter[str] = Counter()
        self.rule_skipped: Counter[tuple[str, str]] = Counter()
        #: Page views by how their person was decided: named, device, derived.
        self.resolutions: Counter[str] = Counter()
        #: App lines that continue the entry before them (tracebacks): not records, not errors.
        self.continuations: Counter[str] = Counter()
        #: What the preparing stage counted (junk ids, opt-outs, too-old events).
        self.prepare = PrepareStats()
        self.enqueued = 0
        self.commits = 0
        #: A bounded sample of skipped lines per source, for `check` and debug logs.
        self.samples: dict[str, deque[tuple[str, str]]] = {}

    @property
    def dropped(self) -> Counter[str]:
        """`trackd_dropped_total{reason}` tallies (opt-outs, cookieless, identity cap)."""
        return self.prepare.dropped

    def skipped_all(self) -> Counter[tuple[str, str]]:
        """Skipped lines by (source, reason), including events too old to send."""
        out = Counter(self.skipped)
        for source, n in self.prepare.too_old.items():
            out[(source, "too_old")] += n
        return out
