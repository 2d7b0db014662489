"""The daemon's side of the backfill hand-off (SPEC §5.1, §6): backfill jobs that `trackd
backfill` wrote into the state database while `run` held the lock.

The tail loop calls `JobRunner.step` on the pipeline thread after each live commit. A job reads
for at most SLICE seconds per step and commits what it read, so live files are polled between two
slices and keep their latency however large the history is; while the outbox is full the job
waits, as live reading does. The job's files are read through the same `HistoryRun` as a
standalone backfill (same messages, same messageIds, positions committed with the records), so a
job interrupted by a stop resumes at the next start where it stopped, and a second job over the
same files adds nothing. Files the daemon is tailing live are left to the tailer.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import structlog

from agent.errors import EXIT_OK, EXIT_RUNTIME, SinkError, StateError
from agent.pipeline.backfill import (
    HistoryRun,
    Options,
    Outcome,
    ProgressView,
    history_files,
    nothing_read,
    report,
    report_data,
)
from agent.pipeline.core import COMMIT_EVERY, Pipeline
from agent.pipeline.once import Summary
from agent.sources.catalog import Catalog
from agent.sources.tailer import Tailer
from agent.state import jobs
from agent.state.db import transaction

log = structlog.get_logger("trackd.jobs")

#: The longest a job reads before the live files are looked at again.
SLICE = 0.05
#: How often the daemon looks for a queued job while none runs.
LOOK_EVERY = 1.0
#: How often a running job's progress is written for `trackd backfill` to follow.
NOTE_EVERY = 0.5


class _Tally:
    """What a job's slices changed in the pipeline's counters (live steps run in between)."""

    def __init__(self) -> None:
        self.lines = 0
        self.skipped: Counter[tuple[str, str]] = Counter()
        self.messages: Counter[str] = Counter()
        self.resolutions: Counter[str] = Counter()
        self.new_ids: Counter[str] = Counter()
        self.junk = 0

    @staticmethod
    def snapshot(p: Pipeline) -> tuple[Any, ...]:
        s = p.stats
        return (
            sum(s.lines.values()),
            s.skipped_all(),
            Counter(s.messages),
            Counter(s.resolutions),
            Counter(p.resolver.counts),
            sum(p.normalizer.junk.values()),
        )

    def add(self, before: tuple[Any, ...], after: tuple[Any, ...]) -> None:
        self.lines += after[0] - before[0]
        self.skipped.update(after[1] - before[1])
        self.messages.update(after[2] - before[2])
        self.resolutions.update(after[3] - before[3])
        self.new_ids.update(after[4] - before[4])
        self.junk += after[5] - before[5]

    def summary(self, files: int, sink: str) -> Summary:
        s = Summary(
            files=files,
            lines=self.lines,
            skipped=sum(self.skipped.values()),
            messages=dict(self.messages),
            resolutions=dict(self.resolutions),
            new_ids=dict(self.new_ids),
            junk=self.junk,
        )
        s.sink = sink
        return s


class _Running:
    """One job being carried out."""

    def __init__(self, job: jobs.Job, run: HistoryRun) -> None:
        self.job = job
        self.run = run
        self.batches: Iterator[int] | None = None
        self.tally = _Tally()
        self.summary_started = time.monotonic()
        #: Every record was read and committed: what is left is retiring files and the result.
        self.read_all = False
        self.noted = 0.0


class JobRunner:
    """Carries out the queued backfill jobs, oldest first, one at a time, a slice per step."""

    def __init__(self, pipeline: Pipeline, catalog: Catalog, tailer: Tailer, sink: str) -> None:
        self.pipeline = pipeline
        self.catalog = catalog
        self.tailer = tailer
        self.sink = sink
        self.current: _Running | None = None
        self._looked = float("-inf")

    @property
    def busy(self) -> bool:
        """A job has reading left: the tail loop steps again without waiting."""
        return self.current is not None

    def look_now(self) -> None:
        """Look for a queued job at the next step (a request row or a signal hinted at one)."""
        self._looked = float("-inf")

    def reserve(self) -> None:
        """Pipeline thread, before the first discovery: the files of the jobs still to do are
        left to them (after a stop mid-job, the tailer's recovery of rotated files would
        otherwise read them all at once)."""
        keys = set()
        for job in jobs.active(self.pipeline.conn):
            for path, source in job.args.get("files", []):
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                keys.add((str(source), st.st_dev, st.st_ino))
        self.tailer.busy = keys

    def step(self, *, paused: bool) -> None:
        """Pipeline thread, after the live commit: start the next job when one is queued, else
        read a slice of the current one and commit it. StateError and SinkError propagate (the
        tail loop retries the pending commit; the job goes on after)."""
        if self.current is None:
            now = time.monotonic()
            if now - self._looked < LOOK_EVERY:
                return
            self._looked = now
            queued = jobs.active(self.pipeline.conn)
            if not queued:
                return
            self._begin(queued[0])
            if self.current is None:
                return
        cur = self.current
        if cur.read_all:
            self._end(cur, None)
            return
        if paused:
            return  # the outbox is full: the job waits for it to drain, as live reading does
        try:
            self._slice(cur)
        except (StateError, SinkError):
            raise
        except Exception as exc:  # a damaged file is handled by the reader: this is unexpected
            log.exception("backfill_job_failed", job=cur.job.id, error=str(exc))
            self.pipeline.commit()
            self._end(cur, f"{type(exc).__name__}: {exc}")

    def _begin(self, job: jobs.Job) -> None:
        args = job.args
        opts = Options(patterns=(), since=args.get("since"), until=args.get("until"))
        files = history_files(self.pipeline.config, [(p, s) for p, s in args.get("files", [])])
        for hf in files:
            if not hf.skipped and self._tailed(hf.path, hf.source):
                hf.skipped = "being read live by this daemon (its lines are read as they come)"
        outcome = Outcome(files)
        run = HistoryRun(
            self.pipeline, self.catalog, outcome, opts, ProgressView(None, f"job {job.id}")
        )
        cur = _Running(job, run)
        self.current = cur
        log.info(
            "backfill_job_started", job=job.id, files=len(files), resumed=job.started is not None
        )
        self._write(jobs.start, job.id, time.time())
        try:
            run.open()
        except Exception as exc:
            log.exception("backfill_job_failed", job=job.id, error=str(exc))
            self._end(cur, f"{type(exc).__name__}: {exc}")
            return
        self.tailer.busy = {(hf.source, hf.tf.row.dev, hf.tf.row.ino) for hf in run.todo if hf.tf}
        cur.batches = run.batches()
        self._note(cur, force=True)

    def _write(self, fn: Any, *args: Any) -> None:
        """A job row change in its own transaction; a refused one is a StateError (the tail
        loop waits for the database and the step is taken again)."""
        try:
            with transaction(self.pipeline.conn):
                fn(self.pipeline.conn, *args)
        except sqlite3.Error as exc:
            raise StateError(
                f"could not write backfill job {args[0]} to the state database: {exc}"
            ) from exc

    def _tailed(self, path: str, source: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (source, st.st_dev, st.st_ino) in self.tailer.files

    def _slice(self, cur: _Running) -> None:
        assert cur.batches is not None
        pipeline = self.pipeline
        before = _Tally.snapshot(pipeline)
        deadline = time.monotonic() + SLICE
        finished = True
        try:
            for _n in cur.batches:
                if pipeline.chunk.records >= COMMIT_EVERY:
                    pipeline.commit()
                if time.monotonic() >= deadline:
                    finished = False
                    break
        finally:
            cur.tally.add(before, _Tally.snapshot(pipeline))
        pipeline.commit()
        if finished:
            cur.read_all = True
            self._end(cur, None)
        else:
            self._note(cur)

    def _note(self, cur: _Running, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - cur.noted < NOTE_EVERY:
            return
        cur.noted = now
        snap = cur.run.progress.snapshot()
        cur.run.view.show(snap)
        try:
            with transaction(self.pipeline.conn):
                jobs.note_progress(self.pipeline.conn, cur.job.id, snap, time.time())
        except sqlite3.Error as exc:  # progress is informational: the next note retries
            log.warning("backfill_job_progress_not_saved", job=cur.job.id, error=str(exc))

    def _end(self, cur: _Running, error: str | None) -> None:
        """Retire the files read to their end, write the job's result, close its files."""
        run = cur.run
        if error is None:
            run.finish()
        summary = cur.tally.summary(run.files_read, self.sink)
        summary.started = cur.summary_started
        summary.delivered = sum(summary.messages.values())
        text = report(summary, run.outcome, cur.tally.skipped)
        text = text.replace(
            f"delivered {summary.delivered} to", f"queued {summary.delivered} for", 1
        )
        if error is not None:
            text += f"\n  the job stopped on an error: {error} (the daemon's log has the details)"
            code, state = EXIT_RUNTIME, jobs.FAILED
        else:
            code = EXIT_RUNTIME if nothing_read(run.outcome) else EXIT_OK
            state = jobs.DONE
        data = report_data(summary, run.outcome, cur.tally.skipped)
        data["queued"] = data.pop("delivered")
        if error is not None:
            data["error"] = error
        result = {
            "exit": code,
            "report": text,
            "data": data,
            "lines": summary.lines,
            "messages": summary.delivered,
            "progress": run.progress.snapshot(),
        }
        self._write(jobs.finish, cur.job.id, state, result, time.time())
        log.info(
            "backfill_job_done" if error is None else "backfill_job_stopped",
            job=cur.job.id,
            lines=summary.lines,
            messages=summary.delivered,
        )
        self._close(cur)
        self.look_now()

    def _close(self, cur: _Running) -> None:
        cur.run.close()
        self.tailer.busy = set()
        if self.current is cur:
            self.current = None

    def close(self) -> None:
        """Pipeline thread, at stop: close the job's files; a running job resumes at the next
        start from what was committed."""
        if self.current is not None:
            log.info("backfill_job_paused", job=self.current.job.id, why="trackd is stopping")
            self._close(self.current)
