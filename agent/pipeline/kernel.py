"""The Python half of the optional native block kernel (`agent/_kernel.c`).

The kernel does the pure stage of an access source's lines in one call per block: it matches
each line with the layout's own regex — compiled here from `re`'s parse tree into a program for
its small backtracking VM, so the spans are exactly the regex's — hashes the line, formats the
page messageId, and looks up every part a hit repeats (Cookie header, request, user agent, client
address, referrer, time) by its raw bytes. On a miss it calls back into this module, which
computes the part with the pure path's own functions (`Preparer`, `PageviewFilter`, `ClientIp`,
the layout's time reader). A line it is not sure of (not printable ASCII, a backslash, no match,
an unreadable or too old time, a junk or opted-out identifier) comes back to `BlockPreparer` to
be done the pure way, so every counter, sample and error stays the pure path's. (One gauge can
read differently: `trackd_identities{kind="derived"}` counts derived ids computed, and a block's
kernel lines ask for theirs before the pure path does the lines left to it, so over lines of
several days a day's cache may be dropped at another point. The ids are the same either way.)

Optional like PyYAML's libyaml: without a C compiler at install time, with `TRACKD_KERNEL=0`, or
for a source it does not cover (app sources, rules on the source, the `json` and `regex` formats,
layouts with features it lacks), the pure path does everything, byte for byte the same
(tests/pipeline/test_kernel.py proves it on generated logs). It covers the `nginx` and `apache`
layouts and the `common`/`combined`/`combined_cookie` formats.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

from agent import native
from agent.events.messages import context_head
from agent.events.msgid import NAMESPACE
from agent.events.rules import Rule
from agent.parse.accessor import access_field, alias_of
from agent.parse.clf import ClfParser
from agent.parse.fields import dash, to_int
from agent.parse.layout import Capture, CompiledParser
from agent.parse.request import split_request
from agent.parse.timefmt import ClfTime, IsoTime, epoch_scaled, parse_msec
from agent.pipeline.prepare import Prepared, Preparer
from agent.records import AccessRecord, FileRef

# `re`'s parser and opcodes: private modules, but their shape is what `re` itself compiles
# from; a Python whose parse tree holds anything this module does not know gets no kernel.
_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")

OP_CHAR, OP_ANY, OP_CLASS, OP_SPLIT, OP_JMP, OP_SAVE, OP_REP = 1, 2, 3, 4, 5, 6, 7
OP_AT_END, OP_AT_BEGIN, OP_AT_END_STRING, OP_MATCH = 8, 9, 10, 11
#: Unbounded repeats run to the end of the line (lines are far shorter).
_UNBOUNDED = 1 << 30
#: General (not single-character) repeats are unrolled up to this many copies.
_MAX_UNROLL = 16
#: The VM's limit (agent/_kernel.c Program_init).
_MAX_GROUPS = 1000
_ALL = frozenset(range(256))


class Unsupported(Exception):
    """The kernel cannot run this source; the message says why (the debug log `native_kernel`)."""


def load() -> tuple[ModuleType | None, str]:
    """The native module and "", or None and why not."""
    if native.kernel_switched_off():
        return None, "TRACKD_KERNEL=0"
    try:
        module = importlib.import_module("agent._kernel")
    except ImportError:
        return None, "not built (no C compiler when trackd was installed, or TRACKD_PURE=1)"
    return module, ""


# -- the VM program ----------------------------------------------------------------------------


class Program(NamedTuple):
    code: tuple[int, ...]
    sets: bytes
    groups: int


def compile_program(regex: re.Pattern[str]) -> Program:
    """The VM program of `regex` (used as `regex.match(line)`), or Unsupported."""
    if regex.groups > _MAX_GROUPS:
        raise Unsupported(f"more than {_MAX_GROUPS} groups")
    tree = _parser.parse(regex.pattern, regex.flags)
    flags = tree.state.flags | regex.flags
    if flags & re.IGNORECASE:
        raise Unsupported("the layout regex ignores case")
    if flags & re.MULTILINE:
        raise Unsupported("the layout regex is MULTILINE (line anchors)")
    em = _Emitter(dotall=bool(flags & re.DOTALL))
    em.seq(tree.data)
    em.emit(OP_MATCH)
    sets = b"".join(_bitmap(s) for s in em.sets)
    return Program(tuple(em.code), sets, regex.groups)


def _bitmap(members: frozenset[int]) -> bytes:
    bits = bytearray(32)
    for c in members:
        bits[c >> 3] |= 1 << (c & 7)
    return bytes(bits)


def _category(cat: Any, c: int) -> bool:
    ch = chr(c)
    if cat is _c.CATEGORY_DIGIT:
        return ch.isdecimal()
    if cat is _c.CATEGORY_NOT_DIGIT:
        return not ch.isdecimal()
    if cat is _c.CATEGORY_SPACE:
        return ch.isspace()
    if cat is _c.CATEGORY_NOT_SPACE:
        return not ch.isspace()
    if cat is _c.CATEGORY_WORD:
        return ch.isalnum() or ch == "_"
    if cat is _c.CATEGORY_NOT_WORD:
        return not (ch.isalnum() or ch == "_")
    raise Unsupported(f"the character category {cat}")


class _Emitter:
    """`re` parse tree -> VM code. Only bytes 0x20-0x7e ever reach the VM (other lines are the
    pure path's), so sets are computed over ASCII with `str`'s own character tests."""

    def __init__(self, *, dotall: bool) -> None:
        self.code: list[int] = []
        self.sets: list[frozenset[int]] = []
        self._set_ids: dict[frozenset[int], int] = {}
        self._any = _ALL if dotall else _ALL - {10}

    def emit(self, *xs: int) -> int:
        at = len(self.code)
        self.code.extend(xs)
        return at

    def set_id(self, members: frozenset[int]) -> int:
        found = self._set_ids.get(members)
        if found is None:
            found = self._set_ids[members] = len(self.sets)
            self.sets.append(members)
        return found

    def single(self, op: Any, av: Any) -> frozenset[int] | None:
        """The characters a one-character node matches, or None when it is not one."""
        if op is _c.LITERAL:
            return frozenset({av}) if av < 256 else frozenset()
        if op is _c.NOT_LITERAL:
            return _ALL - {av}
        if op is _c.ANY:
            return self._any
        if op is _c.IN:
            negate = False
            members: set[int] = set()
            for item_op, item_av in av:
                if item_op is _c.NEGATE:
                    negate = True
                elif item_op is _c.LITERAL:
                    if item_av < 256:
                        members.add(item_av)
                elif item_op is _c.RANGE:
                    lo, hi = item_av
                    members.update(range(lo, min(hi, 255) + 1))
                elif item_op is _c.CATEGORY:
                    members.update(c for c in range(128) if _category(item_av, c))
                else:
                    raise Unsupported(f"the class item {item_op}")
            return _ALL - members if negate else frozenset(members)
        return None

    def seq(self, items: Any) -> None:
        for op, av in items:
            self.node(op, av)

    def node(self, op: Any, av: Any) -> None:
        if op is _c.LITERAL and av < 128:
            self.emit(OP_CHAR, av)
            return
        chars = self.single(op, av)
        if chars is not None:
            self.emit(OP_CLASS, self.set_id(chars))
            return
        if op is _c.MAX_REPEAT or op is _c.MIN_REPEAT:
            self.repeat(av, greedy=op is _c.MAX_REPEAT)
        elif op is _c.SUBPATTERN:
            group, add_flags, del_flags, body = av
            if add_flags or del_flags:
                raise Unsupported("inline flags in the layout regex")
            if group is None:
                self.seq(body)
            else:
                self.emit(OP_SAVE, 2 * (group - 1))
                self.seq(body)
                self.emit(OP_SAVE, 2 * (group - 1) + 1)
        elif op is _c.BRANCH:
            self.branch(av[1])
        elif op is _c.AT:
            if av is _c.AT_END:
                self.emit(OP_AT_END)
            elif av in (_c.AT_BEGINNING, _c.AT_BEGINNING_STRING):
                self.emit(OP_AT_BEGIN)
            elif av is _c.AT_END_STRING:
                self.emit(OP_AT_END_STRING)
            else:
                raise Unsupported(f"the anchor {av}")
        else:
            raise Unsupported(f"{op} in the layout regex")

    def branch(self, alternatives: list[Any]) -> None:
        jumps = []
        for i, alt in enumerate(alternatives):
            if i == len(alternatives) - 1:
                self.seq(alt)
                break
            split = self.emit(OP_SPLIT, 0, 0)
            self.code[split + 1] = len(self.code)
            self.seq(alt)
            jumps.append(self.emit(OP_JMP, 0))
            self.code[split + 2] = len(self.code)
        for j in jumps:
            self.code[j + 1] = len(self.code)

    def repeat(self, av: Any, *, greedy: bool) -> None:
        lo, hi, body = av
        if len(body) == 1:
            chars = self.single(*body[0])
            if chars is not None:
                if lo >= _UNBOUNDED or (hi != _c.MAXREPEAT and hi >= _UNBOUNDED):
                    raise Unsupported("a repeat count too large")
                top = _UNBOUNDED if hi == _c.MAXREPEAT else hi
                self.emit(OP_REP, self.set_id(chars), lo, top, int(greedy))
                return
        if _nullable(body) and hi != 1:
            # `re` stops a loop whose body matched nothing; the VM has no such check, so only
            # an optional (at most once: no loop) of a nullable body is taken.
            raise Unsupported("a repeat of something that can match nothing")
        if lo > _MAX_UNROLL or (hi != _c.MAXREPEAT and hi - lo > _MAX_UNROLL):
            raise Unsupported("a repeat too long to unroll")
        for _ in range(lo):
            self.seq(body)
        if hi == _c.MAXREPEAT:
            top = self.emit(OP_SPLIT, 0, 0)
            self.seq(body)
            self.emit(OP_JMP, top)
            self._prefer(top, top + 3, len(self.code), greedy)
            return
        splits = []
        for _ in range(hi - lo):
            split = self.emit(OP_SPLIT, 0, 0)
            splits.append(split)
            self.seq(body)
        out = len(self.code)
        for split in splits:
            self._prefer(split, split + 3, out, greedy)

    def _prefer(self, split: int, more: int, out: int, greedy: bool) -> None:
        self.code[split + 1], self.code[split + 2] = (more, out) if greedy else (out, more)


def _nullable(items: Any) -> bool:
    for op, av in items:
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            if av[0] > 0 and not _nullable(av[2]):
                return False
        elif op is _c.SUBPATTERN:
            if not _nullable(av[3]):
                return False
        elif op is _c.BRANCH:
            if not any(_nullable(alt) for alt in av[1]):
                return False
        elif op is not _c.AT:
            return False
    return True


# -- one source's kernel -----------------------------------------------------------------------

#: The record fields the kernel reads, in the order `Kernel(groups=…)` takes their groups.
FIELDS = ("ts", "ip", "request", "status", "referrer", "user_agent", "cookie", "forwarded_for")
#: Feeds the kernel reads or may ignore (no rules: prepare never reads bytes or request_time).
_KNOWN_FEEDS = frozenset((*FIELDS, "host", "bytes", "request_time"))


class _Layout(NamedTuple):
    groups: tuple[int, ...]
    hosts: tuple[int, ...]
    time_of: Callable[[str], float | None]
    precision: float
    #: Whether `-` reads as "" in the client address (the compiled layouts; not `ClfParser`).
    dash_ip: bool = True
    #: A group that does not take part in a match reads as "" (a user's regex).
    optional_groups: bool = False
    #: The names of the captures that are extras (what rules read by name before aliases).
    extras: frozenset[str] = frozenset()


def _clf_layout(parser: ClfParser) -> _Layout:
    """The groups of the `common`/`combined`/`combined_cookie` regex, as `ClfParser` reads them:
    the address as logged (no `-` rule), the quoted fields dashed."""
    n = parser.regex.groups
    quoted = (8, 9, 10 if n >= 10 else 0) if n >= 9 else (0, 0, 0)
    groups = (4, 1, 5, 6, *quoted, 0)
    return _Layout(groups, (), ClfTime(), 1.0, dash_ip=False)


def _layout(parser: CompiledParser) -> _Layout:
    """Which group feeds each field, chosen as `assemble.assembler_source` chooses them."""
    best: dict[str, tuple[Capture, int]] = {}
    hosts: list[tuple[int, int]] = []
    extras: set[str] = set()
    for cap, idx in parser.captures:
        feeds = cap.feeds
        if feeds is None:
            extras.add(cap.name)  # only rules read those
            continue
        if feeds not in _KNOWN_FEEDS:
            raise Unsupported(f"the layout captures {cap.label or cap.name} (feeds {feeds})")
        if feeds == "host":
            hosts.append((cap.rank, idx))
            continue
        held = best.get(feeds)
        if held is None or cap.rank < held[0].rank:
            if held is not None:
                extras.add(held[0].name)
            best[feeds] = (cap, idx)
        else:
            extras.add(cap.name)
    if len(hosts) > 8:
        raise Unsupported("more than 8 host captures")
    time_cap = best["ts"][0]
    time_of: Callable[[str], float | None]
    if time_cap.time == "clf":
        time_of, precision = ClfTime(), 1.0
    elif time_cap.time == "iso":
        time_of, precision = IsoTime(), 1.0
    elif time_cap.time == "msec":
        time_of, precision = parse_msec, 0.001
    elif time_cap.time == "epoch":
        scale = time_cap.scale

        def time_of(text: str) -> float | None:
            return epoch_scaled(text, scale)

        precision = 1 / scale
    else:
        raise Unsupported(f"a {time_cap.time or 'custom'} time")
    groups = tuple(best[f][1] + 1 if f in best else 0 for f in FIELDS)
    hosts_in_order = tuple(i + 1 for _, i in sorted(hosts))
    return _Layout(
        groups,
        hosts_in_order,
        time_of,
        precision,
        optional_groups=parser.optional_groups,
        extras=frozenset(extras),
    )


class SourceKernel:
    """The native kernel of one access source, with the pure path's functions for its misses."""

    __slots__ = ("_kernel", "_max_line", "_where", "_where_of")

    def __init__(
        self, native: ModuleType, preparer: Preparer, source: str, parser: object, max_line: int
    ) -> None:
        if isinstance(parser, CompiledParser):
            layout = _layout(parser)
        elif isinstance(parser, ClfParser):
            layout = _clf_layout(parser)
        else:
            raise Unsupported(f"the format's parser ({type(parser).__name__})")
        rules = preparer.rules.get(source) or []
        for rule in rules:
            for name in rule.matcher.fields:
                if not _request_field(name, layout.extras):
                    raise Unsupported(
                        f"rule {rule.name!r} matches on {name}, which the kernel does not read"
                    )
        program = compile_program(parser.regex)
        pv = preparer.pageviews
        client_ip = preparer.client_ip
        reader, precision = layout.time_of, layout.precision

        def time_of(raw: bytes) -> tuple[float, float] | None:
            ts = reader(raw.decode("ascii"))
            return None if ts is None else (ts, precision)

        def request_of(raw: bytes) -> tuple[bool, bytes]:
            request, _, host = raw.decode("ascii").partition("\n")
            method, target, _protocol = split_request(request)
            ok = pv is not None and pv.request_ok(method, target)
            return ok, preparer.page_head(preparer.urls[source], target, host)

        def status_of(raw: bytes) -> bool:
            return pv is not None and pv.status_ok(to_int(raw.decode("ascii")))

        def referrer_of(raw: bytes) -> bytes:
            # The builders are looked up per miss: a reload (SIGHUP) replaces them.
            return preparer.referrer_tail(preparer.urls[source], dash(raw.decode("ascii")))

        def agent_of(raw: bytes) -> tuple[bytes, bool, str]:
            agent = dash(raw.decode("ascii"))
            return context_head(None, agent), pv is not None and pv.is_bot(agent), agent

        address: Callable[[str], str] = dash if layout.dash_ip else str

        def ip_of(raw: bytes, forwarded: bytes) -> tuple[bytes, str]:
            ip = client_ip.client(address(raw.decode("ascii")), dash(forwarded.decode("ascii")))
            return context_head(client_ip.for_context(ip), ""), client_ip.normalized(ip)

        def intake_of(raw: bytes) -> tuple[Any, ...]:
            return preparer.cookie_intake(dash(raw.decode("ascii")))

        def rules_of(raw: bytes) -> bool:
            return _may_match(rules, raw.decode("ascii"))

        derived = preparer.derived
        self._kernel = native.Kernel(
            program=native.Program(program.code, program.sets, program.groups),
            groups=layout.groups,
            hosts=layout.hosts,
            optional_groups=layout.optional_groups,
            pageviews=pv is not None,
            derived=derived is not None,
            # In the order of agent/_kernel.c's C_TIME … C_COOKIE.
            calls=(
                time_of,
                request_of,
                status_of,
                referrer_of,
                agent_of,
                ip_of,
                intake_of,
                rules_of,
            ),
            stamp_of=preparer.timestamps,
            derived_of=derived if derived is not None else _no_derived,
            record_type=None if preparer.plain else Prepared,
            rules=bool(rules),
            # Plain IPv4 client addresses are done natively (agent/_kernel.c plain_ipv4).
            ip_mode=_IP_MODES.get(client_ip.mode, -1),
            trusted=client_ip.has_trusted,
            dash_ip=layout.dash_ip,
            cookies=cookie_spec(preparer),
        )
        self._max_line = max_line
        self._where_of: FileRef | None = None
        self._where: tuple[str, int, str, str, bytes] = ("", 0, "", "", b"")

    def run(self, where: FileRef, start: int, end: int, block: bytes) -> list[Any]:
        """`Kernel.run` over a block of complete lines joined by `\\n` (at least one line):
        records, and (line, start, end) of the lines left to the pure path."""
        if where is not self._where_of:
            self._where_of = where
            prefix = NAMESPACE.bytes + f"trackd:v1\n{where.source}\n{where.line_fp}\n".encode()
            self._where = (where.source, where.file_id, where.path, where.line_fp, prefix)
        out: list[Any] = self._kernel.run(block, start, end, self._max_line, self._where)
        return out


#: A cookie name as RFC 6265 tokens allow (what the native extractor can match exactly).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}").fullmatch


def cookie_spec(preparer: Preparer) -> tuple[Any, ...] | None:
    """What agent/_kernel.c needs to take plain cookie values itself, the way
    `CookieExtractor` and `Preparer._cookie_intake` do; None (every header is looked up, the pure
    path computing it once) when a name is not a plain token or serves two kinds."""
    anon, named, session, optout = preparer.cookie_names
    kinds: dict[str, int] = {}
    for kind, names in enumerate((anon, named, session, (optout,) if optout else ())):
        for name in names:
            if not _TOKEN(name) or kinds.setdefault(name, kind) != kind:
                return None
    if len(kinds) > 64:
        return None
    # The extractor's alternation: longest first, ties in config order (a stable sort).
    order = sorted(kinds, key=len, reverse=True)
    index = {name: i for i, name in enumerate(order)}
    per_kind = tuple(tuple(index[n] for n in names) for names in (anon, named, session))
    return (
        tuple(n.encode() for n in order),
        tuple(kinds[n] for n in order),
        per_kind,
        preparer.normalizer.junk_words,
    )


#: privacy.ip as agent/_kernel.c numbers it.
_IP_MODES = {"full": 0, "truncate": 1, "drop": 2}
#: Fields a rule may match on that come from the request line, its host and status alone
#: (`accessor.access_field` reads these without the record's extras).
_DIRECT_REQUEST_FIELDS = frozenset(("method", "protocol", "status", "host", "path"))
#: Looked up among the extras first (a capture of that name), then derived from the request.
_DERIVED_REQUEST_FIELDS = frozenset(("target", "query", "request"))


def _request_field(name: str, extras: frozenset[str]) -> bool:
    """Whether a rule condition on `name` depends only on the request, host and status."""
    if name in _DIRECT_REQUEST_FIELDS:
        return True
    if name.startswith("query."):
        return f"arg_{name[6:]}" not in extras  # `$arg_NAME` captured alone is read too
    if name in extras:
        return False
    alias = alias_of(name)
    return alias is not None and (
        alias in _DIRECT_REQUEST_FIELDS or alias in _DERIVED_REQUEST_FIELDS
    )


def _may_match(rules: list[Rule], key: str) -> bool:
    """Whether any rule matches a record with this request, host and status (`key`: the three
    joined by newlines); the other fields are empty, and no condition reads them."""
    request, host, status = key.split("\n")
    method, target, protocol = split_request(request)
    rec = AccessRecord(
        0.0, 1.0, "", method, target, protocol, to_int(status), 0, "", "", "", None,
        dash(host), None, "", None,
    )  # fmt: skip

    def get(name: str) -> Any:
        return access_field(rec, name)

    return any(rule.matcher(get) for rule in rules)


def _no_derived(ip_norm: str, user_agent: str, ts: float) -> str:
    raise AssertionError("derived ids are off: the kernel never asks")


def build(
    preparer: Preparer, source: str, parser: object, max_line: int
) -> tuple[SourceKernel | None, str]:
    """The kernel for an access source and "", or None and why the pure path does it."""
    native, why = load()
    if native is None:
        return None, why
    try:
        return SourceKernel(native, preparer, source, parser, max_line), ""
    except Unsupported as exc:
        return None, str(exc)


__all__ = ["SourceKernel", "Unsupported", "build", "compile_program"]
