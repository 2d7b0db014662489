"""`trackd backfill` (SPEC §6): replay old files — plain, .gz, .bz2, .xz — merged by event time,
with their original times, through the same pipeline as `run`.

Standalone: backfill takes the state lock itself, like `run --once`, reads every file to its end
with `Pipeline.run_merged` (worker processes when it pays), and delivers what it enqueued before
exiting (`once.read_and_deliver`). Positions commit with the chunk that read them, so a killed
backfill continues where it stopped, and a file `run` (or an earlier backfill) read is recognised
by content and resumes at its saved offset (`sources/history.py`).

When a daemon holds the lock, the job is handed to it through the state database (`hand_off`
writes a `jobs` row; `pipeline/jobs.py` carries it out between the daemon's live chunks) and this
command follows its progress; Ctrl-C only stops following.

`--dry-run` builds the pipeline over an in-memory database and identity store, seeded with the
state's file rows (read-only), and a sink that only counts and samples: nothing is written, sent
or locked.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
import structlog

from agent.config import Config
from agent.errors import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME
from agent.identity.memory_store import MemoryIdentityStore
from agent.pipeline.blocks import BlockPreparer
from agent.pipeline.core import Pipeline
from agent.pipeline.once import Summary, collect, exit_code, log_counts, read_and_deliver
from agent.pipeline.prepare import Prepared, Preparer
from agent.pipeline.stats import PipelineStats
from agent.pipeline.workers import PreparePool, start_pool
from agent.runtime import Runtime
from agent.sources.catalog import Catalog
from agent.sources.history import (
    HistoryFile,
    HistoryReader,
    UsageError,
    assign,
    expand,
    is_live,
    kind_of,
    plan,
)
from agent.sources.splitter import Split
from agent.sources.tracked import TrackedFile
from agent.state import jobs
from agent.state.db import StateLock, StatePaths, connect, migrate, transaction
from agent.state.files import FileRow, load_files
from agent.state.sinkfile import SinkFileRecord

log = structlog.get_logger("trackd.backfill")

#: Seconds between progress log lines when stderr is no terminal.
PROGRESS_EVERY = 5.0
#: Messages a dry run prints.
SAMPLE = 5


@dataclass(frozen=True, slots=True)
class Options:
    patterns: tuple[str, ...]
    sources: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    dry_run: bool = False
    deliver_timeout: float = 300.0
    #: The summary as one JSON object (on stderr, like `run --once --json`; stdout is the
    #: `-` file sink's, and a dry run's sample).
    as_json: bool = False


def parse_time(option: str, text: str) -> float:
    """ISO 8601 (a date, or a date and time; UTC unless an offset is given) -> epoch seconds."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: not an ISO 8601 time (e.g. 2026-11-01, 2026-11-01T08:00:00Z "
            "or 2026-11-01T08:00:00+01:00)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def window(since: float | None, until: float | None) -> Callable[[Prepared], str | None] | None:
    """The --since/--until filter for `run_merged`: why a record is outside, or None."""
    if since is None and until is None:
        return None
    lo = -1e300 if since is None else since
    hi = 1e300 if until is None else until

    def skip(p: Prepared) -> str | None:
        if p.ts < lo:
            return "before_since"
        if p.ts >= hi:
            return "after_until"
        return None

    return skip


# -- progress ---------------------------------------------------------------------------------


class ProgressView:
    """Shows a backfill's progress: a rich bar on a terminal, a `backfill_progress` log line
    every PROGRESS_EVERY seconds otherwise (or always, with `out=None`: the daemon's job)."""

    def __init__(self, out: TextIO | None, label: str = "backfill") -> None:
        self.out = out
        self.label = label
        self._last_log = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def start(self, total: int) -> None:
        self._last_log = time.monotonic()
        if self.out is None or not self.out.isatty():
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as Bar,
        )

        bar = Bar(
            TextColumn(self.label),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=self.out),
            transient=True,
        )
        bar.start()
        self._bar = bar
        self._task = bar.add_task(self.label, total=max(total, 1), files="", rate="")

    def show(self, p: dict[str, Any], *, force: bool = False) -> None:
        """`p` is a `Progress.snapshot()`."""
        if self._bar is not None:
            self._bar.update(
                self._task,
                total=max(p["bytes"], 1),
                completed=min(p["done_bytes"], p["bytes"]),
                files=f"{p['done_files']}/{p['files']} files",
                rate=f"{p['lines_per_s']:,} lines/s",
            )
            return
        now = time.monotonic()
        if force or now - self._last_log >= PROGRESS_EVERY:
            self._last_log = now
            log.info(
                "backfill_progress",
                files_done=p["done_files"],
                files=p["files"],
                bytes_done=p["done_bytes"],
                bytes=p["bytes"],
                lines=p["lines"],
                lines_per_s=p["lines_per_s"],
                eta_s=p["eta_s"],
            )

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@dataclass(slots=True)
class Progress:
    """Files, bytes (as stored: compressed bytes of a compressed file), lines, as read."""

    files: int
    total: int
    view: ProgressView
    started: float = field(default_factory=time.monotonic)
    done_files: int = 0
    done_bytes: int = 0
    lines: int = 0
    lines_of: Counter[str] = field(default_factory=Counter)

    def start(self) -> None:
        self.started = time.monotonic()
        self.view.start(self.total)

    def add(self, path: str, lines: int, nbytes: int) -> None:
        self.lines += lines
        self.lines_of[path] += lines
        self.done_bytes += nbytes
        self.view.show(self.snapshot())

    def file_done(self) -> None:
        self.done_files += 1
        self.view.show(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        speed = self.done_bytes / elapsed
        left = max(0, self.total - self.done_bytes)
        return {
            "files": self.files,
            "done_files": self.done_files,
            "bytes": self.total,
            "done_bytes": self.done_bytes,
            "lines": self.lines,
            "lines_per_s": round(self.lines / elapsed),
            "eta_s": round(left / speed) if speed > 0 else None,
        }

    def stop(self) -> None:
        self.view.stop()


def _splits(hf: HistoryFile, progress: Progress) -> Iterator[Split]:
    """A file's splits to its end, counted into the progress."""
    tf = hf.tf
    assert tf is not None
    if isinstance(tf.packed, HistoryReader):
        reader = tf.packed
        seen = reader.consumed
        for split in tf.read_packed():
            progress.add(hf.path, split.count, reader.consumed - seen)
            seen = reader.consumed
            yield split
        # Damaged: the unread rest counts as done for the bar.
        progress.add(hf.path, 0, max(0, hf.size - seen))
    else:
        last = tf.pos
        for split in tf.snapshot(hf.size, final=not hf.live):
            progress.add(hf.path, split.count, split.end - last)
            last = split.end
            yield split
        progress.add(hf.path, 0, max(0, hf.size - last))
    progress.file_done()


# -- reading ------------------------------------------------------------------------------------


def _files(config: Config, opts: Options) -> list[HistoryFile]:
    return history_files(config, assign(expand(opts.patterns), config.sources, opts.sources))


def history_files(config: Config, assigned: Iterable[tuple[str, str]]) -> list[HistoryFile]:
    """(path, source) pairs -> HistoryFiles, with kind, size and liveness as they are now."""
    sources = {s.name: s for s in config.sources}
    out = []
    for path, source in assigned:
        if source not in sources:
            out.append(HistoryFile(path, source, None, 0, False, skipped="unknown source"))
            continue
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        out.append(HistoryFile(path, source, kind_of(path), size, is_live(path, sources[source])))
    return out


def _order_preparer(pipeline: Pipeline) -> BlockPreparer:
    """A BlockPreparer for ordering probes, counting into its own (discarded) stats."""
    stats = PipelineStats()
    return BlockPreparer(
        pipeline.config, Preparer(pipeline.config, pipeline.secret, stats.prepare), stats
    )


@dataclass(slots=True)
class Outcome:
    files: list[HistoryFile]
    progress: Progress | None = None


class HistoryRun:
    """One backfill's reading, shared by the standalone command and the daemon's hand-off job:
    `open` the files at their saved positions, oldest first; `batches` emits their records merged
    by event time (the caller commits); `finish` retires the files read to their end; `close`."""

    def __init__(
        self,
        pipeline: Pipeline,
        catalog: Catalog,
        outcome: Outcome,
        opts: Options,
        view: ProgressView,
    ) -> None:
        self.pipeline = pipeline
        self.catalog = catalog
        self.outcome = outcome
        self.opts = opts
        self.view = view
        self.todo: list[HistoryFile] = []
        self.pool: PreparePool | None = None
        self.progress = Progress(0, 0, view)

    def open(self) -> None:
        files = self.outcome.files
        plan(self.catalog, files, _order_preparer(self.pipeline))
        self.todo = [hf for hf in files if hf.tf is not None]
        for hf in files:
            if hf.skipped:
                log.info("backfill_file_skipped", path=hf.path, source=hf.source, why=hf.skipped)
            elif hf.resumed_at:
                log.info(
                    "backfill_file_resumed", path=hf.path, source=hf.source, offset=hf.resumed_at
                )
        total = 0
        for hf in self.todo:
            tf = hf.tf
            assert tf is not None
            base = tf.packed.consumed if isinstance(tf.packed, HistoryReader) else tf.pos
            total += max(0, hf.size - base)
        self.progress = Progress(len(self.todo), total, self.view)
        self.outcome.progress = self.progress
        self.pool = start_pool(self.pipeline.config, self.pipeline.secret, total)
        self.progress.start()

    @property
    def streams(self) -> list[tuple[TrackedFile, Iterable[Split]]]:
        out: list[tuple[TrackedFile, Iterable[Split]]] = []
        for hf in self.todo:
            assert hf.tf is not None
            out.append((hf.tf, _splits(hf, self.progress)))
        return out

    @property
    def skip(self) -> Callable[[Prepared], str | None] | None:
        return window(self.opts.since, self.opts.until)

    @property
    def floors(self) -> list[float]:
        """Per stream, the sort key of its first record (a time plus its precision) or one
        below it, for `order.merged`: for a file read from its start, the record whose time
        `plan` read (`HistoryFile.floor`); for a resumed one, the record at its position,
        peeked at (`Pipeline.floor_of`; -inf for a compressed one)."""
        out: list[float] = []
        for hf in self.todo:
            tf = hf.tf
            assert tf is not None
            fresh = not hf.resumed_at and tf.pos == 0
            out.append(hf.floor if fresh else self.pipeline.floor_of(tf, hf.size))
        return out

    def batches(self) -> Iterator[int]:
        return self.pipeline.merged_batches(
            self.streams, self.pool, skip=self.skip, floors=self.floors
        )

    def finish(self) -> None:
        """Every file was read to its end: retire the rotated ones (before the last commit)."""
        for hf in self.todo:
            tf = hf.tf
            assert tf is not None
            if not hf.live and _failed(hf) is None:
                self.catalog.retire(tf.row, "done")
            if hf.resumed_at and not self.progress.lines_of[hf.path] and _damage(hf) is None:
                hf.skipped = "already read"  # a compressed copy: known only once decompressed

    def close(self) -> None:
        self.progress.stop()
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        for hf in self.todo:
            if hf.tf is not None:
                hf.tf.close()

    @property
    def files_read(self) -> int:
        return sum(1 for hf in self.todo if not hf.skipped)


def read_history(
    pipeline: Pipeline,
    catalog: Catalog,
    files: list[HistoryFile],
    opts: Options,
    outcome: Outcome,
    out: TextIO,
) -> int:
    """Pipeline thread: open `files` at their saved positions, oldest first, and read them all
    to their end merged by event time; retire the ones read to the end. Returns files read."""
    run = HistoryRun(pipeline, catalog, outcome, opts, ProgressView(out))
    run.open()
    try:
        pipeline.run_merged(run.streams, run.pool, skip=run.skip, floors=run.floors)
        run.finish()
    finally:
        run.close()
    return run.files_read


# -- the report -------------------------------------------------------------------------------


def report(summary: Summary, outcome: Outcome, skipped: Counter[tuple[str, str]]) -> str:
    """The summary: the one-line `run --once` form, then skips by reason and file problems."""
    lines = [summary.line().replace("trackd:", "trackd backfill:", 1)]
    if skipped:
        by_reason: Counter[str] = Counter()
        for (_source, reason), n in skipped.items():
            by_reason[reason] += n
        lines.append(
            "  lines skipped by reason: "
            + ", ".join(f"{reason} {n}" for reason, n in sorted(by_reason.items()))
        )
    progress = outcome.progress
    read = [hf for hf in outcome.files if hf.tf is not None and not hf.skipped]
    already = [hf for hf in outcome.files if hf.skipped]
    if already:
        lines.append(f"  files not read again ({len(already)}):")
        lines.extend(f"    {hf.path}: {hf.skipped}" for hf in already)
    damaged = [(hf, r) for hf in read if (r := _damage(hf)) is not None]
    if damaged:
        lines.append(f"  damaged files ({len(damaged)}): the lines before the damage were read")
        for hf, reader in damaged:
            assert hf.tf is not None
            got = progress.lines_of[hf.path] if progress is not None else 0
            lost = max(0, reader.size - reader.consumed)
            partial = hf.tf.splitter.offset < reader.offset
            lines.append(
                f"    {hf.path}: {reader.damage}; read {got:,} lines "
                f"({hf.tf.splitter.offset:,} bytes decompressed); lost: everything after "
                f"({lost:,} of {reader.size:,} compressed bytes unread"
                + (", and the partial line at the damage)" if partial else ")")
            )
    failed = [(hf, why) for hf in read if (why := _failed(hf)) is not None]
    if failed:
        lines.append(
            f"  files that could not be read to their end ({len(failed)}): run the same "
            "backfill again to read the rest"
        )
        for hf, why in failed:
            got = progress.lines_of[hf.path] if progress is not None else 0
            lines.append(f"    {hf.path}: {why}; read {got:,} lines")
    return "\n".join(lines)


def report_data(
    summary: Summary, outcome: Outcome, skipped: Counter[tuple[str, str]]
) -> dict[str, Any]:
    """`report` as data (`--json`): the summary's counts, skips by reason, files not read
    again and damaged files."""
    by_reason: Counter[str] = Counter()
    for (_source, reason), n in skipped.items():
        by_reason[reason] += n
    progress = outcome.progress
    damaged = []
    for hf in outcome.files:
        reader = _damage(hf) if hf.tf is not None and not hf.skipped else None
        if reader is not None:
            damaged.append(
                {
                    "path": hf.path,
                    "damage": reader.damage,
                    "lines_read": progress.lines_of[hf.path] if progress is not None else 0,
                    "compressed_bytes_unread": max(0, reader.size - reader.consumed),
                }
            )
    return {
        **summary.as_dict(),
        "lines_skipped_by_reason": dict(sorted(by_reason.items())),
        "files_not_read_again": [
            {"path": hf.path, "why": hf.skipped} for hf in outcome.files if hf.skipped
        ],
        "damaged_files": damaged,
        "failed_files": [
            {
                "path": hf.path,
                "error": why,
                "lines_read": progress.lines_of[hf.path] if progress is not None else 0,
            }
            for hf in outcome.files
            if hf.tf is not None and not hf.skipped and (why := _failed(hf)) is not None
        ],
    }


def _print_report(
    summary: Summary,
    outcome: Outcome,
    skipped: Counter[tuple[str, str]],
    as_json: bool,
    out: TextIO,
) -> None:
    if as_json:
        out.write(orjson.dumps(report_data(summary, outcome, skipped)).decode() + "\n")
    else:
        out.write(report(summary, outcome, skipped) + "\n")
    out.flush()


def _failed(hf: HistoryFile) -> str | None:
    """Why a compressed file could not be read to its end (not damage: it stays unfinished,
    the next backfill reads the rest), else None."""
    packed = hf.tf.packed if hf.tf is not None else None
    return packed.failed if isinstance(packed, HistoryReader) and packed.failed else None


def _damage(hf: HistoryFile) -> HistoryReader | None:
    """The reader of a compressed file found damaged while read, else None."""
    packed = hf.tf.packed if hf.tf is not None else None
    return packed if isinstance(packed, HistoryReader) and packed.damage else None


def nothing_read(outcome: Outcome) -> bool:
    """Nothing at all could be read (every file unreadable or damaged before its first line):
    exit 1. Files found already read count as read."""
    lines_of = outcome.progress.lines_of if outcome.progress is not None else Counter[str]()
    for hf in outcome.files:
        if hf.skipped and not hf.skipped.startswith("unreadable"):
            return False
        if hf.tf is not None and (_damage(hf) is None or lines_of[hf.path] > 0):
            return False
    return True


# -- standalone -------------------------------------------------------------------------------


async def backfill(config: Config, opts: Options, files: list[HistoryFile]) -> int:
    """Standalone backfill under the state lock."""
    rt = Runtime(config)
    await rt.start()
    summary = Summary()
    outcome = Outcome(files)
    assert rt.pipeline is not None and rt.catalog is not None
    pipeline, catalog = rt.pipeline, rt.catalog
    try:
        await read_and_deliver(
            rt,
            lambda: read_history(pipeline, catalog, files, opts, outcome, sys.stderr),
            summary,
            opts.deliver_timeout,
        )
    finally:
        collect(pipeline, summary)
        await rt.close()
        log_counts(pipeline)
        _print_report(summary, outcome, pipeline.stats.skipped_all(), opts.as_json, sys.stderr)
    if nothing_read(outcome):
        log.error("backfill_nothing_read", files=len(files))
        return EXIT_RUNTIME
    if any(_failed(hf) is not None for hf in files):
        return EXIT_RUNTIME  # the report names them; the next backfill reads the rest
    return exit_code(summary, opts.deliver_timeout)


# -- the hand-off -------------------------------------------------------------------------------

#: How often `backfill` looks at the job it handed to the daemon.
FOLLOW_EVERY = 0.5


def job_args(files: list[HistoryFile], opts: Options) -> dict[str, Any]:
    """What the daemon needs to carry the job out (the files as this command resolved them)."""
    return {
        "files": [[hf.path, hf.source] for hf in files],
        "since": opts.since,
        "until": opts.until,
    }


def hand_off(
    config: Config,
    opts: Options,
    files: list[HistoryFile],
    out: TextIO | None = None,
    follow_every: float = FOLLOW_EVERY,
) -> int:
    """A running `trackd run` holds the lock: write the job into the state database (SPEC §5.1,
    §6) — or find the same job already queued — and follow its progress until it is done. Ctrl-C
    stops following only; the job goes on in the daemon."""
    out = sys.stderr if out is None else out
    paths = StatePaths(config.state_dir)
    if not os.path.exists(paths.db):
        print(
            f"trackd backfill: {config.state_dir} is locked by a running trackd but holds no "
            "state database yet: wait until `trackd run` is up (trackd status), then try again",
            file=out,
            flush=True,
        )
        return EXIT_CONFIG
    try:
        conn = connect(paths.db)
        try:
            with transaction(conn):
                args = job_args(files, opts)
                job = jobs.same_active(conn, args)
                job_id = job.id if job is not None else jobs.submit(conn, args, time.time())
        except BaseException:
            conn.close()
            raise
    except sqlite3.OperationalError as exc:
        return _handoff_failed(config, paths.db, exc, out)
    try:
        _say_handed(config, job_id, job is not None, len(files), out)
        return follow(conn, job_id, StateLock(paths), out, follow_every, as_json=opts.as_json)
    except KeyboardInterrupt:
        return _detached(job_id, out)
    finally:
        conn.close()


def _say_handed(config: Config, job_id: int, same: bool, files: int, out: TextIO) -> None:
    print(
        f"trackd backfill: `trackd run` is running on {config.state_dir}; "
        + (
            f"the same backfill is already job #{job_id}: following it"
            if same
            else f"handed {files} file(s) to it as job #{job_id}"
        )
        + " (Ctrl-C stops following; the job goes on)",
        file=out,
        flush=True,
    )


def _detached(job_id: int, out: TextIO) -> int:
    print(
        f"\ntrackd backfill: detached; job #{job_id} goes on in the running daemon "
        "(`trackd status` shows it; run the same backfill again to follow it)",
        file=out,
        flush=True,
    )
    return EXIT_OK


def _handoff_failed(config: Config, db: str, exc: sqlite3.OperationalError, out: TextIO) -> int:
    text = str(exc)
    if "no such table" in text:
        why = (
            "the running trackd is older than this one and takes no backfill jobs: restart it "
            "(systemctl restart trackd), then run this backfill again"
        )
    else:
        why = (
            f"{text}. Run backfill as the user trackd runs as (sudo -u trackd trackd backfill …) "
            "or as root"
        )
    print(
        f"trackd backfill: a running `trackd run` holds {config.state_dir}, and the job could "
        f"not be written into its state database {db}: {why}",
        file=out,
        flush=True,
    )
    return EXIT_CONFIG


def follow(
    conn: sqlite3.Connection,
    job_id: int,
    lock: StateLock,
    out: TextIO,
    every: float,
    *,
    as_json: bool = False,
) -> int:
    """Show the job's progress until it is done; its exit code then. Ctrl-C detaches (exit 0);
    a daemon that stops before the job is done leaves it queued for its next start (exit 1)."""
    view = ProgressView(out, f"backfill job #{job_id}")
    shown = False
    waiting_said = False
    try:
        while True:
            job = jobs.get(conn, job_id)
            if job is None:
                print(f"trackd backfill: job #{job_id} is gone from the state", file=out)
                return EXIT_RUNTIME
            if job.state in (jobs.DONE, jobs.FAILED):
                view.stop()
                result = job.result or {}
                if as_json:
                    data = {"job": job_id, "state": job.state, **result.get("data", {})}
                    print(orjson.dumps(data).decode(), file=out, flush=True)
                else:
                    print(result.get("report", f"job #{job_id}: {job.state}"), file=out, flush=True)
                return int(result.get("exit", EXIT_RUNTIME))
            if job.state == jobs.RUNNING and job.progress:
                if not shown:
                    view.start(int(job.progress["bytes"]))
                    shown = True
                view.show(job.progress)
            elif not waiting_said:
                ahead = [j.id for j in jobs.active(conn) if j.id < job_id]
                if ahead:
                    print(
                        f"trackd backfill: job #{job_id} waits for job(s) "
                        + ", ".join(f"#{i}" for i in ahead),
                        file=out,
                        flush=True,
                    )
                waiting_said = True
            if not lock.held_by_other():
                job = jobs.get(conn, job_id)
                if job is not None and job.state in jobs.ACTIVE:
                    view.stop()
                    print(
                        f"trackd backfill: `trackd run` stopped before job #{job_id} was done; "
                        "the job goes on when it starts again (or run this backfill again now: "
                        "it resumes where the job stopped and reads nothing twice)",
                        file=out,
                        flush=True,
                    )
                    return EXIT_RUNTIME
                continue
            time.sleep(every)  # another process writes the row: there is no event to wait on
    except KeyboardInterrupt:
        view.stop()
        return _detached(job_id, out)


# -- dry run ------------------------------------------------------------------------------------


class _SampleSink:
    """A direct sink that writes nothing: it counts messages and keeps the first few."""

    name = "dry-run"

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.sample: list[bytes] = []
        self.count = 0

    def describe(self) -> str:
        return "nothing (dry run)"

    def open(self, recorded: SinkFileRecord | None) -> SinkFileRecord | None:
        return None

    def write(self, bodies: list[bytes]) -> None:
        self.count += len(bodies)
        room = self.keep - len(self.sample)
        if room > 0:
            self.sample.extend(bodies[:room])

    def pending_record(self) -> SinkFileRecord | None:
        return None

    def committed(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


class _MemoryPositions:
    """The PositionStore of a dry run: new rows get ids past the state's, nothing is written."""

    __slots__ = ("_next",)

    def __init__(self, rows: Sequence[FileRow]) -> None:
        self._next = max((r.id for r in rows), default=0) + 1

    def insert(self, row: FileRow) -> int:
        self._next += 1
        return self._next - 1

    def update(self, row: FileRow) -> None:
        pass

    def delete(self, ids: list[int]) -> None:
        pass


def _saved_rows(config: Config) -> list[FileRow]:
    """The state's file rows, read without writing anything (no state: none)."""
    paths = StatePaths(config.state_dir)
    if not os.path.exists(paths.db):
        return []
    if os.path.exists(paths.db + "-wal"):
        conn = connect(paths.db, readonly=True)  # a writer is (or was) active: share its WAL
    else:
        # No WAL: a read-only connection would create one; `immutable` reads the file as is.
        conn = sqlite3.connect(f"file:{paths.db}?immutable=1", uri=True)
    try:
        return load_files(conn)
    finally:
        conn.close()


def _secret(config: Config) -> bytes:
    path = config.identity.secret_file
    try:
        with open(path, "rb") as fh:
            data = fh.read().strip()
    except OSError:
        data = b""
    if not data:
        log.warning(
            "dry_run_ephemeral_secret",
            path=path,
            hint="no identity secret yet: derived ids in this dry run differ from a real run's",
        )
        data = secrets.token_hex(32).encode()
    return data


def dry_run(config: Config, opts: Options, files: list[HistoryFile]) -> int:
    """Parse and resolve in memory; print the summary and a sample of messages to stdout."""
    rows = _saved_rows(config)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    sink = _SampleSink(SAMPLE)
    pipeline = Pipeline(config, conn, MemoryIdentityStore(), _secret(config), direct_sink=sink)
    pipeline.open_direct_sink()
    catalog = Catalog(
        rows,
        _MemoryPositions(rows),
        first_start=False,
        start_at="beginning",
        max_line_bytes=config.max_line_bytes,
    )
    summary = Summary()
    summary.sink = "nothing (dry run)"
    outcome = Outcome(files)
    summary.files = read_history(pipeline, catalog, files, opts, outcome, sys.stderr)
    collect(pipeline, summary)
    summary.delivered = 0
    log_counts(pipeline)
    conn.close()
    out = sys.stdout
    if opts.as_json:
        data = report_data(summary, outcome, pipeline.stats.skipped_all())
        data["sample"] = [orjson.loads(body) for body in sink.sample]
        data["dry_run"] = True
        out.write(orjson.dumps(data).decode() + "\n")
        out.flush()
        return EXIT_RUNTIME if nothing_read(outcome) else EXIT_OK
    out.write(report(summary, outcome, pipeline.stats.skipped_all()) + "\n")
    if sink.sample:
        out.write(f"sample ({len(sink.sample)} of {sink.count} messages):\n")
        for body in sink.sample:
            out.write(orjson.dumps(orjson.loads(body)).decode() + "\n")
    out.write("dry run: no state changed, nothing sent\n")
    out.flush()
    return EXIT_RUNTIME if nothing_read(outcome) else EXIT_OK


def run_backfill(config: Config, opts: Options) -> int:
    files = _files(config, opts)  # usage errors before anything is touched
    if opts.dry_run:
        return dry_run(config, opts, files)
    if StateLock(StatePaths(config.state_dir)).held_by_other():
        return hand_off(config, opts, files)  # outside asyncio: Ctrl-C reaches the follower
    return asyncio.run(backfill(config, opts, files))
