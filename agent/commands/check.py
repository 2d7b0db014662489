"""`trackd check [--sample FILE]`: validate the config and test-parse sample lines (SPEC §6).

Per source: the match rate on the sample (the first lines of `--sample FILE`, else of the
source's first non-empty file), the first unparsed lines with the reason, and the fields of the
first parsed line, masked as SPEC §8 requires (`masking.py`). Lines continuing a multi-line app
entry are counted apart: they are neither parsed nor failed.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from dataclasses import dataclass, field
from typing import Any

from agent.commands.masking import RecordMasker
from agent.config import Config, FileSinkConfig
from agent.config.schema import SegmentSinkConfig
from agent.parse import AccessParser, AppParser, build_parser
from agent.records import Continuation
from agent.sources.discovery import expand

SAMPLE_LINES = 1000
SHOW_UNPARSED = 5
_COMPRESSED = ((b"\x1f\x8b", gzip), (b"BZh", bz2), (b"\xfd7zXZ\x00", lzma))


@dataclass
class SourceReport:
    name: str
    kind: str
    format: str
    patterns: list[str]
    files: list[tuple[str, int]] = field(default_factory=list)
    sample_from: str | None = None
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
            "lines": self.lines,
            "parsed": self.parsed,
            "match_rate": round(self.parsed / self.lines, 4) if self.lines else None,
            "continuation_lines": self.continuations,
            "unparsed": [{"line": n, "reason": r} for n, r in self.unparsed],
            "first_record": self.first_fields,
            "warnings": self.warnings,
        }


def _read_sample(path: str, limit: int) -> list[bytes]:
    """The first `limit` lines of a plain, gzip, bzip2 or xz file (detected by content), each
    without its newline (a `\\r` before it is removed, as the pipeline does)."""
    with open(path, "rb") as probe:
        magic = probe.read(6)
    opener: Any = open
    for prefix, module in _COMPRESSED:
        if magic.startswith(prefix):
            opener = module.open
    lines: list[bytes] = []
    with opener(path, "rb") as fh:
        for raw in fh:
            line = raw[:-1] if raw.endswith(b"\n") else raw
            lines.append(line[:-1] if line.endswith(b"\r") else line)
            if len(lines) >= limit:
                break
    return lines


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
            reason = f"longer than max_line_bytes ({len(raw):,} > {config.max_line_bytes:,} bytes)"
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


def check_sources(config: Config, sample: str | None) -> list[SourceReport]:
    reports = []
    for src in config.sources:
        rep = SourceReport(src.name, src.kind, src.format, list(src.paths))
        found = expand(src.paths, src.exclude)
        rep.files = [(f.path, f.size) for f in found]
        if not found:
            rep.warnings.append(
                "no file matches these paths yet (trackd run waits for them to appear)"
            )
        for f in found:
            if not os.access(f.path, os.R_OK):
                rep.warnings.append(f"{f.path}: not readable by this user (uid {os.getuid()})")
        path = sample or next((f.path for f in found if f.size > 0), None)
        if path is not None:
            rep.sample_from = path
            try:
                lines = _read_sample(path, SAMPLE_LINES)
            except (OSError, EOFError, lzma.LZMAError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                rep.warnings.append(f"cannot read sample {path}: {detail}")
                lines = []
            # The config was validated, so the parser builds (a bad format failed validation).
            _sample_source(rep, build_parser(src), lines, config)
        reports.append(rep)
    return reports


def config_warnings(config: Config, reports: list[SourceReport]) -> list[str]:
    out = list(config.warnings)
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
        for path, size in rep.files[:10]:
            lines.append(f"    {path}  ({size:,} bytes)")
        if len(rep.files) > 10:
            lines.append(f"    … and {len(rep.files) - 10} more")
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
