"""The Segment batch wire format: envelope, limits, 400 bodies, bisection (SPEC §4 `segment`)."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sinks.segment_wire import (
    MAX_MESSAGE_BYTES,
    MAX_REASON_CHARS,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_MESSAGES,
    SENT_AT_LENGTH,
    BatchError,
    SegmentEnvelope,
    auth_headers,
    bisect,
    match_errors,
    normalize_url,
    oversized,
    parse_errors,
    sent_at,
    split_requests,
    user_agent,
)

#: Lines of /tmp/demo_sample.jsonl as `make demo` writes them (page, track, identify, alias),
#: copied here so the tests do not depend on a demo run.
DEMO = (
    b'{"type":"page","messageId":"9c327094-e176-588f-9fd5-1574c0df55a3","timestamp":"2026-11-27T08:00:00.000Z","anonymousId":"qFq2LweZugFNE4o49hLhmRPBW34","properties":{"path":"/","search":"","url":"https://shop.example.com/","referrer":"https://www.google.com/"},"context":{"ip":"203.0.113.0","userAgent":"Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0","page":{"path":"/","search":"","url":"https://shop.example.com/","referrer":"https://www.google.com/"},"identity":{"resolution":"device","contested":false},"source":{"name":"web","file":"/work/main/config/samples/access.log","offset":0}}}',
    b'{"type":"track","messageId":"26f24915-aeeb-59d6-8df7-82bf66f1ad2e","timestamp":"2026-11-27T08:00:14.000Z","anonymousId":"qFq2LweZugFNE4o49hLhmRPBW34","event":"Viewed Pricing","properties":{"plan":"pro"},"context":{"ip":"203.0.113.0","userAgent":"Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0","page":{"path":"/pricing","search":"?utm_source=newsletter&plan=pro","url":"https://shop.example.com/pricing?utm_source=newsletter&plan=pro","referrer":"https://shop.example.com/"},"identity":{"resolution":"device","contested":false},"source":{"name":"web","file":"/work/main/config/samples/access.log","offset":695}}}',
    b'{"type":"identify","messageId":"1de232c2-6f4e-5401-ae25-a39084a250e2","timestamp":"2026-11-27T08:00:47.120Z","userId":"alice@example.com","anonymousId":"qFq2LweZugFNE4o49hLhmRPBW34","traits":{"email":"Alice@Example.com","user_id":1042},"context":{"identity":{"resolution":"named","contested":false},"source":{"name":"app","file":"/work/main/config/samples/app.log","offset":0}}}',
    b'{"type":"alias","messageId":"145a876f-de5c-5b54-a367-3ed97d682d49","timestamp":"2026-11-27T08:00:47.120Z","userId":"alice@example.com","previousId":"qFq2LweZugFNE4o49hLhmRPBW34","context":{"identity":{"resolution":"named","contested":false},"source":{"name":"app","file":"/work/main/config/samples/app.log","offset":0}}}',
)
STAMP = "2026-11-27T08:00:47.120Z"
LIBRARY = {"library": {"name": "trackd", "version": "0.1.0"}}

#: JSON values orjson encodes (no NaN/inf, 64-bit ints, no lone surrogates).
_text = st.text(st.characters(codec="utf-8"), max_size=20)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
#: Messages as the outbox holds them: compact JSON objects.
messages = st.lists(st.dictionaries(_text, _json, max_size=5).map(orjson.dumps), max_size=20)


def decoded(body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    assert isinstance(doc, dict)
    return doc


class TestSentAt:
    def test_iso_utc_with_milliseconds(self) -> None:
        """A wall-clock time renders as ISO 8601 UTC with milliseconds and a `Z`."""
        assert sent_at(1_795_766_447.12) == "2026-11-27T08:00:47.120Z"

    def test_milliseconds_are_truncated(self) -> None:
        """Sub-millisecond digits are dropped, never rounded up into the next second."""
        assert sent_at(1_795_766_447.9999) == "2026-11-27T08:00:47.999Z"

    def test_epoch(self) -> None:
        """Time zero is the Unix epoch, zero-padded."""
        assert sent_at(0.0) == "1970-01-01T00:00:00.000Z"

    @given(st.floats(min_value=0, max_value=253_402_300_799))
    def test_fixed_width(self, now: float) -> None:
        """Every sentAt up to the year 9999 has the same width, so the overhead is a constant."""
        assert len(sent_at(now)) == SENT_AT_LENGTH


class TestEnvelopeBody:
    def test_exact_bytes(self) -> None:
        """The body is the batch, sentAt and library context, with messages joined verbatim."""
        body = SegmentEnvelope("0.1.0", None, gzip=False).body(DEMO[:2], STAMP)
        assert body == (
            b'{"batch":[' + DEMO[0] + b"," + DEMO[1] + b'],"sentAt":"2026-11-27T08:00:47.120Z",'
            b'"context":{"library":{"name":"trackd","version":"0.1.0"}}}'
        )

    def test_parses_as_the_spec_shape(self) -> None:
        """The demo messages come back out of the body as the same JSON, with the spec's keys."""
        doc = decoded(SegmentEnvelope("0.1.0", None, gzip=False).body(DEMO, STAMP))
        assert doc == {"batch": [json.loads(m) for m in DEMO], "sentAt": STAMP, "context": LIBRARY}

    def test_write_key_comes_last(self) -> None:
        """A write key given for the body is the `writeKey` field, after the context."""
        body = SegmentEnvelope("0.1.0", "wk_123", gzip=False).body(DEMO[:1], STAMP)
        assert body.endswith(
            b'"context":{"library":{"name":"trackd","version":"0.1.0"}},"writeKey":"wk_123"}'
        )
        assert list(decoded(body)) == ["batch", "sentAt", "context", "writeKey"]

    def test_no_write_key_field_without_one(self) -> None:
        """Without a write key for the body there is no `writeKey` field at all."""
        assert b"writeKey" not in SegmentEnvelope("0.1.0", None, gzip=False).body(DEMO, STAMP)

    def test_envelope_strings_are_json_escaped(self) -> None:
        """A version or key with quotes or backslashes still makes valid JSON."""
        body = SegmentEnvelope('1"2\\3', 'k"\\', gzip=False).body(DEMO[:1], STAMP)
        doc = decoded(body)
        assert doc["context"]["library"]["version"] == '1"2\\3'
        assert doc["writeKey"] == 'k"\\'

    def test_empty_batch_is_the_overhead(self) -> None:
        """`overhead()` is exactly the size of a body with no messages, with or without a key."""
        for key in (None, "wk_123"):
            envelope = SegmentEnvelope("0.1.0", key, gzip=True)
            assert len(envelope.body([], STAMP)) == envelope.overhead()

    def test_sent_at_of_the_wrong_width_is_refused(self) -> None:
        """A sentAt not made by `sent_at()` would break the overhead arithmetic: refused."""
        with pytest.raises(ValueError, match="sentAt"):
            SegmentEnvelope("0.1.0", None, gzip=False).body(DEMO, "2026-11-27T08:00:47Z")

    def test_repr_hides_the_write_key(self) -> None:
        """The repr says whether a write key is set, never what it is."""
        text = repr(SegmentEnvelope("0.1.0", "wk_secret", gzip=True))
        assert "wk_secret" not in text
        assert "write_key_in_body=set" in text

    @given(messages)
    def test_batch_round_trips(self, batch: list[bytes]) -> None:
        """Any messages come back out of the body as the same JSON values, in order."""
        doc = decoded(SegmentEnvelope("0.1.0", "wk", gzip=False).body(batch, STAMP))
        assert doc["batch"] == [json.loads(m) for m in batch]

    @given(messages)
    def test_messages_appear_verbatim(self, batch: list[bytes]) -> None:
        """Each message's bytes appear unchanged in the body, one after another."""
        body = SegmentEnvelope("0.1.0", None, gzip=False).body(batch, STAMP)
        assert body.startswith(b'{"batch":[' + b",".join(batch) + b"]")

    @given(messages)
    def test_size_is_overhead_plus_messages_plus_commas(self, batch: list[bytes]) -> None:
        """The body's length is what `split_requests` reckons with: overhead, sizes, commas."""
        envelope = SegmentEnvelope("0.1.0", "wk", gzip=False)
        commas = max(len(batch) - 1, 0)
        expected = envelope.overhead() + sum(map(len, batch)) + commas
        assert len(envelope.body(batch, STAMP)) == expected


class TestEncode:
    def test_plain_body_and_content_type(self) -> None:
        """With gzip off, `encode` sends the body as is, labelled JSON and nothing else."""
        envelope = SegmentEnvelope("0.1.0", None, gzip=False)
        data, headers = envelope.encode(DEMO, STAMP)
        assert data == envelope.body(DEMO, STAMP)
        assert headers == {"Content-Type": "application/json"}

    def test_gzip_body_decompresses_to_the_body(self) -> None:
        """With gzip on, the bytes are a gzip member of the body, labelled `Content-Encoding`."""
        envelope = SegmentEnvelope("0.1.0", None, gzip=True)
        data, headers = envelope.encode(DEMO, STAMP)
        assert gzip.decompress(data) == envelope.body(DEMO, STAMP)
        assert headers == {"Content-Type": "application/json", "Content-Encoding": "gzip"}

    def test_gzip_is_deterministic(self) -> None:
        """The same batch and sentAt give the same bytes (no timestamp in the gzip header)."""
        envelope = SegmentEnvelope("0.1.0", None, gzip=True)
        assert envelope.encode(DEMO, STAMP)[0] == envelope.encode(DEMO, STAMP)[0]

    def test_headers_are_a_fresh_dict(self) -> None:
        """A caller adding headers to one request does not change the next one's."""
        envelope = SegmentEnvelope("0.1.0", None, gzip=True)
        envelope.encode(DEMO, STAMP)[1]["X-Retry-Count"] = "1"
        assert "X-Retry-Count" not in envelope.encode(DEMO, STAMP)[1]

    def test_bad_level_is_refused(self) -> None:
        """A zlib level outside 0..9 is refused when the envelope is made, not on first send."""
        with pytest.raises(ValueError, match="gzip_level"):
            SegmentEnvelope("0.1.0", None, gzip=True, gzip_level=10)


class TestAuthHeaders:
    def test_basic(self) -> None:
        """Basic auth is the write key as user name with an empty password."""
        headers = auth_headers("basic", "wk_123", None)
        assert headers == {"Authorization": "Basic " + base64.b64encode(b"wk_123:").decode()}

    def test_bearer(self) -> None:
        """Bearer auth sends the token as is."""
        assert auth_headers("bearer", "wk_123", "tok_9") == {"Authorization": "Bearer tok_9"}

    def test_basic_without_write_key(self) -> None:
        """Basic auth without a write key is refused, naming the missing setting."""
        with pytest.raises(ValueError, match=r"sink\.write_key"):
            auth_headers("basic", None, "tok_9")

    def test_bearer_without_token_hides_the_key(self) -> None:
        """Bearer auth without a token is refused, and the error carries no secret."""
        with pytest.raises(ValueError, match=r"sink\.token") as info:
            auth_headers("bearer", "wk_secret", None)
        assert "wk_secret" not in str(info.value)

    def test_unknown_auth(self) -> None:
        """Another auth kind is refused with the ones that exist."""
        with pytest.raises(ValueError, match="expected one of: basic, bearer"):
            auth_headers("digest", "wk", "tok")

    def test_user_agent(self) -> None:
        """The User-Agent is `trackd/<version>`."""
        assert user_agent("0.1.0") == "trackd/0.1.0"


class TestOversized:
    def test_limit_is_inclusive(self) -> None:
        """A message of exactly 32,000 bytes is allowed; one byte more is oversized."""
        assert oversized([10, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1, 5]) == [2]


class TestSplitRequests:
    def test_no_messages_no_requests(self) -> None:
        """An empty batch makes no request."""
        assert split_requests([], 100, 10) == []

    def test_small_batch_is_one_request(self) -> None:
        """Messages that fit together go in one request."""
        assert split_requests([700] * 50, 100, MAX_REQUEST_MESSAGES) == [(0, 50)]

    def test_exact_fit_stays_together(self) -> None:
        """A request of exactly MAX_REQUEST_BYTES (overhead, sizes and the comma) is allowed."""
        first = MAX_REQUEST_BYTES - 100 - 1 - 1000
        assert split_requests([first, 1000], 100, 10) == [(0, 2)]

    def test_one_byte_over_splits(self) -> None:
        """One byte more than MAX_REQUEST_BYTES moves the message to the next request."""
        first = MAX_REQUEST_BYTES - 100 - 1 - 1000 + 1
        assert split_requests([first, 1000], 100, 10) == [(0, 1), (1, 2)]

    def test_message_count_limit(self) -> None:
        """No request carries more than `max_messages` messages."""
        assert split_requests([10] * 7, 100, 3) == [(0, 3), (3, 6), (6, 7)]

    def test_count_capped_at_segment_limit(self) -> None:
        """A `max_messages` above 2,500 is held to Segment's limit."""
        assert split_requests([1] * 2_501, 100, 10_000) == [(0, 2_500), (2_500, 2_501)]

    def test_too_large_message_goes_alone(self) -> None:
        """A message over the request limit even alone still forms its own request."""
        sizes = [10, MAX_REQUEST_BYTES, 10]
        assert split_requests(sizes, 100, 10) == [(0, 1), (1, 2), (2, 3)]

    def test_max_messages_must_be_positive(self) -> None:
        """A `max_messages` below 1 is a caller's mistake, refused."""
        with pytest.raises(ValueError, match="max_messages"):
            split_requests([1], 100, 0)

    @given(
        st.lists(st.integers(min_value=0, max_value=3_000), max_size=300),
        st.integers(min_value=0, max_value=500),
        st.integers(min_value=1, max_value=40),
        st.integers(min_value=1, max_value=20_000),
    )
    def test_limits_and_coverage(
        self, sizes: list[int], overhead: int, max_messages: int, max_bytes: int
    ) -> None:
        """Slices cover every index once, in order, each within both limits (a lone message
        excepted from the byte limit), and each is as large as the limits allow."""
        slices = split_requests(sizes, overhead, max_messages, max_bytes=max_bytes)
        assert [i for a, b in slices for i in range(a, b)] == list(range(len(sizes)))
        for a, b in slices:
            assert 0 < b - a <= max_messages
            size = overhead + sum(sizes[a:b]) + (b - a - 1)
            assert size <= max_bytes or b - a == 1
            if b < len(sizes):  # greedy: the next message would have broken a limit
                assert b - a == max_messages or size + 1 + sizes[b] > max_bytes

    @given(st.lists(st.integers(min_value=1, max_value=MAX_MESSAGE_BYTES), max_size=100))
    def test_real_bodies_fit(self, sizes: list[int]) -> None:
        """Bodies built for the slices of screened messages never exceed MAX_REQUEST_BYTES."""
        envelope = SegmentEnvelope("0.1.0", "wk_123", gzip=False)
        batch = [b"{" + b" " * (size - 2) + b"}" if size >= 2 else b"0" for size in sizes]
        for a, b in split_requests(sizes, envelope.overhead(), MAX_REQUEST_MESSAGES):
            assert len(envelope.body(batch[a:b], STAMP)) <= MAX_REQUEST_BYTES


class TestParseErrors:
    def test_segment_400_body(self) -> None:
        """Each entry of `errors` becomes a BatchError with its index, messageId and reason."""
        body = b'{"errors":[{"index":1,"messageId":"m1","reason":"bad type"},{"index":3,"messageId":"m3","reason":"too big"}]}'
        assert parse_errors(body) == [
            BatchError(1, "m1", "bad type"),
            BatchError(3, "m3", "too big"),
        ]

    def test_index_or_message_id_alone(self) -> None:
        """An entry naming only an index, or only a messageId, is kept."""
        body = b'{"errors":[{"index":0,"reason":"a"},{"messageId":"m","reason":"b"}]}'
        assert parse_errors(body) == [BatchError(0, None, "a"), BatchError(None, "m", "b")]

    def test_missing_reason_reads_generic(self) -> None:
        """An entry without a reason (or with null) gets a generic one."""
        errors = parse_errors(b'{"errors":[{"index":0},{"index":1,"reason":null}]}')
        assert errors is not None
        assert all(e.reason.startswith("rejected by the endpoint") for e in errors)

    def test_long_reason_is_cut(self) -> None:
        """An endpoint's reason is cut before it reaches a dead letter."""
        body = orjson.dumps({"errors": [{"index": 0, "reason": "x" * 5_000}]})
        errors = parse_errors(body)
        assert errors is not None
        assert len(errors[0].reason) == MAX_REASON_CHARS

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"Bad Request",
            b"<html>400</html>",
            b"\xff\xfe{",
            b"[]",
            b"null",
            b'{"error":"bad"}',
            b'{"errors":[]}',
            b'{"errors":{"index":0}}',
            b'{"errors":["bad"]}',
            b'{"errors":[{"reason":"nowhere"}]}',
            b'{"errors":[{"index":"0","reason":"r"}]}',
            b'{"errors":[{"index":true,"reason":"r"}]}',
            b'{"errors":[{"index":1.5,"reason":"r"}]}',
            b'{"errors":[{"messageId":7,"reason":"r"}]}',
            b'{"errors":[{"index":0,"reason":["r"]}]}',
            b'{"errors":[{"index":0,"reason":"r"},{"index":"x"}]}',
            b"[" * 100_000,
        ],
    )
    def test_anything_else_is_a_plain_400(self, body: bytes) -> None:
        """Non-JSON, other shapes, entries that locate nothing and wrong types all give None."""
        assert parse_errors(body) is None

    def test_huge_body_is_not_parsed(self) -> None:
        """A body over the size bound is a plain 400, even if it is well-formed."""
        entry = {"index": 0, "reason": "r" * 100}
        body = orjson.dumps({"errors": [entry] * 20_000})
        assert parse_errors(body) is None

    @given(st.binary(max_size=2_000))
    def test_never_raises_on_bytes(self, body: bytes) -> None:
        """Arbitrary bytes give a list or None, never an exception."""
        result = parse_errors(body)
        assert result is None or isinstance(result, list)

    @given(
        st.dictionaries(
            st.sampled_from(["errors", "x"]),
            st.lists(
                st.dictionaries(
                    st.sampled_from(["index", "messageId", "reason"]), _json, max_size=3
                ),
                max_size=3,
            )
            | _json,
        )
    )
    def test_never_raises_on_near_misses(self, doc: dict[str, Any]) -> None:
        """JSON close to the expected shape, with any value types, never raises either."""
        result = parse_errors(orjson.dumps(doc))
        assert result is None or all(isinstance(e.reason, str) for e in result)


class TestMatchErrors:
    IDS = ("m0", "m1", "m2", "m3")

    def test_by_index(self) -> None:
        """An in-range index whose messageId agrees places the error there."""
        assert match_errors([BatchError(2, "m2", "r")], self.IDS) == {2: "r"}

    def test_index_without_message_id(self) -> None:
        """An in-range index alone is trusted."""
        assert match_errors([BatchError(1, None, "r")], self.IDS) == {1: "r"}

    def test_disagreeing_index_falls_back_to_message_id(self) -> None:
        """When the index names another message than the messageId, the messageId wins."""
        assert match_errors([BatchError(0, "m3", "r")], self.IDS) == {3: "r"}

    def test_out_of_range_index_falls_back_to_message_id(self) -> None:
        """An index past the batch (or negative) is ignored in favour of the messageId."""
        errors = [BatchError(9, "m1", "a"), BatchError(-1, "m2", "b")]
        assert match_errors(errors, self.IDS) == {1: "a", 2: "b"}

    def test_unknown_errors_match_nothing(self) -> None:
        """Errors naming nothing in the batch give an empty map (the caller bisects)."""
        errors = [BatchError(9, None, "a"), BatchError(None, "zz", "b"), BatchError(0, "zz", "c")]
        assert match_errors(errors, self.IDS) == {}

    def test_repeated_message_id_marks_every_copy(self) -> None:
        """A messageId carried twice in the batch marks both positions."""
        assert match_errors([BatchError(None, "m", "r")], ["m", "x", "m"]) == {0: "r", 2: "r"}

    def test_first_reason_wins(self) -> None:
        """Two errors for one position keep the first reason."""
        errors = [BatchError(1, None, "first"), BatchError(None, "m1", "second")]
        assert match_errors(errors, self.IDS) == {1: "first"}

    def test_parsed_demo_errors_land_on_demo_messages(self) -> None:
        """A 400 naming demo messages by index and messageId maps back onto those positions."""
        ids = [json.loads(m)["messageId"] for m in DEMO]
        body = orjson.dumps({"errors": [{"index": 3, "messageId": ids[3], "reason": "r"}]})
        errors = parse_errors(body)
        assert errors is not None
        assert match_errors(errors, ids) == {3: "r"}


class TestBisect:
    def test_two(self) -> None:
        """A pair splits into its two messages."""
        assert bisect(2) == (range(0, 1), range(1, 2))

    def test_odd(self) -> None:
        """An odd batch gives the smaller half first."""
        assert bisect(5) == (range(0, 2), range(2, 5))

    def test_single_message_cannot_be_halved(self) -> None:
        """A single message is dead-lettered, not bisected: asking is a caller's mistake."""
        with pytest.raises(ValueError, match="cannot be halved"):
            bisect(1)

    @given(st.integers(min_value=2, max_value=10_000))
    def test_halves_partition(self, n: int) -> None:
        """Both halves are non-empty, differ by at most one, and together are 0..n-1 in order."""
        first, second = bisect(n)
        assert len(first) > 0 and len(second) > 0
        assert abs(len(first) - len(second)) <= 1
        assert [*first, *second] == list(range(n))


class TestNormalizeUrl:
    def test_bare_host_gets_batch_path(self) -> None:
        """A URL without a path gets `/v1/batch` and reports the change."""
        assert normalize_url("https://api.segment.io") == ("https://api.segment.io/v1/batch", True)

    def test_root_path_gets_batch_path(self) -> None:
        """A URL whose path is `/` gets `/v1/batch` too."""
        assert normalize_url("https://eu1.example.com:8443/") == (
            "https://eu1.example.com:8443/v1/batch",
            True,
        )

    def test_query_is_kept(self) -> None:
        """The query of a path-less URL survives the change."""
        assert normalize_url("http://127.0.0.1:9000/?t=1") == (
            "http://127.0.0.1:9000/v1/batch?t=1",
            True,
        )

    def test_explicit_path_is_left_alone(self) -> None:
        """Any other path is the user's choice and is kept as written."""
        url = "https://proxy.example.com/segment/batch"
        assert normalize_url(url) == (url, False)
