"""Counting for the fault matrix (bench/faults.py): what came out against what went in, by line
identity. Every generated access line carries a unique sequence number in its path (`/p/<seq>`),
so each message a sink delivered names the line it came from.

- The file sink is exactly-once (SPEC §4): any second copy of a line is a duplicate.
- An HTTP sink is at-least-once with stable ids (SPEC §4, §5.2): a line acknowledged twice with
  the same messageId and bytes (Kissmetrics: the same query, `_t` included) is a *re-send* the
  endpoint drops; a line that reached the endpoint under two ids or two encodings is a duplicate.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.receiver import Receiver, Request

_SEQ = re.compile(r"/p/(\d+)\b")
_SEQ_BYTES = re.compile(rb'"GET /p/(\d+) ')


@dataclass(frozen=True)
class Tally:
    """One fault's count. `lines`: lines written where a reader could find them; `out`:
    messages delivered (acknowledged), repeats included; `dup`: copies a receiver cannot drop;
    `lost`: lines never delivered; `resent`: same-id copies acknowledged again; `extra`:
    messages for no line written."""

    lines: int
    out: int
    dup: int
    lost: int
    resent: int = 0
    extra: int = 0


def seq_of(path: str) -> int | None:
    """The sequence number in a page path (`/p/123`), or None."""
    m = _SEQ.search(path)
    return int(m.group(1)) if m else None


def seqs_in_log_bytes(data: bytes) -> set[int]:
    """The sequence numbers of the complete access lines in `data` (a log file's bytes)."""
    complete = data[: data.rfind(b"\n") + 1]
    return {int(m.group(1)) for m in _SEQ_BYTES.finditer(complete)}


def _tally(expected: set[int], acked: dict[int, list[bytes]], sent: dict[int, set[bytes]]) -> Tally:
    """`acked`: per line, the version (id + bytes) of each acknowledged copy; `sent`: per line,
    every version that reached the endpoint (acknowledged or not)."""
    out = sum(len(v) for v in acked.values())
    dup = sum(len(versions) - 1 for versions in sent.values())
    resent = sum(len(v) - len(set(v)) for v in acked.values())
    lost = len(expected - set(acked))
    extra = len(set(sent) - expected)
    return Tally(len(expected), out, dup, lost, resent, extra)


def file_sink(out: Path, expected: Iterable[int]) -> Tally:
    """The file sink's output (complete lines only): every copy of a line past the first is a
    duplicate, whatever its messageId."""
    copies: Counter[int] = Counter()
    if out.exists():
        data = out.read_bytes()
        for raw in data[: data.rfind(b"\n") + 1].splitlines():
            msg: dict[str, Any] = orjson.loads(raw)
            seq = seq_of(msg["properties"]["path"]) if msg.get("type") == "page" else None
            if seq is not None:
                copies[seq] += 1
    wanted = set(expected)
    return Tally(
        lines=len(wanted),
        out=copies.total(),
        dup=sum(n - 1 for n in copies.values()),
        lost=len(wanted - set(copies)),
        extra=len(set(copies) - wanted),
    )


def _acknowledged(req: Request) -> bool:
    r = req.response
    return r is not None and r.action == "respond" and 200 <= r.status < 300


def segment(rx: Receiver, expected: Iterable[int]) -> Tally:
    """A Segment receiver: the page messages of each request's `batch`, a version being the
    messageId and the message's bytes."""
    acked: dict[int, list[bytes]] = {}
    sent: dict[int, set[bytes]] = {}
    for req in rx.requests:
        body = req.json if isinstance(req.json, dict) else {}
        for msg in body.get("batch", []):
            if msg.get("type") != "page":
                continue
            seq = seq_of(msg["properties"]["path"])
            if seq is None:
                continue
            version = orjson.dumps(msg)
            sent.setdefault(seq, set()).add(version)
            if _acknowledged(req):
                acked.setdefault(seq, []).append(version)
    return _tally(set(expected), acked, sent)


def kissmetrics(rx: Receiver, expected: Iterable[int]) -> Tally:
    """A Kissmetrics receiver: each `/e` request is one page view (`Viewed URL`), a version being
    its whole query or form body (`_t` included: the same bytes are dropped by Kissmetrics)."""
    acked: dict[int, list[bytes]] = {}
    sent: dict[int, set[bytes]] = {}
    for req in rx.requests:
        if req.path != "/e":
            continue
        seq = seq_of(req.params.get("Viewed URL", ""))
        if seq is None:
            continue
        version = req.query.encode() + b"|" + req.decoded
        sent.setdefault(seq, set()).add(version)
        if _acknowledged(req):
            acked.setdefault(seq, []).append(version)
    return _tally(set(expected), acked, sent)


def http_sink(kind: str, rx: Receiver, expected: Iterable[int]) -> Tally:
    """`segment` or `kissmetrics`, by the sink's type."""
    return segment(rx, expected) if kind == "segment" else kissmetrics(rx, expected)


def committed_ids_twice(out: Path, committed: int) -> int:
    """messageIds present twice within the first `committed` bytes of a file sink's output (what
    the state says was delivered; bytes past it are a crash's leftovers, cut at the next start)."""
    data = out.read_bytes()[:committed] if out.exists() else b""
    ids = Counter(orjson.loads(raw).get("messageId") for raw in data.splitlines() if raw)
    return sum(n - 1 for n in ids.values() if n > 1)
