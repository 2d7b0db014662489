"""`sink.type` -> the sink it names (SPEC §4): a `DirectSink` the pipeline writes in its commits,
or an `HttpSink` that a `Sender` feeds from the outbox, with the `Stamper` it needs (if any)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.config import Config
from agent.config.schema import FileSinkConfig, KissmetricsSinkConfig, SegmentSinkConfig
from agent.errors import StartupError
from agent.sinks.base import DirectSink, HttpSink, Stamper
from agent.sinks.file import FileSink
from agent.sinks.kissmetrics import build as _kissmetrics
from agent.sinks.segment import build as _segment


@dataclass(frozen=True, slots=True)
class SinkParts:
    """Exactly one of `direct` and `http` is set."""

    direct: DirectSink | None = None
    http: HttpSink | None = None
    #: Assigns the sink's own field to outbox rows as the pipeline writes them.
    stamper: Stamper | None = None

    @property
    def name(self) -> str:
        sink = self.direct if self.direct is not None else self.http
        assert sink is not None
        return sink.name

    def counter(self, name: str) -> int:
        """A count a sink or its stamper keeps (`collapsed`, `properties_dropped`), 0 when it
        keeps none: the metrics of SPEC §7 read them without knowing the sink type."""
        total = 0
        for part in (self.direct, self.http, self.stamper):
            value = getattr(part, name, 0)
            if isinstance(value, int):
                total += value
        return total

    def describe(self) -> str:
        sink = self.direct if self.direct is not None else self.http
        assert sink is not None
        return sink.describe()


def _file(config: Config) -> SinkParts:
    assert isinstance(config.sink, FileSinkConfig)
    return SinkParts(direct=FileSink(config.sink.path))


#: One builder per `sink.type`; an HTTP sink registers here as it is built.
BUILDERS: dict[type, Callable[[Config], SinkParts]] = {
    FileSinkConfig: _file,
    KissmetricsSinkConfig: _kissmetrics,
    SegmentSinkConfig: _segment,
}


def build_sink(config: Config) -> SinkParts:
    builder = BUILDERS.get(type(config.sink))
    if builder is None:
        raise StartupError(
            f"sink type {config.sink.type!r} is not supported yet by this version of trackd"
        )
    return builder(config)
