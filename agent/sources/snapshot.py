"""Reading a file up to a snapshot size (`run --once`, backfill): large blocks, complete lines."""

from __future__ import annotations

import os
from collections.abc import Iterator

from agent.sources.splitter import Split
from agent.sources.tracked import TrackedFile

BLOCK = 1 << 20


def read_splits(tf: TrackedFile, limit: int, *, final: bool = False) -> Iterator[Split]:
    """Complete lines of `tf` from its position up to byte `limit`.

    A last line without a newline is left for the next run — unless `final` (the file is no longer
    live and will not grow): then it is returned as a line of its own.
    """
    pos = tf.splitter.offset + tf.splitter.pending_bytes
    while pos < limit:
        data = os.pread(tf.fd, min(BLOCK, limit - pos), pos)
        if not data:
            break
        pos += len(data)
        split = tf.splitter.feed(data)
        if split is not None:
            yield split
    if final:
        start = tf.splitter.offset
        partial = tf.splitter.take_partial()
        if partial:
            tf.splitter.offset = start + len(partial)
            yield Split(start, [partial], tf.splitter.offset, 0, partial[-64:])
