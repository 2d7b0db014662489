"""Worker processes for `run --once` and backfill: the pure stage on every core.

Parsing and preparing (`lines.py`, `prepare.py`) need no identity state, so blocks of complete
lines go to a pool of processes and come back as prepared records, in order per file; the
pipeline thread merges them by event time and does only the stateful part (identity, assembly,
the chunk transaction). Workers are started with `forkserver` — the agent is multi-threaded,
and `fork` would copy locks held by other threads — and build their own parsers once, from the
config.

A block's prepared records travel as one `marshal` string of plain tuples (`ship_block`; a
worker's `Preparer` builds them plain, so nothing is copied to ship them): the pool then pickles a
single bytes object, and loading it costs the parent a third of unpickling the tuples (marshal
keeps no memo and refers back to the strings every record of a file shares — source, path, fp).
Rule hits, the one NamedTuple inside, travel as plain tuples too.

Workers die with trackd, even by kill -9 (issue 13 #6): the forkserver, not trackd, is their
parent, so each worker asks for SIGKILL when the forkserver dies (`PR_SET_PDEATHSIG`) and watches
trackd itself through a pidfd; when trackd is gone it ends the forkserver and then itself. The
resource tracker ends by itself once no process holds its pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import marshal
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import compress, count
from operator import itemgetter
from typing import Any

import structlog

from agent.config import Config
from agent.pipeline.blocks import BlockPreparer
from agent.pipeline.prepare import Prepared, Preparer, RuleHit, new_prepared
from agent.pipeline.stats import PipelineStats
from agent.records import FileRef

log = structlog.get_logger("trackd.workers")

#: prctl(2): the signal a process gets when its parent (the thread that forked it) ends.
PR_SET_PDEATHSIG = 1
#: Below this many bytes to read, workers cost more to start than they save.
PARALLEL_MIN_BYTES = 16 << 20

_worker: tuple[BlockPreparer, PipelineStats] | None = None

StatsDump = dict[str, Any]


def _init(config: Config, secret: bytes, parent: int) -> None:
    global _worker
    _die_with(parent)
    _tune_gc()
    stats = PipelineStats()
    _worker = (
        BlockPreparer(config, Preparer(config, secret, stats.prepare, plain=True), stats),
        stats,
    )


def _tune_gc() -> None:
    """Worker: the cyclic-GC thresholds `trackd run` and `backfill` set in their own process
    (`cli._tune_gc`). A forkserver's children start with the defaults, whose collections cost a
    worker ~30% of its time over the many short-lived tuples it builds (bench/run_once.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _die_with(trackd: int) -> None:
    """Worker: end when the forkserver (our parent) or `trackd` (its parent) ends."""
    forkserver = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if _parent_of(forkserver) != trackd:
            os._exit(1)  # the forkserver died before prctl, or trackd before we were forked
    try:
        fd: int | None = os.pidfd_open(trackd)
    except (AttributeError, OSError):  # no pidfds (old kernel), or trackd gone already
        fd = None
        if not _alive(trackd):
            os._exit(1)
    threading.Thread(
        target=_watch, args=(trackd, fd, forkserver), name="trackd-watch", daemon=True
    ).start()


def _watch(trackd: int, fd: int | None, forkserver: int) -> None:
    """Worker thread: wait for trackd's end; then end the forkserver (it would outlive trackd
    holding the terminal and the resource tracker's pipe) and this worker."""
    if fd is not None:
        select.select([fd], [], [])  # a pidfd is readable once its process exited
    else:
        while _alive(trackd):
            time.sleep(1.0)
    # Only while it is still our parent: a pid we are not the child of may have been reused.
    if os.getppid() == forkserver:
        with contextlib.suppress(OSError):
            os.kill(forkserver, signal.SIGKILL)
    os._exit(1)


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prepare_block(
    where: FileRef, start: int, end: int, block: bytes, too_long: int
) -> tuple[bytes, StatsDump]:
    """Worker: the prepared records of a block of complete lines (without its last `\\n`)."""
    assert _worker is not None, "worker used before its initializer ran"
    lines, stats = _worker
    records = ship_block(list(lines.block(where, start, end, block, too_long)))
    return records, dump_stats(stats)


#: marshal's format version (4: references to repeated objects, short ASCII strings).
_MARSHAL_VERSION = 4
#: Where `rules` sits in a Prepared (the only field holding NamedTuples).
_RULES = Prepared._fields.index("rules")


def ship_block(records: list[Prepared]) -> bytes:
    """A block's prepared records as they travel from a worker to the parent: plain tuples (a
    worker's `Preparer` makes them so; rule hits are made plain here), and where the records
    with rule hits are, marshalled."""
    rows: list[tuple[Any, ...]] = list(map(tuple, records))  # the same objects when plain
    with_rules = list(compress(count(), map(itemgetter(_RULES), rows)))
    for i in with_rules:
        row = list(rows[i])
        row[_RULES] = tuple(tuple(h) for h in row[_RULES])
        rows[i] = tuple(row)
    return marshal.dumps((rows, with_rules), _MARSHAL_VERSION)


def unship_block(shipped: bytes) -> list[Prepared]:
    """The parent's side of `ship_block` (`tuple.__new__` straight: `_make` costs a frame)."""
    rows, with_rules = marshal.loads(shipped)  # noqa: S302 (our workers' bytes)
    out = list(map(new_prepared, rows))
    for i in with_rules:
        p = out[i]
        out[i] = p._replace(rules=tuple(RuleHit._make(h) for h in p.rules))
    return out


def dump_stats(stats: PipelineStats) -> StatsDump:
    """Take (and reset) the counters a block produced, as plain data for the parent."""
    out: StatsDump = {
        "lines": dict(stats.lines),
        "skipped": dict(stats.skipped),
        "continuations": dict(stats.continuations),
        "junk": dict(stats.prepare.junk),
        "dropped": dict(stats.prepare.dropped),
        "too_old": dict(stats.prepare.too_old),
        "samples": {k: list(v) for k, v in stats.samples.items()},
    }
    for counter in (
        stats.lines,
        stats.skipped,
        stats.continuations,
        stats.prepare.junk,
        stats.prepare.dropped,
        stats.prepare.too_old,
    ):
        counter.clear()
    stats.samples.clear()
    return out


def absorb_stats(stats: PipelineStats, dump: StatsDump, sample_max: int = 20) -> None:
    """Add a worker's counters to the pipeline's."""
    stats.lines.update(Counter(dump["lines"]))
    stats.skipped.update(Counter(dump["skipped"]))
    stats.continuations.update(Counter(dump["continuations"]))
    stats.prepare.junk.update(Counter(dump["junk"]))
    stats.prepare.dropped.update(Counter(dump["dropped"]))
    stats.prepare.too_old.update(Counter(dump["too_old"]))
    for source, items in dump["samples"].items():
        sample = stats.samples.setdefault(source, deque(maxlen=sample_max))
        sample.extend(tuple(i) for i in items[: max(0, sample_max - len(sample))])


class PreparePool:
    """A pool of worker processes preparing blocks; results in submission order per file."""

    def __init__(self, config: Config, secret: bytes, processes: int | None = None) -> None:
        self.processes = processes or max(1, os.cpu_count() or 1)
        self._pool = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_init,
            initargs=(config, secret, os.getpid()),
        )
        #: Blocks submitted and not yet taken back (bounds memory across many files).
        self.in_flight = 0
        self.max_in_flight = self.processes * 3

    def submit(
        self, where: FileRef, start: int, end: int, block: bytes, too_long: int
    ) -> Future[tuple[bytes, StatsDump]]:
        self.in_flight += 1
        return self._pool.submit(_prepare_block, where, start, end, block, too_long)

    def take(
        self, future: Future[tuple[bytes, StatsDump]], stats: PipelineStats
    ) -> Iterator[Prepared]:
        """Wait for a block's result, count its stats, yield its records."""
        records, dump = future.result()
        self.in_flight -= 1
        absorb_stats(stats, dump)
        yield from unship_block(records)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def start_pool(config: Config, secret: bytes, unread_bytes: int) -> PreparePool | None:
    """A pool for a batch read of `unread_bytes`, or None when it would not pay: one core, or
    too little to read to amortise starting the workers. `TRACKD_WORKERS` overrides the choice:
    0 reads in process, N starts N workers whatever the size."""
    forced = os.environ.get("TRACKD_WORKERS", "").strip()
    if forced:
        try:
            count = int(forced)
        except ValueError:
            log.warning("bad_trackd_workers", value=forced, hint="an integer; 0 disables workers")
            count = -1
        if count == 0:
            return None
        if count > 0:
            return PreparePool(config, secret, processes=count)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if (cpus or 1) < 2 or unread_bytes < PARALLEL_MIN_BYTES:
        return None
    return PreparePool(config, secret, processes=cpus)
