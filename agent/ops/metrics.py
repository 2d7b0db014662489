"""Prometheus metrics (SPEC §7) and the /metrics + /healthz server.

Every metric is exported from start-up; labelled ones are initialised to 0 for each configured
source, sink and rule and each documented label value, so dashboards and alerts see a series
before the first event. Counters are fed from the pipeline's and sender's tallies (`sync`), never
per line.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agent.config import Config
from agent.errors import StartupError
from agent.sinks.base import FAILURE_REASONS

log = structlog.get_logger("trackd.metrics")

SKIP_REASONS = ("parse_error", "too_long", "encoding", "too_old", "future")
MESSAGE_TYPES = ("page", "track", "identify", "alias")
IDENTITY_KINDS = ("device", "named", "derived", "session")
DROP_REASONS = (
    "cookieless",
    "optout",
    "rotated_hold",
    "identity_cap",
    "state_unavailable",
    "sink_unavailable",
)
RULE_SKIP_REASONS = ("no_user", "junk_user", "no_session_or_device")


class DeliveryTallies(Protocol):
    """What a sender counts (agent/sinks/sender.py `SenderStats`)."""

    @property
    def failures(self) -> Mapping[str, int]: ...

    @property
    def dead_letters(self) -> int: ...


class Metrics:
    def __init__(self, config: Config) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        sources = [s.name for s in config.sources]
        sink = config.sink.type
        self.lines = Counter("trackd_lines", "Lines read", ["source"], registry=r)
        self.skipped = Counter(
            "trackd_lines_skipped",
            "Lines that produced no record",
            ["source", "reason"],
            registry=r,
        )
        self.messages = Counter("trackd_messages", "Messages produced", ["type"], registry=r)
        self.sent = Counter(
            "trackd_sent", "Messages acknowledged by the sink", ["sink"], registry=r
        )
        self.send_failures = Counter(
            "trackd_send_failures", "Failed delivery attempts", ["sink", "reason"], registry=r
        )
        self.outbox_messages = Gauge("trackd_outbox_messages", "Messages in the outbox", registry=r)
        self.outbox_oldest = Gauge(
            "trackd_outbox_oldest_seconds", "Age of the oldest outbox message", registry=r
        )
        self.file_lag = Gauge(
            "trackd_file_lag_bytes", "Bytes not yet read", ["source", "path"], registry=r
        )
        self.identities = Gauge("trackd_identities", "Known identities", ["kind"], registry=r)
        self.aliases = Counter("trackd_aliases", "Alias messages emitted", registry=r)
        self.conflicts = Counter(
            "trackd_identity_conflicts", "Logins on a device bound to someone else", registry=r
        )
        self.dead_letters = Counter("trackd_dead_letters", "Messages dead-lettered", registry=r)
        self.truncation_gap = Counter(
            "trackd_truncation_gap_lines",
            "Lines lost to truncation (estimate)",
            ["source"],
            registry=r,
        )
        self.junk = Counter(
            "trackd_identity_junk", "Junk identifiers discarded", ["kind"], registry=r
        )
        self.rule_skipped = Counter(
            "trackd_rule_skipped",
            "Rules that matched but emitted nothing",
            ["rule", "reason"],
            registry=r,
        )
        self.km_collapsed = Counter(
            "trackd_km_collapsed", "Kissmetrics _t seconds that could not be spread", registry=r
        )
        self.degraded = Counter(
            "trackd_identity_degraded", "Resolutions from the local cache only", registry=r
        )
        # reason="state_unavailable" counts chunk commits the state database refused: reading
        # pauses and the chunk is retried, so those lines are held back, never lost.
        self.dropped = Counter(
            "trackd_dropped", "Records dropped or held back on purpose", ["reason"], registry=r
        )
        self.km_properties_dropped = Counter(
            "trackd_km_properties_dropped",
            "Kissmetrics properties dropped (a `_` name, or a name that cleans to another's)",
            registry=r,
        )

        for s in sources:
            self.lines.labels(s)
            self.truncation_gap.labels(s)
            for reason in SKIP_REASONS:
                self.skipped.labels(s, reason)
        for t in MESSAGE_TYPES:
            self.messages.labels(t)
        self.sent.labels(sink)
        for reason in FAILURE_REASONS:
            self.send_failures.labels(sink, reason)
        for kind in IDENTITY_KINDS:
            self.identities.labels(kind)
        for kind in ("device", "named", "session"):
            self.junk.labels(kind)
        for rule in config.events.rules:
            for reason in RULE_SKIP_REASONS:
                self.rule_skipped.labels(rule.name, reason)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self._seen: dict[tuple[str, Any], float] = {}

    def add(self, key: str, labels: tuple[str, ...], total: float, counter: Any) -> None:
        """Advance `counter` to the cumulative `total` (tallies are cumulative, counters too)."""
        prev = self._seen.get((key, labels), 0.0)
        if total > prev:
            (counter.labels(*labels) if labels else counter).inc(total - prev)
            self._seen[(key, labels)] = total

    def sync(
        self,
        *,
        lines: Mapping[str, int],
        skipped: Mapping[tuple[str, str], int],
        messages: Mapping[str, int],
        dropped: Mapping[str, int],
        junk: Mapping[str, int],
        rule_skipped: Mapping[tuple[str, str], int],
        identity: Mapping[str, int],
        sent: int,
        sink: str,
        delivery: DeliveryTallies | None = None,
        outbox_level: tuple[int, float | None] | None = None,
        km_collapsed: int = 0,
        km_properties_dropped: int = 0,
        degraded: int = 0,
    ) -> None:
        """Bring every counter up to the cumulative tallies of the pipeline and sender."""
        for source, n in lines.items():
            self.add("lines", (source,), n, self.lines)
        for (source, reason), n in skipped.items():
            self.add("skipped", (source, reason), n, self.skipped)
        for kind, n in messages.items():
            self.add("messages", (kind,), n, self.messages)
        for reason, n in dropped.items():
            self.add("dropped", (reason,), n, self.dropped)
        for kind, n in junk.items():
            self.add("junk", (kind,), n, self.junk)
        for (rule, reason), n in rule_skipped.items():
            self.add("rule_skipped", (rule, reason), n, self.rule_skipped)
        self.add("aliases", (), identity.get("aliases", 0), self.aliases)
        self.add("conflicts", (), identity.get("conflicts", 0), self.conflicts)
        self.add("dropped", ("identity_cap",), identity.get("identity_cap", 0), self.dropped)
        self.add("sent", (sink,), sent, self.sent)
        if delivery is not None:
            for reason, n in delivery.failures.items():
                self.add("send_failures", (sink, reason), n, self.send_failures)
            self.add("dead_letters", (), delivery.dead_letters, self.dead_letters)
        if outbox_level is not None:
            depth, oldest = outbox_level
            self.outbox_messages.set(depth)
            self.outbox_oldest.set(0.0 if oldest is None else max(0.0, time.time() - oldest))
        self.add("km_collapsed", (), km_collapsed, self.km_collapsed)
        self.add("km_properties_dropped", (), km_properties_dropped, self.km_properties_dropped)
        self.add("degraded", (), degraded, self.degraded)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """A tiny HTTP/1.1 server for GET /metrics and GET /healthz (loopback by default)."""

    def __init__(
        self, listen: str, metrics: Metrics, health: Callable[[], tuple[bool, str]]
    ) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]") or "127.0.0.1"
        self._port = int(port)
        self._metrics = metrics
        self._health = health
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen, or raise StartupError (exit 3) naming the address and the key to change."""
        try:
            self._server = await asyncio.start_server(self._handle, self._host, self._port)
        except OSError as exc:
            address = f"{self._host}:{self._port}"
            why = exc.strerror or str(exc)
            hint = (
                "another process listens there; stop it, or choose another port"
                if exc.errno == errno.EADDRINUSE
                else "check the address"
            )
            raise StartupError(
                f"metrics.listen: cannot listen on {address}: {why} "
                f'({hint} in metrics.listen, or set it to "" to disable the metrics server)'
            ) from None
        log.info("metrics_listening", address=f"{self._host}:{self.port}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            if path.split("?")[0] == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self._metrics.render()
            elif path.split("?")[0] == "/healthz":
                ok, reason = self._health()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "text/plain; charset=utf-8", (reason + "\n").encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\nDate: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}"
                "\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
