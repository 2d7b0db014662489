"""One record in, its messages out: intake -> rules -> identity -> encoding (SPEC §1, §3).

The pipeline hands records over in event-time order, in batches: `intake` runs first over a batch
(time checks, cookie identifiers) so the batch's identities can be prefetched at once, then `emit`
resolves and encodes each record. Messages from one record come out in the order of SPEC §3.3:
`identify`, `alias`, `track`, `page`. Nothing here depends on the wall clock, so replaying the
same lines into fresh state gives the same bytes.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, NamedTuple

from agent.config import Config, SourceConfig
from agent.events.messages import (
    NamedOut,
    Timestamps,
    alias_message,
    encode,
    identify_message,
    page_message,
    track_message,
)
from agent.events.msgid import MessageIdPrefix, line_hash
from agent.events.pageviews import PageviewFilter
from agent.events.rules import Rule, compile_rules, first_identify
from agent.events.urls import UrlBuilder
from agent.identity.clientip import ClientIp
from agent.identity.derived import DerivedIds
from agent.identity.graph import IdentityStore, LoginRef
from agent.identity.normalize import Normalizer
from agent.identity.resolver import Attribution, IdentityEvent, Resolver
from agent.parse.accessor import access_field
from agent.parse.app import get_field
from agent.parse.cookies import CookieExtractor
from agent.records import AccessRecord, AppRecord, FileRef

#: SPEC §1.2 R6: events before 2009-01-01 are dropped as too old ...
MIN_EVENT_TS = 1230768000.0
#: ... and so are events more than an hour past the newest one already read from their source.
FUTURE_SLACK = 3600.0
_INTAKE_CACHE_MAX = 50_000


class Intake(NamedTuple):
    """The identifiers an access record carries (normalised; None when absent or junk)."""

    device: str | None
    named: str | None
    session: str | None


#: The record as the emitter sees it: source, line offset, raw line, record, and its file.
class Rec(NamedTuple):
    source: str
    offset: int
    raw: bytes
    record: AccessRecord | AppRecord
    file: FileRef


class PipelineStats:
    """Counters the pipeline keeps; metrics and summaries read them (never values, only counts)."""

    def __init__(self) -> None:
        self.lines: Counter[str] = Counter()
        self.skipped: Counter[tuple[str, str]] = Counter()
        self.messages: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.rule_skipped: Counter[tuple[str, str]] = Counter()
        #: Page views by how their person was decided: named, device, derived.
        self.resolutions: Counter[str] = Counter()
        #: App lines that continue the entry before them (tracebacks): not records, not errors.
        self.continuations: Counter[str] = Counter()
        self.enqueued = 0
        self.commits = 0
        #: A bounded sample of skipped lines per source, for `check` and debug logs.
        self.samples: dict[str, deque[tuple[str, str]]] = {}


class _Identified(NamedTuple):
    """An identify rule's outcome on one record: the person and the epoch it binds."""

    user: str
    epoch: str | None


class Emitter:
    """Owns intake, rules, identity and encoding; appends encoded messages to `rows`."""

    def __init__(
        self,
        config: Config,
        store: IdentityStore,
        secret: bytes,
        stats: PipelineStats,
        watermarks: dict[str, float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        ident = config.identity
        self._clock = clock
        self.stats = stats
        self.resolver = Resolver(
            store,
            max_named_per_device=ident.max_named_per_device,
            max_devices_per_named=ident.max_devices_per_named,
            session_timeout=ident.session_timeout,
            session_ttl=ident.session_ttl,
            join_window=ident.join_window,
        )
        self.normalizer = Normalizer(
            lowercase_emails=ident.lowercase_emails, blocklist=ident.blocklist
        )
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
        self._first_identify = {src: first_identify(rules) for src, rules in self.rules.items()}
        self.urls = {
            s.name: UrlBuilder(config.privacy.redact_params, s.base_url) for s in config.sources
        }
        self.sources: dict[str, SourceConfig] = {s.name: s for s in config.sources}
        self.timestamps = Timestamps()
        self.named_out = NamedOut(secret if config.privacy.hash_named == "sha256" else None)
        self.rows: list[bytes] = []
        self.watermarks = watermarks
        self.watermarks_dirty: set[str] = set()
        self._intake_cache: dict[str, tuple[Intake, bool, tuple[str, ...]]] = {}
        self._ids: dict[tuple[str, str], MessageIdPrefix] = {}

    # -- pass 1: intake --------------------------------------------------------------------

    def in_time(self, source: str, ts: float) -> bool:
        """R6: drop (and count) events before 2009, and events over an hour past both the
        newest event already read from their source and the clock.

        Read literally, "an hour past the newest event" alone would drop every event after any
        hour-long lull in traffic, for good (the newest event could then never advance). The
        clock bounds it: a garbage year, or a host whose clock runs ahead, is still caught,
        while lulls and backfills of old logs are not. Only the decision to drop uses the clock;
        no clock value ever enters a message.
        """
        if ts < MIN_EVENT_TS:
            self.stats.skipped[(source, "too_old")] += 1
            return False
        wm = self.watermarks.get(source)
        if wm is None or ts > wm:
            if ts > FUTURE_SLACK + max(wm if wm is not None else 0.0, self._clock()):
                self.stats.skipped[(source, "future")] += 1
                return False
            self.watermarks[source] = ts
            self.watermarks_dirty.add(source)
        return True

    def intake(self, rec: AccessRecord) -> Intake | None:
        """The identifiers of an access record; None when it opted out (counted)."""
        if rec.cookies:
            found, optout, junk = self._cookie_intake(rec.cookie_header, rec.cookies)
        else:
            key = rec.cookie_header
            hit = self._intake_cache.get(key)
            if hit is None:
                hit = self._cookie_intake(key, None)
                if len(self._intake_cache) >= _INTAKE_CACHE_MAX:
                    self._intake_cache.clear()
                self._intake_cache[key] = hit
            found, optout, junk = hit
        if junk:
            counts = self.normalizer.junk
            for kind in junk:
                counts[kind] += 1
        if optout:
            self.stats.dropped["optout"] += 1
            return None
        return found

    def _cookie_intake(
        self, header: str, captured: dict[str, str] | None
    ) -> tuple[Intake, bool, tuple[str, ...]]:
        """(identifiers, opted out, junk kinds seen) from a Cookie header (SPEC §1.1)."""
        jar = self.cookies(header) if header else {}
        if captured:
            jar = {**jar, **captured}
        if not jar:
            return _NO_IDS, False, ()
        if self._optout is not None and self._optout in jar:
            return _NO_IDS, True, ()
        junk: list[str] = []
        device = self._first(jar, self._anon_names, "device", junk)
        named = self._first(jar, self._named_names, "named", junk)
        session = self._first(jar, self._session_names, "session", junk)
        if device is not None and device == named:
            device = None  # SPEC §1.1: a km_ai equal to km_ni is the named id, not a device
        return Intake(device, named, session), False, tuple(junk)

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

    # -- pass 2: emit ----------------------------------------------------------------------

    def access(self, r: Rec, ids: Intake) -> None:
        """Rules, identity and messages for one access record."""
        rec = r.record
        assert isinstance(rec, AccessRecord)  # the pipeline routes by source kind
        rules = self.rules.get(r.source)
        matched: list[Rule] = []
        get: Callable[[str], Any] | None = None
        if rules and not self._is_bot(rec):

            def get(name: str) -> Any:
                return access_field(rec, name)

            matched = [rule for rule in rules if rule.matcher(get)]
        pv = self.pageviews
        is_page = pv is not None and pv(rec)
        ts = rec.ts
        if not matched and not is_page:
            if ids.device is not None and (ids.named is not None or ids.session is not None):
                # Not an event, but a login by cookie or a session join still counts (R2).
                attribution, events = self.resolver.hit(ts, ids.device, ids.named, ids.session)
                if events:
                    page_ctx, _ip = self._page_context(r, rec)
                    context = self._context(page_ctx, attribution, r)
                    stamp = self.timestamps(ts)
                    self.rows.extend(self._alias(r, ev, stamp, context) for ev in events)
            return
        early: list[bytes] = []  # identify + alias messages of this record's rules
        page_ctx, ip = self._page_context(r, rec)
        if get is not None:
            for rule in matched:
                self._identity_rules(r, rule, get, early, page_ctx, default_device=ids.device)
        device, named, session = ids
        if device is None and named is None and session is None:
            attribution, events = self._cookieless(ip, rec, ts)
        else:
            attribution, events = self.resolver.hit(ts, device, named, session)
            if attribution.resolution == "none":
                attribution, events = self._cookieless(ip, rec, ts)
        if attribution.resolution == "dropped":
            self.stats.dropped["cookieless"] += 1
            self._flush(early)
            return
        context = self._context(page_ctx, attribution, r)
        stamp = self.timestamps(ts)
        early.extend(self._alias(r, ev, stamp, context) for ev in events)
        rows = self.rows
        rows.extend(early)
        page_name = None
        for rule in matched:
            if rule.page_name is not None and get is not None and page_name is None:
                page_name = rule.page_name.render(get)
            if rule.event is not None and get is not None:
                rows.append(self._track(r, rule, get, stamp, attribution, context))
        if is_page:
            self.stats.resolutions[attribution.resolution] += 1
            page = context["page"]
            rows.append(
                encode(
                    page_message(
                        self._id(r, b"page"),
                        stamp,
                        self._user(attribution.user_id),
                        attribution.anonymous_id,
                        page_name,
                        page,
                        context,
                    )
                )
            )
            self.stats.messages["page"] += 1

    def app(self, r: Rec) -> None:
        """Rules, identity and messages for one app record."""
        rec = r.record
        assert isinstance(rec, AppRecord)  # the pipeline routes by source kind
        rules = self.rules.get(r.source)
        if not rules:
            return
        fields = rec.fields

        def get(name: str) -> Any:
            return get_field(fields, name)

        matched = [rule for rule in rules if rule.matcher(get)]
        if not matched:
            return
        early: list[bytes] = []
        identified: _Identified | None = None
        for rule in matched:
            found = self._identity_rules(r, rule, get, early, None, default_device=None)
            identified = identified or found
        stamp = self.timestamps(rec.ts)
        self.rows.extend(early)
        for rule in matched:
            if rule.event is None:
                continue
            person = identified or self._app_person(r, get)
            if person is None:
                self.stats.rule_skipped[(rule.name, "no_user")] += 1
                continue
            attribution = Attribution(person.epoch, person.user, "named", False)
            context = self._context(None, attribution, r)
            self.rows.append(self._track(r, rule, get, stamp, attribution, context))

    def _identity_rules(
        self,
        r: Rec,
        rule: Rule,
        get: Callable[[str], Any],
        out: list[bytes],
        page_ctx: dict[str, Any] | None,
        *,
        default_device: str | None,
    ) -> _Identified | None:
        """identify (R2), logout (R3) and identity_change (R7) of one matched rule."""
        ts = r.record.ts
        result: _Identified | None = None
        norm = self.normalizer
        if rule.identify is not None:
            spec = rule.identify
            raw_user = spec.user.render(get)
            user = norm.named(raw_user) if raw_user is not None else None
            if raw_user is None:
                self.stats.rule_skipped[(rule.name, "no_user")] += 1
            elif user is None:
                self.stats.rule_skipped[(rule.name, "junk_user")] += 1
            else:
                device = self._render_id(spec.device, get, "device") or default_device
                session = self._render_id(spec.session, get, "session")
                ref = self._login_ref(r)
                epoch, events = self.resolver.login(ts, user, device, session, ref)
                attribution = Attribution(epoch, user, "named", False)
                context = self._context(page_ctx, attribution, r)
                stamp = self.timestamps(ts)
                traits = {k: v for k, t in spec.traits.items() if (v := t.value(get)) is not None}
                out.append(
                    encode(
                        identify_message(
                            self._id(r, b"identify"),
                            stamp,
                            self._user(user) or user,
                            epoch,
                            traits,
                            context,
                        )
                    )
                )
                self.stats.messages["identify"] += 1
                out.extend(self._alias(r, ev, stamp, context) for ev in events)
                result = _Identified(self.resolver.final(user, ts), epoch)
        if rule.logout is not None:
            session = self._render_id(rule.logout.session, get, "session")
            device = self._render_id(rule.logout.device, get, "device")
            if not self.resolver.logout(ts, session, device):
                self.stats.rule_skipped[(rule.name, "no_session_or_device")] += 1
        if rule.change is not None:
            old = self._render_id(rule.change[0], get, "named")
            new = self._render_id(rule.change[1], get, "named")
            if old is None or new is None:
                self.stats.rule_skipped[(rule.name, "no_user")] += 1
            else:
                stamp = self.timestamps(ts)
                attribution = Attribution(None, new, "named", False)
                context = self._context(page_ctx, attribution, r)
                for ev in self.resolver.identity_change(ts, old, new):
                    out.append(
                        encode(
                            alias_message(
                                self._id(r, b"change"),
                                stamp,
                                self._user(ev.user) or ev.user,
                                self._user(ev.previous) or ev.previous,
                                context,
                            )
                        )
                    )
                    self.stats.messages["alias"] += 1
        return result

    def _app_person(self, r: Rec, get: Callable[[str], Any]) -> _Identified | None:
        """Whose is an app `event:` with no identify of its own: the source's identify templates
        (user, else a mapped session)."""
        spec = self._first_identify.get(r.source)
        if spec is None:
            return None
        ts = r.record.ts
        user = self._render_id(spec.user, get, "named")
        if user is not None:
            return _Identified(self.resolver.final(user, ts), None)
        session = self._render_id(spec.session, get, "session")
        if session is not None:
            person = self.resolver.session_person(ts, session)
            if person is not None:
                return _Identified(person, None)
        return None

    def _render_id(self, template: Any, get: Callable[[str], Any], kind: str) -> str | None:
        if template is None:
            return None
        raw = template.render(get)
        return None if raw is None else self.normalizer.value(kind, raw)

    def _is_bot(self, rec: AccessRecord) -> bool:
        """Crawlers make no events either (the page-view filter's bot list and `skip_bots`)."""
        pv = self.pageviews
        return pv is not None and pv.is_bot(rec.user_agent)

    def _cookieless(
        self, ip: str, rec: AccessRecord, ts: float
    ) -> tuple[Attribution, list[IdentityEvent]]:
        if self.derived is None:
            return Attribution(None, None, "dropped", False), []
        derived = self.derived(self.client_ip.normalized(ip), rec.user_agent, ts)
        return Attribution(derived, None, "derived", False), []

    # -- message parts ---------------------------------------------------------------------

    def _page_context(self, r: Rec, rec: AccessRecord) -> tuple[dict[str, Any], str]:
        """The page properties and client fields of an access record, and its client address."""
        ip = self.client_ip.client(rec.ip, rec.forwarded_for)
        urls = self.urls[r.source]
        page_url = urls.page(rec.target, rec.host, None)
        # orjson encodes a fresh dict faster than any cache keyed by these strings could be hit.
        page: dict[str, str] = {"path": page_url.path, "search": page_url.search}
        if page_url.url is not None:
            page["url"] = page_url.url
        page["referrer"] = urls.referrer(rec.referrer) if rec.referrer else ""
        ctx: dict[str, Any] = {}
        ip_out = self.client_ip.for_context(ip)
        if ip_out is not None:
            ctx["ip"] = ip_out
        if rec.user_agent:
            ctx["userAgent"] = rec.user_agent
        ctx["page"] = page
        return ctx, ip

    def _context(
        self, page_ctx: dict[str, Any] | None, attribution: Attribution, r: Rec
    ) -> dict[str, Any]:
        context = dict(page_ctx) if page_ctx is not None else {}
        context["identity"] = {
            "resolution": attribution.resolution,
            "contested": attribution.contested,
        }
        context["source"] = {"name": r.source, "file": r.file.path, "offset": r.offset}
        return context

    def _track(
        self,
        r: Rec,
        rule: Rule,
        get: Callable[[str], Any],
        stamp: str,
        attribution: Attribution,
        context: dict[str, Any],
    ) -> bytes:
        assert rule.event is not None
        properties = {k: v for k, t in rule.properties.items() if (v := t.value(get)) is not None}
        self.stats.messages["track"] += 1
        return encode(
            track_message(
                self._id(r, rule.slot),
                stamp,
                self._user(attribution.user_id),
                attribution.anonymous_id,
                rule.event,
                properties,
                context,
            )
        )

    def _alias(self, r: Rec, ev: IdentityEvent, stamp: str, context: dict[str, Any]) -> bytes:
        slot = ev.slot.encode()
        if ev.ref is not None:
            # A join completed by this record: the alias takes the login record's ids.
            source, fp, offset, lhash = ev.ref
            message_id = self._prefix(source, fp)(offset, lhash.encode(), slot)
        else:
            message_id = self._id(r, slot)
        self.stats.messages["alias"] += 1
        return encode(
            alias_message(message_id, stamp, self._user(ev.user) or ev.user, ev.previous, context)
        )

    def _user(self, named: str | None) -> str | None:
        return None if named is None else self.named_out(named)

    def _prefix(self, source: str, fp: str) -> MessageIdPrefix:
        key = (source, fp)
        prefix = self._ids.get(key)
        if prefix is None:
            prefix = self._ids[key] = MessageIdPrefix(source, fp)
        return prefix

    def _id(self, r: Rec, slot: bytes) -> str:
        raw = r.raw
        lhash = line_hash(raw[:-1] if raw[-1:] == b"\r" else raw)
        return self._prefix(r.source, r.file.line_fp)(r.offset, lhash, slot)

    def _login_ref(self, r: Rec) -> LoginRef:
        raw = r.raw
        lhash = line_hash(raw[:-1] if raw[-1:] == b"\r" else raw).decode()
        return (r.source, r.file.line_fp, r.offset, lhash)

    def _flush(self, early: list[bytes]) -> None:
        self.rows.extend(early)


_NO_IDS = Intake(None, None, None)
