"""`trackd check [--sample FILE]`: validate the config and test-parse sample lines (SPEC §6).

Per source: its path patterns as resolved (`~` expanded, relative to the config file), the
match rate on the sample (the first lines of `--sample FILE`, else of the source's newest
readable non-empty file), the matched files it could not read and why, the first unparsed lines
with the reason, and the fields of the first parsed line, masked as SPEC §8 requires
(`masking.py`). Lines continuing a multi-line app entry are counted apart: they are neither
parsed nor failed.

Beside the sources: a state_dir that others may read or write is a warning (the state holds
emails and session ids).
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import stat
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from agent.commands.masking import RecordMasker
from agent.config import Config, FileSinkConfig
from agent.config.schema import SegmentSinkConfig
from agent.errors import EXIT_CONFIG, TrackdError
from agent.parse import AccessParser, AppParser, build_parser
from agent.records import Continuation
from agent.sources.discovery import Found, expand

SAMPLE_LINES = 1000
SHOW_UNPARSED = 5
#: At most this much of a sample is read (decompressed): a sample is for looking, not loading.
SAMPLE_BYTES = 16 * 1024 * 1024
_SKIP_BLOCK = 1024 * 1024
_COMPRESSED = ((b"\x1f\x8b", gzip), (b"BZh", bz2), (b"\xfd7zXZ\x00", lzma))


@dataclass
class SourceReport:
    name: str
    kind: str
    format: str
    patterns: list[str]
    files: list[tuple[str, int]] = field(default_factory=list)
    sample_from: str | None = None
    #: Matched files that could not be read (path, why): `run` cannot read them either.
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    lines: int = 0
    parsed: int = 0
    unparsed: list[tuple[int, str]] = field(default_factory=list)
    first_fields: dict[str, Any] | None = None
    #: Lines continuing an entry (tracebacks): neither parsed nor failed.
    continuations: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "format": self.format,
            "paths": self.patterns,
            "files": [{"path": p, "size": s} for p, s in self.files],
            "sample": self.sample_from,
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "lines": self.lines,
            "parsed": self.parsed,
            "match_rate": round(self.parsed / self.lines, 4) if self.lines else None,
            "continuation_lines": self.continuations,
            "unparsed": [{"line": n, "reason": r} for n, r in self.unparsed],
            "first_record": self.first_fields,
            "warnings": self.warnings,
        }


class SampleError(TrackdError):
    """`--sample FILE` cannot be read (missing, unreadable, not a regular file): exit 3."""

    exit_code = EXIT_CONFIG


def _open_regular(path: str) -> BinaryIO:
    """`path` opened for reading if it is a regular file. O_NONBLOCK so that opening a FIFO never
    waits for a writer; fstat on the open descriptor, so what is checked is what is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SampleError(f"{path} is {_kind_of(mode)}, not a regular file (give a log file)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def _read_sample(
    path: str, limit: int, max_line: int = 64 * 1024, max_bytes: int = SAMPLE_BYTES
) -> list[bytes]:
    """The first `limit` lines of a plain, gzip, bzip2 or xz file (detected by content), each
    without its newline (a `\\r` before it is removed, as the pipeline does).

    Bounded whatever the file holds: at most `max_bytes` (decompressed) are read in all, and a
    line is kept to its first `max_line + 1` bytes — enough to report it as too long — with the
    rest skipped. Raises SampleError for anything but a regular file, OSError if it cannot be read.
    """
    raw = _open_regular(path)
    with raw:
        magic = raw.read(6)
        raw.seek(0)
        fh: Any = raw
        for prefix, module in _COMPRESSED:
            if magic.startswith(prefix):
                fh = module.open(raw, "rb")
        with fh:
            return _bounded_lines(fh, limit, max_line, max_bytes)


def _bounded_lines(fh: Any, limit: int, max_line: int, max_bytes: int) -> list[bytes]:
    lines: list[bytes] = []
    left = max_bytes
    while len(lines) < limit and left > 0:
        raw = fh.readline(min(max_line + 1, left))
        if not raw:
            break
        left -= len(raw)
        if raw.endswith(b"\n"):
            line = raw[:-1]
        else:
            line = raw
            # An overlong line: skip to its end without keeping it (still within max_bytes).
            while left > 0 and not raw.endswith(b"\n"):
                raw = fh.readline(min(_SKIP_BLOCK, left))
                if not raw:
                    break
                left -= len(raw)
        lines.append(line[:-1] if line.endswith(b"\r") else line)
    return lines


def _load_sample(path: str, max_line: int) -> list[bytes]:
    """`--sample FILE`'s lines, or SampleError saying why they cannot be read."""
    try:
        return _read_sample(path, SAMPLE_LINES, max_line)
    except SampleError:
        raise
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise SampleError(f"cannot read sample {path}: {_read_failure(exc)}") from None


def _read_failure(exc: Exception) -> str:
    """Why a sample could not be read, in the user's terms (not the decompressor's)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, EOFError):
        return "the compressed data ends early (the file is incomplete or truncated)"
    return "the compressed data is damaged (not a valid gzip, bzip2 or xz stream)"


def _sample_source(
    rep: SourceReport, parser: AccessParser | AppParser, lines: list[bytes], config: Config
) -> None:
    """Parse sample lines as the pipeline does (same skips, same decoding) into the report."""
    is_app = rep.kind == "app"
    masker = RecordMasker(config)
    for n, raw in enumerate(lines, 1):
        rep.lines += 1
        reason: str | None = None
        if len(raw) > config.max_line_bytes:
            # The sample keeps only the first max_line_bytes + 1 bytes of an overlong line.
            reason = f"longer than max_line_bytes ({config.max_line_bytes:,} bytes)"
        elif is_app:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"not UTF-8 (byte {exc.start + 1}): an app entry must be text"
        else:
            text = raw.decode("utf-8", "replace")
        rec = None if reason is not None else parser(text)
        if rec is None:
            if len(rep.unparsed) < SHOW_UNPARSED:
                rep.unparsed.append((n, reason or parser.explain(text)))
            continue
        if isinstance(rec, Continuation):
            rep.continuations += 1
            rep.lines -= 1
            continue
        rep.parsed += 1
        if rep.first_fields is None:
            rep.first_fields = masker(rec)


def check_sources(
    config: Config, sample: str | None, *, strict_sample: bool = False
) -> list[SourceReport]:
    """A report per source. `sample` (`--sample FILE`) is read once, for every source. A file
    that cannot be read is a warning in the report — or, for `sample` with `strict_sample` (the
    CLI: exit 3), SampleError."""
    sample_lines: list[bytes] | None = None
    sample_warning = ""
    if sample is not None:
        try:
            sample_lines = _load_sample(sample, config.max_line_bytes)
        except SampleError as exc:
            if strict_sample:
                raise
            sample_lines, sample_warning = [], str(exc)
    reports = []
    for src in config.sources:
        rep = SourceReport(src.name, src.kind, src.format, list(src.paths))
        found = expand(src.paths, src.exclude)
        rep.files = [(f.path, f.size) for f in found]
        if not found:
            rep.warnings.append(
                "no file matches these paths yet (trackd run waits for them to appear)"
            )
        if sample_lines is not None:
            assert sample is not None
            rep.sample_from, lines = sample, sample_lines
            if not lines and sample_warning:
                rep.warnings.append(sample_warning)
        else:
            rep.sample_from, lines = _sample_newest(rep, found, config.max_line_bytes)
        if rep.sample_from is not None:
            # The config was validated, so the parser builds (a bad format failed validation).
            _sample_source(rep, build_parser(src), lines, config)
        reports.append(rep)
    return reports


def _sample_newest(
    rep: SourceReport, found: list[Found], max_line: int
) -> tuple[str | None, list[bytes]]:
    """The lines of the newest (last modified) readable non-empty file, and its path; every
    matched file that cannot be read goes to `rep.unreadable` with the reason."""
    by_age: list[tuple[float, str]] = []
    for f in found:
        why = _unreadable_because(f.path)
        if why is not None:
            rep.unreadable.append((f.path, why))
        elif f.size > 0:
            by_age.append((_mtime(f.path), f.path))
    for _, path in sorted(by_age, key=lambda t: (-t[0], t[1])):
        try:
            return path, _load_sample(path, max_line)
        except SampleError as exc:
            rep.unreadable.append((path, str(exc).removeprefix(f"cannot read sample {path}: ")))
    if found and not by_age and not rep.unreadable:
        rep.warnings.append("every matched file is empty: nothing to sample yet")
    return None, []


def _unreadable_because(path: str) -> str | None:
    """Why this user cannot open `path` for reading (as `run` would), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        why = (exc.strerror or str(exc)).lower()
        if exc.errno in (errno.EACCES, errno.EPERM):
            why += (
                f" for this user (uid {os.getuid()}): trackd run cannot read it either "
                "(add the user trackd runs as to the file's group, e.g. adm)"
            )
        return why
    os.close(fd)
    return None


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def state_dir_warnings(state_dir: str) -> list[str]:
    """A state_dir others may list, read or write (group or other bits): its database holds
    emails and session ids. One that does not exist yet is fine: `run` creates it 0700."""
    try:
        mode = stat.S_IMODE(os.stat(state_dir).st_mode)
    except OSError:
        return []
    loose = mode & 0o066
    if not loose:
        return []
    who = " and ".join(w for w, bits in (("its group", 0o060), ("others", 0o006)) if loose & bits)
    what = " and ".join(w for w, bits in (("readable", 0o044), ("writable", 0o022)) if loose & bits)
    return [
        f"state_dir {state_dir} is {what} by {who} (mode {mode:04o}), and the state database "
        f"in it holds emails and session ids: chmod 700 {state_dir}"
    ]


def config_warnings(config: Config, reports: list[SourceReport]) -> list[str]:
    out = list(config.warnings)
    out.extend(state_dir_warnings(config.state_dir))
    if not config.sources:
        out.append("no sources configured: trackd reads nothing (add a sources: list, see SPEC §9)")
    by_file: dict[str, list[str]] = {}
    for rep in reports:
        for path, _ in rep.files:
            by_file.setdefault(path, []).append(rep.name)
    for path, names in sorted(by_file.items()):
        if len(names) > 1:
            out.append(f"{path} is matched by sources {', '.join(names)}: each reads it")
    return out


def _sink_lines(config: Config) -> list[str]:
    """Where messages go, checked without sending anything (no secret is shown)."""
    from agent.sinks.http import redact_url
    from agent.sinks.segment_wire import normalize_url

    sink = config.sink
    if isinstance(sink, FileSinkConfig):
        return [f"  sink: file -> {sink.path if sink.path != '-' else 'stdout'}"]
    out = [f"  sink: {sink.type} -> {redact_url(sink.url)}"]
    if isinstance(sink, SegmentSinkConfig):
        url, changed = normalize_url(sink.url)
        if changed:
            out.append(f"    the URL has no path: trackd posts to {redact_url(url)}")
        out.append(f"    auth: {sink.auth}, gzip: {'on' if sink.gzip else 'off'}")
    tls = "verification off" if sink.tls.insecure_skip_verify else "verified"
    if sink.tls.ca_file and not sink.tls.insecure_skip_verify:
        tls += f" against {sink.tls.ca_file}"
    out.append(
        f"    batches of {sink.batch.max_events} or every {sink.batch.max_wait:g}s, "
        f"{sink.concurrency} request(s) in flight, TLS {tls}"
        + (f", proxy {redact_url(sink.proxy)}" if sink.proxy else "")
    )
    out.append(
        f"    retries up to {sink.retry.max_age:g}s (backoff {sink.retry.initial_backoff:g}s to "
        f"{sink.retry.max_backoff:g}s); outbox up to {sink.outbox.max_events:,} messages / "
        f"{sink.outbox.max_bytes:,} bytes, then reading pauses"
    )
    return out


def render_text(config: Config, reports: list[SourceReport], warnings: list[str]) -> str:
    lines = [f"config OK: {config.config_path}"]
    for rep in reports:
        lines.append(
            f"  source {rep.name} ({rep.kind}, {rep.format}): {len(rep.patterns)} path pattern(s), "
            f"{len(rep.files)} file(s) matched"
        )
        lines.extend(f"    path {pattern}" for pattern in rep.patterns)
        for path, size in rep.files[:10]:
            lines.append(f"    {path}  ({size:,} bytes)")
        if len(rep.files) > 10:
            lines.append(f"    … and {len(rep.files) - 10} more")
        lines.extend(f"    cannot read {path}: {why}" for path, why in rep.unreadable)
        if rep.sample_from is not None:
            rate = f"{rep.parsed / rep.lines:.1%}" if rep.lines else "n/a (empty)"
            more = (
                f", {rep.continuations} continuation line(s) of multi-line entries"
                if rep.continuations
                else ""
            )
            lines.append(
                f"    sample {rep.sample_from}: {rep.parsed}/{rep.lines} lines parsed ({rate}){more}"
            )
            for n, reason in rep.unparsed:
                lines.append(f"      line {n}: {reason}")
            if rep.first_fields is not None:
                lines.append("    first parsed line:")
                for key, value in rep.first_fields.items():
                    lines.append(f"      {key}: {value}")
        lines.extend(f"    warning: {w}" for w in rep.warnings)
    lines.extend(_sink_lines(config))
    lines.append(f"  state_dir: {config.state_dir}")
    lines.extend(f"warning: {w}" for w in warnings)
    return "\n".join(lines)
