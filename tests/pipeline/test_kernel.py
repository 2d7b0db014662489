"""The native block kernel (`agent/_kernel.c`, `agent/pipeline/kernel.py`): byte for byte what the
pure path gives, or no kernel at all and the reason why.

The pure path is the reference. These tests prove the kernel's pieces against it: its VM's spans
against `re` on the same pattern, its hashes against hashlib and `msgid`, and whole blocks of
generated lines — valid, junk, opted out, static, bots, non-ASCII, escaped, unparsable, too old,
too long — through `BlockPreparer` with and without the kernel, records and counters alike.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import native as agent_native
from agent.config import Config
from agent.config.load import load_config
from agent.events.msgid import NAMESPACE, MessageIdPrefix, line_hash
from agent.parse.apache import compile_apache
from agent.parse.nginx import compile_nginx
from agent.pipeline import kernel
from agent.pipeline.blocks import BlockPreparer
from agent.pipeline.prepare import Prepared, Preparer
from agent.pipeline.stats import PipelineStats
from agent.records import FileRef
from tests.helpers import make_config

native, WHY = kernel.load()
if native is None and os.environ.get("TRACKD_REQUIRE_COMPILED"):
    raise RuntimeError(f"TRACKD_REQUIRE_COMPILED is set but there is no native kernel: {WHY}")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(native is None, reason=f"no native kernel here: {WHY}"),
]

NGINX_FORMATS = [
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_cookie" $request_time',
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_x_forwarded_for" $host "$http_cookie" '
    "$upstream_response_time $request_id",
    '$msec $remote_addr "$request" $status "$http_cookie" $http_host $http_user_agent',
    "$http_x_forwarded_for - $remote_addr [$time_iso8601] $request $status $http_user_agent",
    # escape=json: every typed field may be empty, `(?:P)?` (nullable bodies in `$host`).
    'log_format main escape=json \'$remote_addr - [$time_local] "$request" $status $host '
    '$http_host "$http_cookie"\';',
]
APACHE_FORMATS = ['%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i" "%{Cookie}i"']
#: Patterns beyond the layouts: lazy and bounded repeats, alternation, optional groups, anchors.
EXTRA_PATTERNS = [
    r'(?P<a>[^ ]*?) (?P<b>.*?)"(?P<c>\d{2,4})?(?:x|(?P<d>y+))*$',
    r"^(?P<a>(?:ab|a)+?)(?P<b>b{1,3})(?P<c>[a-c\d]*)\Z",
    r"(?P<a>\w+)\s+(?P<b>\W?)(?P<c>[^\s\d]{0,2})(?:(?P<d>-)|(?P<e>\S))\s*$",
]

LINE_ALPHABET = st.sampled_from([*' "-[]/:.?=&;%+x1A\\', "200", "GET", "km_ai=", "Z"])


def _patterns() -> list[re.Pattern[str]]:
    out = [compile_nginx(f).regex for f in NGINX_FORMATS]
    out += [compile_apache(f).regex for f in APACHE_FORMATS]
    return out + [re.compile(p, re.S) for p in EXTRA_PATTERNS]


PATTERNS = _patterns()


def _program(regex: re.Pattern[str]) -> Any:
    prog = kernel.compile_program(regex)
    assert native is not None
    return native.Program(prog.code, prog.sets, prog.groups)


PROGRAMS = [_program(p) for p in PATTERNS]


def _sample_line(i: int) -> str:
    """A plausible line of each of the patterns above, to mutate."""
    samples = [
        '203.0.113.9 - - [28/Nov/2026:10:00:00 +0000] "GET /p/1?a=1 HTTP/1.1" 200 512 '
        '"https://r.example/" "Mozilla/5.0 (X11)" "km_ai=abcdef; km_ni=bob" 0.004',
        '10.0.0.1 - - [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 304 0 "-" "curl/8" '
        '"198.51.100.7, 10.0.0.2" shop.example "-" 0.010, 0.020 : 0.001 abc123',
        '1764324000.123 203.0.113.9 "GET /x HTTP/2.0" 200 "km_ai=v1" h.example Mozilla/5.0 (A B)',
        "198.51.100.7 - 10.0.0.1 [2026-11-28T10:00:00+00:00] GET /a HTTP/1.1 200 Agent (X; Y) 2",
        '203.0.113.9 - [28/Nov/2026:10:00:00 +0000] "GET /p HTTP/1.1" 200  h.example "km_ai=x"',
        '203.0.113.9 - - [28/Nov/2026:10:00:00 +0000] "GET /p HTTP/1.1" 200 512 "-" '
        '"Mozilla \\"q\\"" "km_ai=abcdef"',
        'ab "12xyyx',
        "ababbbca1",
        "word \t!ab-",
    ]
    return samples[i]


@st.composite
def _pattern_and_line(draw: st.DrawFn) -> tuple[int, str]:
    i = draw(st.integers(0, len(PATTERNS) - 1))
    kind = draw(st.sampled_from(["sample", "mutated", "random"]))
    if kind == "random":
        return i, "".join(draw(st.lists(LINE_ALPHABET, max_size=40)))
    line = _sample_line(i)
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(line)))
            op = draw(st.sampled_from(["insert", "delete", "replace"]))
            piece = draw(LINE_ALPHABET)
            if op == "insert":
                line = line[:at] + piece + line[at:]
            elif op == "delete":
                line = line[:at] + line[at + 1 :]
            else:
                line = line[:at] + piece + line[at + len(piece) :]
    return i, line


class TestVm:
    @settings(max_examples=3000, deadline=None)
    @given(_pattern_and_line())
    def test_spans_are_the_regexs(self, case: tuple[int, str]) -> None:
        """On printable ASCII (all the VM is ever given), the VM matches where `re` matches and
        gives each group `re`'s span (unset groups included), and fails where `re` fails."""
        i, line = case
        m = PATTERNS[i].match(line)
        got = PROGRAMS[i].match(line.encode())
        if m is None:
            assert got is None
        else:
            assert got == m.regs[1:]

    def test_the_sample_lines_match(self) -> None:
        """Each pattern's sample line matches, in `re` and in the VM alike (so the generated
        cases above are mostly near-misses of real matches, not only failures)."""
        for i, (pattern, program) in enumerate(zip(PATTERNS, PROGRAMS, strict=True)):
            m = pattern.match(_sample_line(i))
            assert m is not None, pattern.pattern
            assert program.match(_sample_line(i).encode()) == m.regs[1:]

    @pytest.mark.parametrize(
        ("pattern", "why"),
        [
            (r"(?P<a>x)(?P=a)", "GROUPREF"),
            (r"(?<=\?)x", "ASSERT"),
            (r"(?i)abc", "ignores case"),
            (r"(?:a*)*b", "can match nothing"),
            (r"x\b", "anchor"),
        ],
    )
    def test_what_it_cannot_do_is_refused(self, pattern: str, why: str) -> None:
        """A pattern with a construct outside the VM's is refused with the construct named (the
        source then runs the pure path), never compiled approximately."""
        with pytest.raises(kernel.Unsupported, match=why):
            kernel.compile_program(re.compile(pattern))

    def test_pathological_backtracking_gives_up(self) -> None:
        """A line that makes the VM backtrack past its step budget is given up (False: the pure
        path decides it), not matched slowly or wrongly."""
        prog = _program(re.compile(r"(?:a|aa)+?(?:a|aa)+?(?:a|aa)+?(?:a|aa)+?b"))
        assert prog.match(b"a" * 300) is False

    @pytest.mark.parametrize(
        "code",
        [
            (5, 99, 11),  # a jump past the end
            (1, 97),  # runs off the end (no MATCH)
            (5, 3, 1, 3, 11),  # a jump into an operand (CHAR 3 read as CLASS 11)
            (3, 1, 11),  # a class that is not there (one set given)
            (6, 2, 11),  # a save slot past the groups
            (7, 0, 5, 2, 1, 11),  # a repeat whose max is below its min
        ],
    )
    def test_a_malformed_program_is_refused(self, code: tuple[int, ...]) -> None:
        """The C side checks a program before running it — jumps onto instruction starts only,
        no running off the end, operands in range — so a bad one is a ValueError, not a read
        outside its buffers."""
        assert native is not None
        with pytest.raises(ValueError, match="malformed"):
            native.Program(code, bytes(32), 1)

    def test_values_outside_a_c_int_are_refused(self) -> None:
        """A program value that does not fit the VM's ints is refused, not truncated."""
        assert native is not None
        with pytest.raises(ValueError, match="out of range"):
            native.Program((1, 2**40, 11), b"", 0)

    @pytest.mark.parametrize(
        ("pattern", "why"),
        [
            (r"a{1073741825,}", "too large"),
            (r"a{0,3000000000}", "too large"),
            (r"(a)$", "MULTILINE"),
            ("(a)" * 1001, "groups"),
        ],
    )
    def test_what_the_vm_cannot_hold_is_unsupported(self, pattern: str, why: str) -> None:
        """Repeat counts past the VM's ints, MULTILINE anchors and more groups than it holds are
        Unsupported (the source runs pure), never a program that fails to load."""
        flags = re.MULTILINE if why == "MULTILINE" else 0
        with pytest.raises(kernel.Unsupported, match=why):
            kernel.compile_program(re.compile(pattern, flags))

    def test_objects_are_usable_only_once_initialised_and_only_once(self) -> None:
        """`__new__` without `__init__` gives objects that refuse to run (RuntimeError, not a
        NULL dereference), and a second `__init__` is refused (it would resize what a Kernel
        sized its buffers by)."""
        assert native is not None
        with pytest.raises(RuntimeError, match="before __init__"):
            native.Program.__new__(native.Program).match(b"a")
        bare = native.Kernel.__new__(native.Kernel)
        with pytest.raises(RuntimeError, match="before __init__"):
            bare.run(b"x", 0, 2, 100, ("s", 1, "p", "f", b""))
        with pytest.raises(RuntimeError, match="before __init__"):
            bare.clear()
        prog = _program(re.compile("(a)"))
        with pytest.raises(TypeError, match="initialised once"):
            prog.__init__((11,), b"", 0)
        assert prog.match(b"a") == ((0, 1),)

    def test_a_group_past_the_program_is_refused(self) -> None:
        """Kernel group numbers are checked against the program's groups without overflow."""
        assert native is not None
        assert _bare_kernel() is not None  # the helper's own arguments are accepted
        for bad in (2, 2**62 + 2**31 + 5):  # past the one group; one whose double overflows
            with pytest.raises(ValueError, match="bad group"):
                _bare_kernel(groups=(1, bad, 0, 0, 0, 0, 0, 0))


def _bare_kernel(**overrides: Any) -> Any:
    """A Kernel on the program of `(a)` with do-nothing calls, `overrides` replacing arguments."""
    assert native is not None
    args: dict[str, Any] = {
        "program": _program(re.compile("(a)")),
        "groups": (1, 0, 0, 0, 0, 0, 0, 0),
        "hosts": (),
        "optional_groups": False,
        "pageviews": True,
        "derived": False,
        "calls": (len,) * 8,
        "stamp_of": len,
        "derived_of": len,
        "record_type": None,
    }
    return native.Kernel(**{**args, **overrides})


#: `sha_path` picks the hash code for a whole test, the same for each of its examples.
FIXTURE_ONCE = HealthCheck.function_scoped_fixture


@pytest.fixture(params=[True, False], ids=["sha-ni", "portable"])
def sha_path(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Each hash test on the SHA extensions (where the CPU has them) and on the portable code."""
    assert native is not None
    used = native.use_sha_ni(request.param)
    try:
        yield used
    finally:
        native.use_sha_ni(True)


class TestHashes:
    def test_the_sha_extensions_are_used_where_the_cpu_has_them(self) -> None:
        """On a CPU whose flags list sha_ni the kernel hashes with them (the figures in the
        README assume so); turning them off falls back to the portable code."""
        assert native is not None
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        assert native.use_sha_ni(True) == (" sha_ni" in flags)
        assert native.use_sha_ni(False) is False
        native.use_sha_ni(True)

    @settings(max_examples=400, deadline=None, suppress_health_check=[FIXTURE_ONCE])
    @given(data=st.binary(max_size=300))
    def test_line_hash_is_hashlibs(self, sha_path: bool, data: bytes) -> None:
        """The kernel's SHA-256 line hash equals `msgid.line_hash` (hashlib) on any bytes,
        across the 55/56/64-byte padding boundaries."""
        assert native is not None
        assert native.line_hash(data) == line_hash(data)
        assert native.line_hash(data) == hashlib.sha256(data).hexdigest()[:32].encode()

    def test_every_length_to_a_few_blocks(self, sha_path: bool) -> None:
        """Every length from 0 to 300 bytes (each padding case, one to six blocks)."""
        assert native is not None
        for n in range(301):
            data = bytes((i * 7 + n) % 256 for i in range(n))
            assert native.line_hash(data) == line_hash(data), n

    @settings(max_examples=300, deadline=None, suppress_health_check=[FIXTURE_ONCE])
    @given(
        source=st.text(min_size=0, max_size=80),
        fp=st.text(alphabet="0123456789abcdef", min_size=0, max_size=64),
        offset=st.integers(0, 2**62),
        line=st.binary(min_size=0, max_size=40),
    )
    def test_message_id_is_msgids(
        self, sha_path: bool, source: str, fp: str, offset: int, line: bytes
    ) -> None:
        """The kernel's UUIDv5 messageId equals `MessageIdPrefix` for any source, file
        fingerprint, offset and line (the prefix spans one or two SHA-1 blocks)."""
        assert native is not None
        lhash = line_hash(line)
        prefix = NAMESPACE.bytes + f"trackd:v1\n{source}\n{fp}\n".encode()
        want = MessageIdPrefix(source, fp)(offset, lhash, b"page")
        assert native.message_id(prefix, offset, lhash, b"page") == want


# -- whole blocks: kernel against pure ---------------------------------------------------------

TIMES = [
    "28/Nov/2026:10:00:00 +0000",
    "28/Nov/2026:10:00:01 +0000",
    "29/Nov/2026:23:59:59 +0130",
    "01/Jan/2005:00:00:00 +0000",  # too old (R6)
    "31/Feb/2026:10:00:00 +0000",  # not a date
    "28/Nov/2026:25:00:00 +0000",  # not a time
]
REQUESTS = [
    "GET /p/1 HTTP/1.1",
    "GET /p/2?utm_source=x&token=secret HTTP/1.1",
    "GET /static/site.css HTTP/1.1",
    "POST /login HTTP/1.1",
    "GET http://other.example/abs?q=1 HTTP/1.1",
    "-",
    "GET /a b c HTTP/1.1",
    "\\x16\\x03\\x01",
    "GET /caf\u00e9 HTTP/1.1",
    "GET /admin/x HTTP/1.1",
]
AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "-",
    "",
    'Agent \\"quoted\\"',
    "Mozilla/5.0 (Macintosh) \u00fcber",
]
COOKIES = [
    "-",
    "km_ai=dev0000001x",
    "km_ai=dev0000002x; km_ni=bob%40example.com",
    "km_ni=alice; sid=sess000001",
    "km_ai=undefined",
    "km_ai=dev0000003x; optout=1",
    "km_ai=dev0000004x; km_ni=dev0000004x",
    'km_ai="dev0000005x"',
    "sid=sess000002",
    "km_ai=dev0000006x; km_ni=",
]
IPS = [
    "203.0.113.9",
    "198.51.100.7",
    "10.0.0.2",
    "0.0.0.0",  # noqa: S104 (an address in a log line, not a bind)
    "255.255.255.255",
    "2001:db8::1",
    "-",
    "not-an-ip",
    # Not plain dotted quads (the pure path's `ipaddress` decides them): leading zeros, an octet
    # past 255, too few or too many octets, an empty octet.
    "010.0.0.1",
    "256.1.1.1",
    "1.2.3",
    "1.2.3.4.5",
    "1..2.3",
    "1.2.3.",
]
FORWARDED = ["-", "198.51.100.7", "203.0.113.50, 10.0.0.3", "garbage, 10.0.0.2"]
REFERRERS = ["-", "https://r.example/", "https://r.example/s?q=1&token=x#frag", "android-app://x"]
STATUSES = ["200", "304", "404", "-", "500"]

#: Layouts of the block tests: (log_format, which fields it has).
BLOCK_FORMATS = {
    "plain": '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_cookie" $request_time',
    "proxied": '$remote_addr - - [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_x_forwarded_for" $host "$http_cookie"',
}
#: The same layout written with escape=json (every typed field may be empty).
BLOCK_FORMATS["proxied_json"] = (
    "log_format main escape=json '" + BLOCK_FORMATS["proxied"].replace("'", "\\'") + "';"
)


@st.composite
def _access_line(draw: st.DrawFn, layout: str) -> bytes:
    kind = draw(st.sampled_from(["line"] * 8 + ["garbage", "binary", "long"]))
    if kind == "garbage":
        return "".join(draw(st.lists(LINE_ALPHABET, max_size=30))).encode()
    if kind == "binary":
        return draw(st.binary(max_size=60)).replace(b"\n", b"")
    ip = draw(st.sampled_from(IPS))
    ts = draw(st.sampled_from(TIMES))
    request = draw(st.sampled_from(REQUESTS))
    status = draw(st.sampled_from(STATUSES))
    referrer = draw(st.sampled_from(REFERRERS))
    agent = draw(st.sampled_from(AGENTS))
    cookie = draw(st.sampled_from(COOKIES))
    if layout == "proxied_json":
        layout = "proxied"
    if layout == "plain":
        text = f'{ip} - - [{ts}] "{request}" {status} 512 "{referrer}" "{agent}" "{cookie}" 0.004'
    elif layout == "clf":
        # combined_cookie's shape; combined and common read its head (and tolerate the rest),
        # and a trailing field sometimes makes combined_cookie fail (the pure path says why).
        text = f'{ip} - - [{ts}] "{request}" {status} 512 "{referrer}" "{agent}" "{cookie}"'
        text += draw(st.sampled_from(["", "", " 0.004"]))
    else:
        xff = draw(st.sampled_from(FORWARDED))
        host = draw(st.sampled_from(["shop.example", "-", "h2.example:8080"]))
        text = (
            f'{ip} - - [{ts}] "{request}" {status} 512 "{referrer}" "{agent}" "{xff}" {host} '
            f'"{cookie}"'
        )
    if kind == "long":
        text = text.replace("/p/1", "/p/" + "x" * 400)
    raw = text.encode()
    if draw(st.booleans()):
        raw += b"\r"
    return raw


VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # name: (layout, identity keys, other top-level keys)
    "defaults": ("plain", {"session_cookies": ["sid"]}, {}),
    "no-pageviews": ("plain", {}, {"events": {"pageviews": {"enabled": False}}}),
    "drop-cookieless": (
        "proxied",
        {"cookieless": "drop", "trusted_proxies": ["10.0.0.0/8"], "session_cookies": ["sid"]},
        {"privacy": {"ip": "full", "optout_cookie": "optout"}, "max_line_bytes": 300},
    ),
    "proxied-derived": (
        "proxied",
        {"trusted_proxies": ["10.0.0.0/8"]},
        {
            "privacy": {"ip": "drop", "optout_cookie": "optout"},
            "events": {"pageviews": {"exclude_paths": ["/admin/*"], "statuses": ["2xx"]}},
        },
    ),
    # Rules on request fields: lines a rule may match are the pure path's, the rest the kernel's.
    "rules": (
        "proxied",
        {"session_cookies": ["sid"]},
        {
            "events": {
                "rules": [
                    {
                        "name": "login",
                        "source": "web",
                        "match": {"method": "POST", "path": "/login"},
                        "identify": {"user": "{query.user}", "session": "{cookie.sid}"},
                    },
                    {
                        "name": "abs",
                        "source": "web",
                        "match": {"host": "shop.example", "status": "2xx", "query.q": "1"},
                        "event": "Absolute",
                    },
                    {
                        "name": "admin",
                        "source": "web",
                        "match": {"request_uri": "/admin/x", "http_host": "h2.example:8080"},
                        "event": "Admin",
                        "properties": {"agent": "{user_agent}"},
                    },
                ]
            }
        },
    ),
    "escape-json": ("proxied_json", {"trusted_proxies": ["10.0.0.0/8"]}, {}),
    # The combined family's own parser: the address as logged ("-" stays), quoted fields dashed.
    "combined_cookie": ("clf", {"session_cookies": ["sid"]}, {"privacy": {"ip": "full"}}),
    "combined": ("clf", {}, {}),
    "common": ("clf", {}, {"privacy": {"ip": "full"}}),
}
CLF_FORMATS = {"combined_cookie": "combined_cookie", "combined": "combined", "common": "common"}


def _config(tmp: Path, variant: str) -> Config:
    layout, identity, extra = VARIANTS[variant]
    source: dict[str, Any] = {
        "name": "web",
        "kind": "access",
        "paths": [str(tmp / "access.log")],
        "base_url": "https://www.example.com",
    }
    if layout == "clf":
        source["format"] = CLF_FORMATS[variant]
    else:
        source.update(format="nginx", log_format=BLOCK_FORMATS[layout])
    return load_config(str(make_config(tmp, sources=[source], identity=identity, extra=extra)))


def _blocks(config: Config, *, with_kernel: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setenv("TRACKD_KERNEL", "1" if with_kernel else "0")
        stats = PipelineStats()
        blocks = BlockPreparer(config, Preparer(config, b"secret", stats.prepare), stats)
    assert (blocks.sources["web"].kernel is not None) == with_kernel, blocks.sources[
        "web"
    ].kernel_why
    return blocks


def _run(blocks: Any, lines: list[bytes]) -> tuple[list[Prepared], Any]:
    ref = FileRef(7, "web", "/var/log/nginx/access.log", "ab" * 32)
    end = sum(len(x) + 1 for x in lines)
    out = list(blocks.block(ref, 100, 100 + end, b"\n".join(lines)))
    stats = blocks.stats
    counters = (
        dict(stats.lines),
        dict(stats.skipped),
        {k: list(v) for k, v in stats.samples.items()},
        dict(stats.prepare.junk),
        dict(stats.prepare.dropped),
        dict(stats.prepare.too_old),
    )
    return out, counters


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Config]:
    return {v: _config(tmp_path_factory.mktemp(v), v) for v in VARIANTS}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_blocks_are_the_pure_paths(
    variant: str, configs: dict[str, Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of generated lines give the same records (every field, types included) and the
    same counters and samples with the kernel as without, in each config variant: page views
    on and off, derived or dropped cookieless hits, trusted proxies, privacy modes, opt-outs,
    a small max_line_bytes."""
    config = configs[variant]
    layout = VARIANTS[variant][0]

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(_access_line(layout), min_size=1, max_size=40))
    def check(lines: list[bytes]) -> None:
        pure = _run(_blocks(config, with_kernel=False, monkeypatch=monkeypatch), lines)
        fast = _run(_blocks(config, with_kernel=True, monkeypatch=monkeypatch), lines)
        assert [type(p) for p in fast[0]] == [type(p) for p in pure[0]]
        assert fast == pure

    check()


COOKIE_NAMES = ["km_ai", "km", "km_aix", "km_ni", "uid", "sid", "km_optout", "other", " km_ai", ""]
COOKIE_VALUES = [
    "abcdef12",
    "AbC.9_~+-",
    "bob",
    "x1",
    "00-00",
    "undefined",
    "Banned",
    '"quoted1"',
    "bob%40example.com",
    "",
    " padded1 \t",
    "a=b=c",
    "x" * 256,
]


@st.composite
def _cookie_header(draw: st.DrawFn) -> str:
    pieces = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 9)) == 0:
            pieces.append(draw(st.sampled_from(["", " ", "garbage", "=x", "\t;"])))
            continue
        name = draw(st.sampled_from(COOKIE_NAMES))
        eq = draw(st.sampled_from(["=", " =", "=\t", " = "]))
        pieces.append(name + eq + draw(st.sampled_from(COOKIE_VALUES)))
    sep = draw(st.sampled_from(["; ", ";", ";\t", " ; "]))
    return sep.join(pieces) or draw(st.sampled_from(["", "-"]))


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(_cookie_header(), min_size=1, max_size=30))
def test_cookie_headers_are_taken_as_the_pure_path_takes_them(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, headers: list[str]
) -> None:
    """The kernel takes plain cookie values itself: with several names per kind (one a prefix
    of another), repeats (the first wins), blanks, tabs, `=` in values, junk words, a blocklist,
    short and overlong values, quoted and encoded ones (left to the pure path), and an opt-out,
    every block gives the pure path's records and counters."""
    config = _cookie_config(tmp_path_factory)
    lines = [
        f'203.0.113.9 - - [28/Nov/2026:10:00:0{i % 10} +0000] "GET /p/{i} HTTP/1.1" 200 512 '
        f'"-" "Mozilla/5.0" "{h}" 0.004'.encode()
        for i, h in enumerate(headers)
    ]
    pure = _run(_blocks(config, with_kernel=False, monkeypatch=monkeypatch), lines)
    fast = _run(_blocks(config, with_kernel=True, monkeypatch=monkeypatch), lines)
    assert fast == pure


_COOKIE_CONFIG: list[Config] = []


def _cookie_config(factory: pytest.TempPathFactory) -> Config:
    if not _COOKIE_CONFIG:
        tmp = factory.mktemp("cookies")
        source = {
            "name": "web",
            "kind": "access",
            "paths": [str(tmp / "access.log")],
            "format": "nginx",
            "log_format": BLOCK_FORMATS["plain"],
        }
        identity = {
            "anonymous_cookies": ["km_ai", "km"],
            "named_cookies": ["km_ni", "uid"],
            "session_cookies": ["sid"],
            "blocklist": ["banned"],
        }
        extra = {"privacy": {"optout_cookie": "km_optout"}}
        path = make_config(tmp, sources=[source], identity=identity, extra=extra)
        _COOKIE_CONFIG.append(load_config(str(path)))
    return _COOKIE_CONFIG[0]


def test_the_native_cookie_intake_is_on_for_token_names(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The cookie spec the kernel gets: names longest first, their kinds, each kind's names in
    config order, the junk words with the blocklist; None when a name is not a plain token."""
    config = _cookie_config(tmp_path_factory)
    preparer = Preparer(config, b"s")
    spec = kernel.cookie_spec(preparer)
    assert spec is not None
    names, kinds, per_kind, junk = spec
    assert names == (b"km_optout", b"km_ai", b"km_ni", b"uid", b"sid", b"km")
    assert kinds == (3, 0, 1, 1, 2, 0)
    assert per_kind == ((1, 5), (2, 3), (4,))
    assert "banned" in junk and "undefined" in junk
    assert _bare_kernel(cookies=spec) is not None
    with pytest.raises(ValueError, match="bad index"):  # a device index pointing at a named cookie
        _bare_kernel(cookies=(names, kinds, ((2,), (1,), (4,)), junk))
    odd = config.model_copy(
        update={"identity": config.identity.model_copy(update={"named_cookies": ("a b",)})}
    )
    assert kernel.cookie_spec(Preparer(odd, b"s")) is None


def test_a_long_run_through_warm_caches_is_the_pure_paths(
    configs: dict[str, Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many blocks through one pair of preparers (caches warm, the previous line's time and
    stamp reused across blocks, the page messageId prefix reused per file) stay equal too."""
    config = configs["defaults"]
    pure_blocks = _blocks(config, with_kernel=False, monkeypatch=monkeypatch)
    fast_blocks = _blocks(config, with_kernel=True, monkeypatch=monkeypatch)
    lines = list(_lines(3000))
    for i in range(0, len(lines), 250):
        block = lines[i : i + 250]
        assert _run(fast_blocks, block) == _run(pure_blocks, block)


def _lines(n: int) -> Iterator[bytes]:
    for i in range(n):
        ts = f"28/Nov/2026:10:{i // 60 % 60:02d}:{i % 60:02d} +0000"
        cookie = COOKIES[i % len(COOKIES)].replace("0000001", f"{i % 50:07d}")
        request = REQUESTS[i % 5].replace("/p/1", f"/p/{i % 37}")
        yield (
            f'203.0.113.{i % 200} - - [{ts}] "{request}" 200 512 "-" '
            f'"{AGENTS[i % 2]}" "{cookie}" 0.004'
        ).encode()


def test_plain_records_in_workers(
    configs: dict[str, Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's preparer builds plain tuples (shipped without a copy): the kernel makes
    plain tuples there too, with the same fields."""
    config = configs["defaults"]
    with monkeypatch.context() as m:
        m.setenv("TRACKD_KERNEL", "1")
        stats = PipelineStats()
        blocks = BlockPreparer(
            config, Preparer(config, b"secret", stats.prepare, plain=True), stats
        )
    lines = list(_lines(50))
    out, _ = _run(blocks, lines)
    pure, _ = _run(_blocks(config, with_kernel=False, monkeypatch=monkeypatch), lines)
    assert out and all(type(p) is tuple for p in out)
    assert out == [tuple(p) for p in pure]


class TestWhichSources:
    def test_a_rule_on_other_fields_keeps_the_source_pure(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A rule that matches on a field beyond the request, host and status (here the user
        agent) leaves its source to the pure path, and the reason names rule and field."""
        rules = [
            {"name": "bot", "source": "web", "match": {"user_agent": "curl*"}, "event": "Curl"}
        ]
        cfg = load_config(
            str(
                make_config(
                    tmp_path, paths=[str(tmp_path / "a.log")], extra={"events": {"rules": rules}}
                )
            )
        )
        monkeypatch.setenv("TRACKD_KERNEL", "1")
        stats = PipelineStats()
        blocks = BlockPreparer(cfg, Preparer(cfg, b"s", stats.prepare), stats)
        assert blocks.sources["web"].kernel is None
        assert blocks.sources["web"].kernel_why == (
            "rule 'bot' matches on user_agent, which the kernel does not read"
        )

    def test_json_access_logs_keep_the_pure_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`format: json` has no layout regex: the pure path reads it, and the reason names the
        parser."""
        cfg = load_config(
            str(
                make_config(
                    tmp_path,
                    sources=[
                        {
                            "name": "web",
                            "kind": "access",
                            "paths": [str(tmp_path / "a.log")],
                            "format": "json",
                            "time_field": "time",
                        }
                    ],
                )
            )
        )
        monkeypatch.setenv("TRACKD_KERNEL", "1")
        stats = PipelineStats()
        blocks = BlockPreparer(cfg, Preparer(cfg, b"s", stats.prepare), stats)
        assert blocks.sources["web"].kernel is None
        assert "JsonAccessParser" in blocks.sources["web"].kernel_why

    def test_the_combined_family_has_the_kernel(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`common`, `combined` and `combined_cookie` run the kernel (their records are proved
        equal to the pure path's by `test_blocks_are_the_pure_paths`)."""
        monkeypatch.setenv("TRACKD_KERNEL", "1")
        for fmt in ("common", "combined", "combined_cookie"):
            d = tmp_path / fmt
            d.mkdir()
            cfg = load_config(str(make_config(d, paths=[str(d / "a.log")], fmt=fmt)))
            stats = PipelineStats()
            blocks = BlockPreparer(cfg, Preparer(cfg, b"s", stats.prepare), stats)
            assert blocks.sources["web"].kernel is not None, blocks.sources["web"].kernel_why

    def test_trackd_kernel_0_turns_it_off(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`TRACKD_KERNEL=0` is the switch to the pure path, and `--version`'s text says so."""
        monkeypatch.setenv("TRACKD_KERNEL", "0")
        assert kernel.load() == (None, "TRACKD_KERNEL=0")
        assert agent_native.kernel() == "native block kernel off (TRACKD_KERNEL=0)"
        monkeypatch.delenv("TRACKD_KERNEL")
        assert agent_native.kernel() == "native block kernel"


def test_a_reload_drops_the_kernels_encoded_pages(
    configs: dict[str, Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP with a new `base_url`: the kernel's cached page encodings are dropped with the
    preparer's, so the next hit's URL is the new one."""
    config = configs["defaults"]
    blocks = _blocks(config, with_kernel=True, monkeypatch=monkeypatch)
    line = next(_lines(1))
    (before,), _ = _run(blocks, [line])
    assert b"https://www.example.com/p/0" in before.page
    old = config.sources[0]
    new = old.model_copy(update={"base_url": "https://new.example"})
    monkeypatch.setenv("TRACKD_KERNEL", "1")
    blocks.reload_sources((new,), (old,))
    blocks.preparer.reload_sources((new,))
    assert blocks.sources["web"].kernel is not None
    (after,), _ = _run(blocks, [line])
    assert b"https://new.example/p/0" in after.page
