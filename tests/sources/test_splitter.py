"""Cutting bytes into lines (SPEC §2, SCENARIOS.md §A 26-28 at the unit level)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sources.splitter import LineSplitter, Split

MAX = 1024


def _feed_all(chunks: list[bytes], max_line: int = MAX) -> tuple[list[bytes], int, LineSplitter]:
    sp = LineSplitter(0, max_line)
    lines: list[bytes] = []
    too_long = 0
    for chunk in chunks:
        split = sp.feed(chunk)
        if split is not None:
            lines.extend(split.lines)
            too_long += split.too_long
    return lines, too_long, sp


class TestLineSplitter:
    def test_partial_line_waits_for_its_newline(self) -> None:
        """A line without its newline is held, then returned whole with its offsets."""
        sp = LineSplitter(100, MAX)
        assert sp.feed(b"abc") is None
        assert sp.pending_bytes == 3
        assert sp.feed(b"def\nxy") == Split(100, [b"abcdef"], 107, 0, b"abcdef\n")
        assert sp.offset == 107 and sp.pending_bytes == 2

    def test_crlf_keeps_its_cr_and_a_lone_cr_is_data(self) -> None:
        """Only `\\n` ends a line: CRLF lines keep the `\\r` (the pipeline strips it), a lone `\\r`
        stays inside the line."""
        lines, _, _ = _feed_all([b"a\r\nb\rc\n"])
        assert lines == [b"a\r", b"b\rc"]

    def test_torn_write_at_a_4k_boundary_emits_no_fragment(self) -> None:
        """S28: a line written in two pieces split at 4096 bytes comes out once, whole."""
        line = b"x" * 5000 + b"\n"
        sp = LineSplitter(0, 8192)
        assert sp.feed(line[:4096]) is None
        split = sp.feed(line[4096:])
        assert split is not None and split.lines == [line[:-1]]

    def test_endless_line_is_dropped_while_streaming_and_counted_once(self) -> None:
        """S26: a 100 MiB line with no newline keeps memory bounded (nothing buffered past the
        limit) and is counted once when its newline arrives; the next line is read."""
        sp = LineSplitter(0, MAX)
        block = b"z" * (1 << 20)
        for _ in range(100):
            assert sp.feed(block) is None
            assert len(sp.take_partial()) == 0  # nothing is being buffered
        split = sp.feed(b"zz\nnext\n")
        assert split is not None
        assert split.too_long == 1 and split.lines == [b"next"]
        assert split.start == 100 * (1 << 20) + 3
        assert sp.offset == split.end == 100 * (1 << 20) + 8

    def test_final_overlong_line_without_newline_is_skipped_when_flushed(self) -> None:
        """A rotated file ending in an over-long line without a newline: `take_dropping` moves
        past it (the caller counts it as too long)."""
        sp = LineSplitter(0, MAX)
        sp.feed(b"y" * 5000)
        assert sp.take_dropping() == 5000 and sp.offset == 5000

    @given(
        st.lists(st.binary(max_size=300), max_size=30),
        st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=20),
    )
    def test_any_chunking_gives_the_same_lines(self, parts: list[bytes], cuts: list[int]) -> None:
        """However bytes are chunked, the complete lines are those of the whole stream, minus the
        over-long ones (counted), and NUL or invalid UTF-8 never raises."""
        data = b"\n".join(parts) + b"\n"
        chunks, i, k = [], 0, 0
        while i < len(data):
            step = cuts[k % len(cuts)]
            chunks.append(data[i : i + step])
            i += step
            k += 1
        lines, too_long, sp = _feed_all(chunks, max_line=256)
        expected = data.split(b"\n")[:-1]
        long_ones = [x for x in expected if len(x) > 256]
        assert [x for x in lines if len(x) <= 256] == [x for x in expected if len(x) <= 256]
        # An over-long line is either dropped while streaming (counted) or left to the pipeline.
        assert too_long + sum(1 for x in lines if len(x) > 256) == len(long_ones)
        assert sp.offset == len(data)


@pytest.mark.parametrize("max_line", [256, 65536])
def test_offsets_cover_every_byte(max_line: int) -> None:
    """Each split starts where the previous ended: positions never skip or repeat a byte."""
    data = b"".join(b"line %d\n" % i for i in range(5000))
    sp = LineSplitter(0, max_line)
    pos = 0
    for i in range(0, len(data), 777):
        split = sp.feed(data[i : i + 777])
        if split is not None:
            assert split.start == pos
            pos = split.end
    assert pos == len(data)
