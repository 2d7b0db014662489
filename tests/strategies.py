"""Hypothesis strategies shared by parser and identity property tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

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

#: Text as a header may carry it once decoded: any characters but surrogates, never exactly
#: `-` (servers write `-` for an empty value, so a literal `-` cannot round-trip).
header_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40).filter(
    lambda s: s != "-"
)

#: A request target without spaces: paths with queries, quotes, backslashes, `%`, UTF-8.
target_text = st.builds(
    lambda path, query: "/" + path + (f"?{query}" if query else ""),
    st.text(
        st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), exclude_characters="?"),
        max_size=20,
    ),
    st.text(st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), max_size=20),
)

#: An aware time in a whole-minute offset between -12:00 and +14:00.
aware_times = st.builds(
    lambda dt, minutes: dt.replace(microsecond=0, tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(2009, 1, 2), max_value=datetime(2090, 1, 1)),
    st.integers(min_value=-12 * 60, max_value=14 * 60),
)

addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
methods = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"])
cookie_values = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='";\\,'),
    min_size=1,
    max_size=30,
).filter(lambda s: s != "-")
