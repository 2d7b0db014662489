"""`trackd check [--sample FILE]`: validate the config and test-parse sample lines (SPEC §6)."""

from __future__ import annotations

import gzip
import os
import time
from dataclasses import dataclass, field
from typing import Any

from agent.config import Config, FileSinkConfig
from agent.parse import AccessParser, AppParser, build_access_parser, build_app_parser
from agent.parse.cookies import parse_cookie_header
from agent.records import AppRecord, Continuation
from agent.sources.discovery import expand

SAMPLE_LINES = 1000
SHOW_UNPARSED = 5


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
    opener: Any = gzip.open if path.endswith(".gz") else open
    lines: list[bytes] = []
    with opener(path, "rb") as fh:
        for raw in fh:
            lines.append(raw.rstrip(b"\n"))
            if len(lines) >= limit:
                break
    return lines


def _mask(value: str) -> str:
    if len(value) <= 4:
        return "****"
    return value[:2] + "…" + f"({len(value)} chars)"


def record_fields(rec: Any) -> dict[str, Any]:
    """The fields of a parsed record as `check` shows them: cookie values masked."""
    out: dict[str, Any] = {}
    if isinstance(rec, AppRecord):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec.ts))
        return {"time": f"{stamp}Z", **rec.fields}
    for name in rec._fields:
        value = getattr(rec, name)
        if name == "ts":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(value))
            frac = f".{round((value % 1) * 1000):03d}" if rec.precision < 1 else ""
            out["time"] = f"{stamp}{frac}Z"
        elif name == "precision":
            continue
        elif name == "cookie_header":
            jar = parse_cookie_header(value)
            out["cookie"] = {k: _mask(v) for k, v in jar.items()}
        elif name == "cookies":
            if value:
                out["cookie"] = {**out.get("cookie", {}), **{k: _mask(v) for k, v in value.items()}}
        elif value not in (None, "", {}):
            out[name] = value
    return out


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
            parser: AccessParser | AppParser = (
                build_app_parser(
                    src.format,
                    time_field=src.time_field,
                    time_format=src.time_format,
                    timezone=src.timezone,
                )
                if src.kind == "app"
                else build_access_parser(src.format, src.log_format)
            )
            try:
                lines = _read_sample(path, SAMPLE_LINES)
            except OSError as exc:
                rep.warnings.append(f"cannot read sample {path}: {exc.strerror}")
                lines = []
            for n, raw in enumerate(lines, 1):
                text = raw.rstrip(b"\r").decode("utf-8", "replace")
                rep.lines += 1
                rec = parser(text)
                if rec is None:
                    if len(rep.unparsed) < SHOW_UNPARSED:
                        rep.unparsed.append((n, parser.explain(text)))
                    continue
                if isinstance(rec, Continuation):
                    rep.continuations += 1
                    rep.lines -= 1
                    continue
                rep.parsed += 1
                if rep.first_fields is None:
                    rep.first_fields = record_fields(rec)
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
    sink = config.sink
    where = (
        (sink.path if sink.path != "-" else "stdout") if isinstance(sink, FileSinkConfig) else ""
    )
    lines.append(f"  sink: {sink.type}{' -> ' + where if where else ''}")
    lines.append(f"  state_dir: {config.state_dir}")
    lines.extend(f"warning: {w}" for w in warnings)
    return "\n".join(lines)
