"""Expanding a source's `paths` globs (with `**`) minus its `exclude` globs into files."""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
from typing import NamedTuple


class Found(NamedTuple):
    path: str
    dev: int
    ino: int
    size: int


def expand(patterns: tuple[str, ...], exclude: tuple[str, ...]) -> list[Found]:
    """Regular files matching any pattern and no exclude, each (dev, inode) once, sorted by path.

    A file reached twice (two globs, a symlink) is read once, under its first path in sort order.
    Exclude globs with a `/` match the whole path; others match the file name.
    """
    seen: dict[tuple[int, int], Found] = {}
    for pattern in patterns:
        matches = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
        for path in sorted(matches):
            if _excluded(path, exclude):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            key = (st.st_dev, st.st_ino)
            if key not in seen or path < seen[key].path:
                seen[key] = Found(path, st.st_dev, st.st_ino, st.st_size)
    return sorted(seen.values(), key=lambda f: f.path)


def _excluded(path: str, exclude: tuple[str, ...]) -> bool:
    name = os.path.basename(path)
    for pattern in exclude:
        target = path if "/" in pattern else name
        if fnmatch.fnmatchcase(target, pattern):
            return True
    return False


def watch_dirs(patterns: list[str]) -> tuple[list[str], bool]:
    """Existing directories to watch (each glob's fixed prefix, or its nearest existing ancestor),
    and whether any glob needs a recursive watch (a wildcard or a missing directory on the way)."""
    dirs: set[str] = set()
    recursive = False
    for pattern in patterns:
        d = os.path.dirname(pattern)
        while d and glob.has_magic(d):
            d = os.path.dirname(d)
            recursive = True
        while d and not os.path.isdir(d):
            d = os.path.dirname(d)
            recursive = True
        if d:
            dirs.add(d)
    return sorted(dirs), recursive
