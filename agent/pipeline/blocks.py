"""Lines of one source's block in, prepared records out: decode, parse, prepare, count.

The same code serves the pipeline thread (tailing) and the worker processes of `run --once` and
backfill (`workers.py`): it keeps no state between blocks but its parsers' caches and counters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import structlog

from agent.config import Config, SourceConfig
from agent.parse import AccessParser, AppParser, build_parser
from agent.pipeline import kernel
from agent.pipeline.prepare import Prepared, Preparer
from agent.pipeline.stats import PipelineStats
from agent.records import Continuation, FileRef

SAMPLE_MAX = 20
log = structlog.get_logger("trackd.blocks")


class SourceContext:
    """What preparing needs per source: its kind and parser, and its native kernel (or why it
    has none: the pure path then does every line)."""

    __slots__ = ("is_app", "kernel", "kernel_why", "name", "parser")

    def __init__(self, src: SourceConfig) -> None:
        self.name = src.name
        self.is_app = src.kind == "app"
        self.parser: AccessParser | AppParser = build_parser(src)
        self.kernel: kernel.SourceKernel | None = None
        self.kernel_why = "not built yet"


class BlockPreparer:
    """Parse and prepare blocks of lines, counting what produces nothing."""

    def __init__(self, config: Config, preparer: Preparer, stats: PipelineStats) -> None:
        self.sources = {s.name: SourceContext(s) for s in config.sources}
        self.preparer = preparer
        self.stats = stats
        self.max_line = config.max_line_bytes
        self._kernels()

    def reload_sources(
        self, sources: tuple[SourceConfig, ...], old: tuple[SourceConfig, ...]
    ) -> None:
        """Contexts for added or changed sources; unchanged ones keep theirs (and its caches)."""
        before = {s.name: s for s in old}
        self.sources = {
            s.name: self.sources[s.name] if before.get(s.name) == s else SourceContext(s)
            for s in sources
        }
        self._kernels()  # new caches: a reload may change how pages are encoded

    def _kernels(self) -> None:
        for ctx in self.sources.values():
            if ctx.is_app:
                ctx.kernel, ctx.kernel_why = None, "an app source"
            else:
                ctx.kernel, ctx.kernel_why = kernel.build(
                    self.preparer, ctx.name, ctx.parser, self.max_line
                )
            log.debug(
                "native_kernel",
                source=ctx.name,
                on=ctx.kernel is not None,
                why=ctx.kernel_why or None,
            )

    def block(
        self, where: FileRef, start: int, end: int, block: bytes, too_long: int = 0
    ) -> Iterator[Prepared]:
        """The prepared records of consecutive complete lines, at least one, joined by `\\n` as
        read (without the last one's); the first starts at byte `start`, `end` is the offset just
        past the last. Lines that produce nothing (static assets, opt-outs, unparsable lines)
        are counted, not yielded. The native kernel takes the block as it is; the pure path
        splits it."""
        source = where.source
        ctx = self.sources[source]
        if ctx.kernel is None:
            yield from self._pure(where, start, end, block.split(b"\n"), too_long)
            return
        if too_long:
            self._skip(source, "too_long", "", too_long)
        self.stats.lines[source] += block.count(b"\n") + 1 + too_long
        for item in ctx.kernel.run(where, start, end, block):
            if len(item) == 3:  # (line, start, end): a line the kernel leaves to us
                prepared = self._line(ctx, where, item[1], item[2], item[0])
                if prepared is not None:
                    yield prepared
            else:
                yield item

    def _pure(
        self, where: FileRef, start: int, end: int, lines: list[bytes], too_long: int
    ) -> Iterator[Prepared]:
        source = where.source
        ctx = self.sources[source]
        if too_long:
            self._skip(source, "too_long", "", too_long)
        self.stats.lines[source] += len(lines) + too_long
        one = self._line
        offset = start
        for line in lines:
            lo = offset
            offset = lo + len(line) + 1
            if offset > end:
                offset = end
            prepared = one(ctx, where, lo, offset, line)
            if prepared is not None:
                yield prepared

    def _line(
        self, ctx: SourceContext, where: FileRef, lo: int, offset: int, line: bytes
    ) -> Prepared | None:
        """One line the pure way: too long, undecodable (app), unparsable and continuation
        lines are counted; the rest prepared."""
        source = ctx.name
        if len(line) > self.max_line:
            self._skip(source, "too_long", "")
            return None
        body = line[:-1] if line[-1:] == b"\r" else line
        if ctx.is_app:
            # An app entry whose bytes are not UTF-8 has no trustworthy structure (SPEC §2).
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                self._skip(source, "encoding", "")
                return None
        else:
            text = body.decode("utf-8", "replace")
        rec = ctx.parser(text)
        if rec is None:
            self._skip(source, "parse_error", text, explain=ctx.parser)
            return None
        if isinstance(rec, Continuation):
            self.stats.continuations[source] += 1
            return None
        return self.preparer.prepare(where, lo, offset, line, rec)

    def count_too_long(self, source: str, n: int) -> None:
        """Over-long lines the splitter dropped while they streamed in (no line to parse)."""
        self.stats.lines[source] += n
        self._skip(source, "too_long", "", n)

    def _skip(
        self,
        source: str,
        reason: str,
        text: str,
        n: int = 1,
        explain: AccessParser | AppParser | None = None,
    ) -> None:
        self.stats.skipped[(source, reason)] += n
        sample = self.stats.samples.setdefault(source, deque(maxlen=SAMPLE_MAX))
        if len(sample) < SAMPLE_MAX and explain is not None:
            sample.append((reason, explain.explain(text)))
