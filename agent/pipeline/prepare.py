"""The pure half of turning a parsed line into messages: everything that needs no identity state.

`Preparer.prepare` takes a parsed record and returns a `Prepared` — its identifiers normalised,
the page-view and rule decisions, rendered templates, page properties, context fields, derived id,
timestamp and page messageId — or None when the record can produce nothing (a static asset
without cookies, an opt-out). It keeps no state between records but its caches and counters, so
it can run in a worker process; the stateful half (`emit.py`) then only resolves identities and
assembles messages, in event-time order.
"""

from __future__ import annotations

import functools
import hashlib
from binascii import hexlify
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import orjson

from agent.config import Config, SourceConfig
from agent.events.messages import Timestamps, context_head
from agent.events.msgid import MessageIdPrefix, line_hash
from agent.events.pageviews import PageviewFilter
from agent.events.rules import Rule, Template, compile_rules
from agent.events.urls import UrlBuilder
from agent.identity.clientip import ClientIp
from agent.identity.derived import DerivedIds
from agent.identity.normalize import Normalizer
from agent.parse.accessor import access_field
from agent.parse.app import get_field
from agent.parse.cookies import CookieExtractor
from agent.records import AccessRecord, AppRecord, FileRef

#: SPEC §1.2 R6: events before 2009-01-01 are dropped as too old.
MIN_EVENT_TS = 1230768000.0
_INTAKE_CACHE_MAX = 50_000
_BYTES_CACHE_MAX = 50_000
_sha256 = hashlib.sha256

Getter = Callable[[str], Any]


class RuleHit(NamedTuple):
    """A rule that matched a record, with its templates rendered against the record."""

    #: Index of the rule in its source's rule list.
    rule: int
    #: identify: the normalised user, and "ok", "no_user", "junk_user" ("" without identify).
    user: str | None
    user_state: str
    device: str | None
    session: str | None
    traits: dict[str, Any] | None
    properties: dict[str, Any] | None
    page_name: str | None
    #: logout: (session, device), normalised; None without a logout action.
    logout: tuple[str | None, str | None] | None
    #: identity_change: (old, new), normalised; None without one.
    change: tuple[str | None, str | None] | None


class Prepared(NamedTuple):
    """A record ready for the stateful half. The first four fields are the merge key (SPEC §1.4:
    end of the time's precision interval, source, file offset), then the file."""

    key: float
    source: str
    offset: int
    file_id: int
    #: Offset just past the line, and up to 64 bytes before it (the offset marker's source).
    end: int
    before: bytes
    ts: float
    is_app: bool
    #: hex(sha256(line)[:16]): every messageId of the record uses it.
    lhash: bytes
    stamp: str
    path: str
    fp: str
    device: str | None
    named: str | None
    session: str | None
    is_page: bool
    #: `properties` of a page (path, search, url, referrer), encoded; also `context.page`.
    page: bytes | None
    #: The encoded head of `context` before `page` (ip per privacy.ip, userAgent;
    #: `context_head`).
    ctx: bytes
    #: The derived id, for a hit with neither a device nor a named id.
    derived: str | None
    page_id: str | None
    rules: tuple[RuleHit, ...]


#: `Prepared(*fields)` without the generated `__new__`'s frame (the hot path builds one per hit).
new_prepared = functools.partial(tuple.__new__, Prepared)


class PrepareStats:
    """What preparing counted: junk identifiers by kind, opt-outs, too-old events."""

    def __init__(self) -> None:
        self.junk: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.too_old: Counter[str] = Counter()


class Preparer:
    """Owns the stateless parts of emitting: intake, page views, rules, URLs, ids."""

    def __init__(
        self,
        config: Config,
        secret: bytes,
        stats: PrepareStats | None = None,
        *,
        plain: bool = False,
    ) -> None:
        ident = config.identity
        #: How a record is made: a `Prepared`, or (`plain`, in worker processes) the plain tuple
        #: of its fields, which `workers.ship_block` marshals without a copy.
        self.plain = plain
        self._new: Callable[[tuple[Any, ...]], Prepared] = (
            cast(Callable[[tuple[Any, ...]], Prepared], tuple) if plain else new_prepared
        )
        self.stats = stats or PrepareStats()
        self.normalizer = Normalizer(
            lowercase_emails=ident.lowercase_emails, blocklist=ident.blocklist
        )
        self.normalizer.junk = self.stats.junk
        self.derived = DerivedIds(secret, ident.site) if ident.cookieless == "derived" else None
        self.client_ip = ClientIp(ident.trusted_proxies, config.privacy.ip)
        self._anon_names = ident.anonymous_cookies
        self._named_names = ident.named_cookies
        self._session_names = ident.session_cookies
        self._optout = config.privacy.optout_cookie
        wanted = [*ident.anonymous_cookies, *ident.named_cookies, *ident.session_cookies]
        if self._optout:
            wanted.append(self._optout)
        self.cookies = CookieExtractor(wanted)
        pv = config.events.pageviews
        self.pageviews = PageviewFilter(pv) if pv.enabled else None
        self.rules = compile_rules(config.events.rules)
        self._redact = config.privacy.redact_params
        self.urls = {s.name: UrlBuilder(self._redact, s.base_url) for s in config.sources}
        self.timestamps = Timestamps()
        self._intake_cache: dict[
            str, tuple[str | None, str | None, str | None, bool, tuple[str, ...]]
        ] = {}
        self._ids: dict[tuple[str, str], MessageIdPrefix] = {}
        #: Encoded parts, keyed on the strings that repeat: (source, target, host) -> the page
        #: properties up to the referrer; referrer -> `,"referrer":…}`.
        self._page_heads: dict[tuple[str, str, str], bytes] = {}
        self._referrers: dict[str, bytes] = {}
        #: Client address / user agent -> its part of the context head (`context_head`).
        self._ips: dict[str, bytes] = {}
        self._agents: dict[str, bytes] = {}
        #: The previous record's time and its text: consecutive hits mostly share a second.
        self._last_ts = -1.0
        self._last_stamp = ""
        #: The previous access record's file and its messageId prefix (a block is one file).
        self._last_where: FileRef | None = None
        self._last_prefix = MessageIdPrefix("", "")

    def reload_sources(self, sources: tuple[SourceConfig, ...]) -> None:
        """URL builders for the sources of a reloaded config (SIGHUP)."""
        redact = self._redact
        self.urls = {
            s.name: self.urls.get(s.name) or UrlBuilder(redact, s.base_url) for s in sources
        }
        for s in sources:
            if self.urls[s.name].base_url != (s.base_url.rstrip("/") if s.base_url else None):
                self.urls[s.name] = UrlBuilder(redact, s.base_url)
        self._page_heads.clear()  # encoded with the old builders' base URLs

    def id_prefix(self, source: str, fp: str) -> MessageIdPrefix:
        key = (source, fp)
        prefix = self._ids.get(key)
        if prefix is None:
            prefix = self._ids[key] = MessageIdPrefix(source, fp)
        return prefix

    # -- records ---------------------------------------------------------------------------

    def prepare(
        self, where: FileRef, offset: int, end: int, raw: bytes, rec: AccessRecord | AppRecord
    ) -> Prepared | None:
        """The pure work for one record; None when it can produce nothing (counted if dropped)."""
        ts = rec.ts
        source = where.source
        if ts < MIN_EVENT_TS:
            self.stats.too_old[source] += 1
            return None
        if isinstance(rec, AppRecord):
            return self._app(where, offset, end, raw, rec)
        return self._access(where, offset, end, raw, rec)

    def _access(
        self, where: FileRef, offset: int, end: int, raw: bytes, rec: AccessRecord
    ) -> Prepared | None:
        # The hot path: one call per hit, so the helpers' caches are read inline here. SPEC
        # §1.1 intake: (device, named, session) from the cookies, junk counted; an opted-out
        # hit is dropped (counted). A raw Cookie header's intake is cached (visitors repeat).
        source = where.source
        if rec.cookies:
            intake = self._cookie_intake(rec.cookie_header, rec.cookies)
        else:
            header = rec.cookie_header
            hit = self._intake_cache.get(header)
            if hit is None:
                hit = self._cookie_intake(header, None)
                if len(self._intake_cache) >= _INTAKE_CACHE_MAX:
                    self._intake_cache.clear()
                self._intake_cache[header] = hit
            intake = hit
        device, named, session, optout, junk = intake
        if junk:
            counts = self.stats.junk
            for kind in junk:
                counts[kind] += 1
        if optout:
            self.stats.dropped["optout"] += 1
            return None
        rules = self._access_rules(source, rec) if self.rules else ()
        pv = self.pageviews
        is_page = pv is not None and pv(rec)
        if (
            not is_page
            and not rules
            and not (device is not None and (named is not None or session is not None))
        ):
            return None  # nothing to send, and no login to learn from
        ts = rec.ts
        ip = self.client_ip.client(rec.ip, rec.forwarded_for)
        page = self._page(source, rec)
        agent = rec.user_agent
        ip_part = self._ips.get(ip)
        if ip_part is None:
            ip_part = self._cached(self._ips, ip, context_head(self.client_ip.for_context(ip), ""))
        agent_part = self._agents.get(agent)
        if agent_part is None:
            agent_part = self._cached(self._agents, agent, context_head(None, agent))
        ctx = ip_part + agent_part
        derived = None
        if device is None and named is None and self.derived is not None:
            derived = self.derived(self.client_ip.normalized(ip), agent, ts)
        # line_hash inline (its call is a fifth of its cost).
        lhash = hexlify(_sha256(raw[:-1] if raw[-1:] == b"\r" else raw).digest()[:16])
        if is_page:
            if where is not self._last_where:
                self._last_where = where
                self._last_prefix = self.id_prefix(source, where.line_fp)
            page_id: str | None = self._last_prefix(offset, lhash, b"page")
        else:
            page_id = None
        if ts != self._last_ts:
            self._last_ts = ts
            self._last_stamp = self.timestamps(ts)
        return self._new(
            (
                ts + rec.precision,
                source,
                offset,
                where.file_id,
                end,
                raw[-63:] + b"\n",
                ts,
                False,
                lhash,
                self._last_stamp,
                where.path,
                where.line_fp,
                device,
                named,
                session,
                is_page,
                page,
                ctx,
                derived,
                page_id,
                rules,
            )
        )

    @staticmethod
    def _cached(cache: dict[str, bytes], key: str, value: bytes) -> bytes:
        if len(cache) >= _BYTES_CACHE_MAX:
            cache.clear()
        cache[key] = value
        return value

    def _access_rules(self, source: str, rec: AccessRecord) -> tuple[RuleHit, ...]:
        """The source's rules that match the record (SPEC §3.3). Rules see every hit: the bot
        filter is the page views' (SPEC §3.2), and a `POST /signup` from a script is a signup."""
        source_rules = self.rules.get(source)
        if not source_rules:
            return ()

        def get(name: str) -> Any:
            return access_field(rec, name)

        return self._rules(source_rules, get, app=False)

    def _page(self, source: str, rec: AccessRecord) -> bytes:
        """SPEC §3.1 page properties, encoded: path, search, url (when a host is known),
        referrer."""
        key = (source, rec.target, rec.host)
        head = self._page_heads.get(key)
        if head is None:
            head = self.page_head(self.urls[source], rec.target, rec.host)
            if len(self._page_heads) >= _BYTES_CACHE_MAX:
                self._page_heads.clear()
            self._page_heads[key] = head
        referrer = rec.referrer
        tail = self._referrers.get(referrer)
        if tail is None:
            tail = self.referrer_tail(self.urls[source], referrer)
            if len(self._referrers) >= _BYTES_CACHE_MAX:
                self._referrers.clear()
            self._referrers[referrer] = tail
        return head + tail

    @staticmethod
    def page_head(urls: UrlBuilder, target: str, host: str) -> bytes:
        """The page properties up to the referrer, encoded: `{"path":…,"search":…[,"url":…]`."""
        page_url = urls.page(target, host, None)
        page: dict[str, str] = {"path": page_url.path, "search": page_url.search}
        if page_url.url is not None:
            page["url"] = page_url.url
        return orjson.dumps(page)[:-1]

    @staticmethod
    def referrer_tail(urls: UrlBuilder, referrer: str) -> bytes:
        """`,"referrer":…}` (redacted like page URLs), closing the page properties."""
        shown = urls.referrer(referrer) if referrer else ""
        return b',"referrer":' + orjson.dumps(shown) + b"}"

    def _app(
        self, where: FileRef, offset: int, end: int, raw: bytes, rec: AppRecord
    ) -> Prepared | None:
        source_rules = self.rules.get(where.source)
        if not source_rules:
            return None
        fields = rec.fields

        def get(name: str) -> Any:
            return get_field(fields, name)

        rules = self._rules(source_rules, get, app=True)
        if not rules:
            return None
        ts = rec.ts
        lhash = line_hash(raw[:-1] if raw[-1:] == b"\r" else raw)
        return self._new(
            (
                ts + rec.precision,
                where.source,
                offset,
                where.file_id,
                end,
                raw[-63:] + b"\n",
                ts,
                True,
                lhash,
                self.timestamps(ts),
                where.path,
                where.line_fp,
                None,
                None,
                None,
                False,
                None,
                b"",
                None,
                None,
                rules,
            )
        )

    # -- identifiers -----------------------------------------------------------------------

    @property
    def cookie_names(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], str | None]:
        """The anonymous, named and session cookie names (config order), and the opt-out's."""
        return self._anon_names, self._named_names, self._session_names, self._optout

    def cookie_intake(
        self, header: str
    ) -> tuple[str | None, str | None, str | None, bool, tuple[str, ...]]:
        """(device, named, session, opted out, junk kinds seen) from a Cookie header alone."""
        return self._cookie_intake(header, None)

    def _cookie_intake(
        self, header: str, captured: dict[str, str] | None
    ) -> tuple[str | None, str | None, str | None, bool, tuple[str, ...]]:
        """(device, named, session, opted out, junk kinds seen) from a Cookie header."""
        jar = self.cookies(header) if header else {}
        if captured:
            jar = {**jar, **captured}
        if not jar:
            return None, None, None, False, ()
        if self._optout is not None and self._optout in jar:
            return None, None, None, True, ()
        junk: list[str] = []
        device = self._first(jar, self._anon_names, "device", junk)
        named = self._first(jar, self._named_names, "named", junk)
        session = self._first(jar, self._session_names, "session", junk)
        if device is not None and device == named:
            device = None  # SPEC §1.1: a km_ai equal to km_ni is the named id, not a device
        return device, named, session, False, tuple(junk)

    def _first(
        self, jar: dict[str, str], names: tuple[str, ...], kind: str, junk: list[str]
    ) -> str | None:
        check = self.normalizer.check
        for name in names:
            value = jar.get(name)
            if value is not None:
                found = check(kind, value)
                if found is not None:
                    return found
                junk.append(kind)
        return None

    # -- rules -----------------------------------------------------------------------------

    def _rules(self, rules: list[Rule], get: Getter, *, app: bool) -> tuple[RuleHit, ...]:
        hits = []
        first_identify = next((r.identify for r in rules if r.identify is not None), None)
        for i, rule in enumerate(rules):
            if not rule.matcher(get):
                continue
            user = device = session = None
            user_state = ""
            traits = None
            if rule.identify is not None:
                spec = rule.identify
                raw_user = spec.user.render(get)
                if raw_user is None:
                    user_state = "no_user"
                else:
                    user = self.normalizer.rendered("named", raw_user)
                    user_state = "ok" if user is not None else "junk_user"
                device = self._id(spec.device, get, "device")
                session = self._id(spec.session, get, "session")
                traits = {k: v for k, t in spec.traits.items() if (v := t.value(get)) is not None}
            elif app and rule.event is not None and first_identify is not None:
                # An app event of its own: its person is who the source's identify templates
                # name (the user, else a mapped session); user_state stays "" (no login).
                user = self._id(first_identify.user, get, "named")
                session = self._id(first_identify.session, get, "session")
            properties = None
            if rule.event is not None:
                properties = {
                    k: v for k, t in rule.properties.items() if (v := t.value(get)) is not None
                }
            logout = None
            if rule.logout is not None:
                logout = (
                    self._id(rule.logout.session, get, "session"),
                    self._id(rule.logout.device, get, "device"),
                )
            change = None
            if rule.change is not None:
                change = (
                    self._id(rule.change[0], get, "named"),
                    self._id(rule.change[1], get, "named"),
                )
            page_name = rule.page_name.render(get) if rule.page_name is not None else None
            hits.append(
                RuleHit(
                    i,
                    user,
                    user_state,
                    device,
                    session,
                    traits,
                    properties,
                    page_name,
                    logout,
                    change,
                )
            )
        return tuple(hits)

    def _id(self, template: Template | None, get: Getter, kind: str) -> str | None:
        if template is None:
            return None
        raw = template.render(get)
        return None if raw is None else self.normalizer.rendered(kind, raw)
