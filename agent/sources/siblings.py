"""Rotated siblings of a path (SPEC §5.3): where a file trackd was reading may have gone.

logrotate and friends move `access.log` to `access.log.1`, `access.log-20261128` (dateext), and
compress them to `.gz`/`.bz2`/`.xz`. A saved file that is no longer at its path is looked for among
these, by identity (never by name): the name only narrows the search.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from agent.sources.compressed import compression_of


class Sibling(NamedTuple):
    path: str
    dev: int
    ino: int
    size: int
    mtime: float
    #: `gz`, `bz2` or `xz` when compressed (by content), else None.
    packed: str | None


def siblings_of(path: str) -> list[Sibling]:
    """Regular files next to `path` named `<name>.…` or `<name>-…`, most recently modified first.

    `path` itself is not among them. A directory that cannot be listed yields nothing (the caller
    logs what it could not find).
    """
    directory, name = os.path.split(path)
    out: list[Sibling] = []
    try:
        entries = list(os.scandir(directory or "."))
    except OSError:
        return out
    dot, dash = name + ".", name + "-"
    for entry in entries:
        if entry.name == name or not entry.name.startswith((dot, dash)):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        if not entry.is_file():
            continue
        full = os.path.join(directory, entry.name)
        out.append(
            Sibling(full, st.st_dev, st.st_ino, st.st_size, st.st_mtime, compression_of(full))
        )
    out.sort(key=lambda s: (-s.mtime, s.path))
    return out
