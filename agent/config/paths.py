"""Paths in the config: `~` expanded, relative ones resolved, and the checks that need the disk.

Every path key — `state_dir`, `sources[].paths` and `exclude`, `sink.path`, `sink.tls.ca_file`,
`identity.secret_file` and the secret files (`api_key_file`, …) — accepts `~` and `~user` (the
home directory, as a shell expands it) and a path relative to the config file (`secret_file`:
relative to `state_dir`, SPEC §9).

`file_sink_problem` says why a file sink's path cannot be opened for appending, looking only (it
creates nothing: `trackd check` must leave no trace); `trackd check` reports it as a config error
and the file sink words its start-up failure with it.
"""

from __future__ import annotations

import os
import stat


def resolve(path: str, base_dir: str) -> str:
    """`path` with `~` expanded, made absolute against `base_dir`, normalised."""
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def file_sink_problem(path: str) -> str | None:
    """Why appending to `path` (creating it if missing) would fail, or None if it would work.

    Judged from what the file system says now, as the current user: a missing or unusable
    directory, a path that is a directory, a file or directory this user cannot write."""
    directory = os.path.dirname(path) or "."
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _directory_problem(directory, os.path.basename(path))
    except OSError as exc:
        return f"cannot look at {path}: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return (
            f"{path} is a directory (give the path of a file inside it, e.g. {path}/events.jsonl)"
        )
    if not os.access(path, os.W_OK):
        return f"{path} is not writable by this user (uid {os.getuid()}): fix its owner or mode"
    return None


def _directory_problem(directory: str, name: str) -> str | None:
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return (
            f"the directory {directory} does not exist (create it, writable by the user trackd "
            "runs as, or point sink.path elsewhere)"
        )
    except OSError as exc:
        return f"cannot look at the directory {directory}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory, so {name} cannot be created in it"
    if not os.access(directory, os.W_OK | os.X_OK):
        return (
            f"the directory {directory} is not writable by this user (uid {os.getuid()}), so "
            f"{name} cannot be created in it: fix its owner or mode, or create {name} there "
            "writable by this user"
        )
    return None
