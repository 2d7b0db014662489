"""Hypothesis strategies shared by parser and identity property tests."""

from __future__ import annotations

from hypothesis import strategies as st

#: Arbitrary bytes as a log line may hold them (no newline: the splitter removed it).
line_bytes = st.binary(max_size=600).map(lambda b: b.replace(b"\n", b""))

#: Text that looks a bit like a log line, to reach deeper into the regexes.
loggy_text = st.text(
    alphabet=st.sampled_from(
        list('0123456789 .:/-[]"+?&=;%\\xabcdefGHIJKLMNOPQRSTUVWXYZ\t\r\x00é')
    ),
    max_size=300,
)
