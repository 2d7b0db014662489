"""The stateful half of turning records into messages: identity resolution and assembly.

Records arrive `Prepared` (see `prepare.py`: identifiers, rule decisions, rendered templates,
page properties, ids are already worked out) and in event-time order. `emit` applies the R6 time
check, the logins, logouts and identity changes of matched rules, resolves the hit (SPEC §1.2)
and assembles its messages in the order of SPEC §3.3: `identify`, `alias`, `track`, `page`.
Nothing here reads the wall clock into a message, so the same input gives the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import orjson

from agent.config import Config
from agent.events.messages import (
    NamedOut,
    alias_fields,
    context_bytes,
    identify_fields,
    message_bytes,
    page_fields,
    source_head,
    track_fields,
)
from agent.events.rules import Rule
from agent.identity.resolver import Attribution, IdentityEvent, Resolver
from agent.pipeline.prepare import Prepared, Preparer, RuleHit
from agent.pipeline.stats import PipelineStats
from agent.records import Chunk

#: SPEC §1.2 R6: events more than an hour past the newest one already read (and the clock).
FUTURE_SLACK = 3600.0
#: A page message without rules: messageId, timestamp, the ids, properties, then `context`
#: (head, page, resolution, contested, source head, offset), as `message_bytes` joins them.
_PAGE = (
    b'{"type":"page","messageId":%b,"timestamp":%b%b,"properties":%b,"context":{%b"page":%b,'
    b'"identity":{"resolution":%b,"contested":%b},%b%d}}}'
)
_TRUE_FALSE = (b"false", b"true")
_dumps = orjson.dumps


class _Identified(NamedTuple):
    """An identify rule's outcome on one record: the person and the epoch it binds."""

    user: str
    epoch: str | None


class Emitter:
    """Resolves prepared records and appends their encoded messages to the current chunk."""

    def __init__(
        self,
        config: Config,
        preparer: Preparer,
        resolver: Resolver,
        secret: bytes,
        stats: PipelineStats,
        watermarks: dict[str, float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self.stats = stats
        self.preparer = preparer
        self.rules: dict[str, list[Rule]] = preparer.rules
        self.resolver = resolver
        self.named_out = NamedOut(secret if config.privacy.hash_named == "sha256" else None)
        #: The chunk being filled: messages, and the watermarks it moved.
        self.chunk = Chunk()
        #: R6: the newest event time read per source (the state's, then moved by `in_time`).
        self.watermarks = watermarks
        #: (source, file) -> the encoded head of `context.source` (`source_head`).
        self._sources: dict[tuple[str, str], bytes] = {}
        #: The last timestamp's text and its encoding (consecutive hits mostly share a second);
        #: each resolution's encoding.
        self._stamp = ""
        self._stamp_bytes = b'""'
        self._resolutions: dict[str, bytes] = {}

    # -- the R6 time check -----------------------------------------------------------------

    def in_time(self, source: str, ts: float) -> bool:
        """R6: drop (and count) events over an hour past both the newest event already read from
        their source and the clock.

        Read literally, "an hour past the newest event" alone would drop every event after any
        hour-long lull in traffic, for good (the newest event could then never advance). The
        clock bounds it: a garbage year, or a host whose clock runs ahead, is still caught,
        while lulls and backfills of old logs are not. Only the decision to drop uses the clock;
        no clock value ever enters a message. (Events before 2009 are dropped when prepared.)
        """
        wm = self.watermarks.get(source)
        if wm is None or ts > wm:
            if ts > FUTURE_SLACK + max(wm if wm is not None else 0.0, self._clock()):
                self.stats.skipped[(source, "future")] += 1
                return False
            self.watermarks[source] = ts
            self.chunk.watermarks[source] = ts
        return True

    # -- emitting --------------------------------------------------------------------------

    def emit(self, p: Prepared) -> None:
        """Resolve one prepared record and append its messages."""
        if not self.in_time(p.source, p.ts):
            return
        if p.is_app:
            self._app(p)
        else:
            self._access(p)

    def _access(self, p: Prepared) -> None:
        if p.rules:
            self._access_rules(p)
            return
        # The hot path: a hit no rule matched, most often a page view of a known visitor.
        attribution, events = self._resolve(p)
        if attribution.resolution == "dropped":
            self.stats.dropped["cookieless"] += 1
        elif events:
            self._assemble(p, attribution, events, [])
        elif p.is_page:
            self.chunk.messages.append(self._page(p, attribution))

    def _access_rules(self, p: Prepared) -> None:
        early: list[bytes] = []  # identify + alias messages of this record's rules
        for hit in p.rules:
            self._identity_rules(p, hit, early, default_device=p.device)
        attribution, events = self._resolve(p)
        if attribution.resolution == "dropped":
            self.stats.dropped["cookieless"] += 1
            self.chunk.messages.extend(early)
            return
        self._assemble(p, attribution, events, early)

    def _resolve(self, p: Prepared) -> tuple[Attribution, list[IdentityEvent]]:
        """Who an access hit belongs to (SPEC §1.2), its derived id without cookies."""
        device, named, session = p.device, p.named, p.session
        if device is None and named is None and session is None:
            return self._cookieless(p)
        attribution, events = self.resolver.hit(p.ts, device, named, session)
        if attribution.resolution == "none":
            return self._cookieless(p)
        return attribution, events

    def _assemble(
        self, p: Prepared, attribution: Attribution, events: list[IdentityEvent], early: list[bytes]
    ) -> None:
        """The messages of a resolved access hit, after `early` (its rules' identify and alias
        messages): its aliases, tracks, then its page (SPEC §3.3)."""
        if not p.is_page and not p.rules and not events:
            return  # a login by cookie or a session sighting: state only
        context = self._context(attribution, p)
        if events:
            early.extend(self._alias(p, ev, context) for ev in events)
        rows = self.chunk.messages
        if early:
            rows.extend(early)
        page_name = None
        rules = self.rules[p.source] if p.rules else ()
        for hit in p.rules:
            if page_name is None and hit.page_name is not None:
                page_name = hit.page_name
            event = rules[hit.rule].event
            if event is not None:
                rows.append(self._track(p, hit, event, attribution, context))
        if p.is_page:
            self.stats.resolutions[attribution.resolution] += 1
            assert p.page_id is not None and p.page is not None
            user_id = attribution.user_id
            rows.append(
                message_bytes(
                    "page",
                    p.page_id,
                    p.stamp,
                    None if user_id is None else self.named_out(user_id),
                    attribution.anonymous_id,
                    page_fields(page_name, p.page),
                    context,
                )
            )
            self.stats.messages["page"] += 1

    def _page(self, p: Prepared, attribution: Attribution) -> bytes:
        """A page message without rules in one format: what `message_bytes("page", …,
        page_fields(None, page), _context(…))` gives, byte for byte."""
        assert p.page_id is not None and p.page is not None
        anonymous_id, user_id, resolution, contested = attribution
        self.stats.resolutions[resolution] += 1
        self.stats.messages["page"] += 1
        if user_id is None:
            ids = b"" if anonymous_id is None else b',"anonymousId":' + _dumps(anonymous_id)
        else:
            ids = b',"userId":' + _dumps(self.named_out(user_id))
            if anonymous_id is not None:
                ids += b',"anonymousId":' + _dumps(anonymous_id)
        stamp = p.stamp
        if stamp != self._stamp:
            self._stamp = stamp
            self._stamp_bytes = _dumps(stamp)
        res = self._resolutions.get(resolution)
        if res is None:
            res = self._resolutions[resolution] = _dumps(resolution)
        page = p.page
        return _PAGE % (
            _dumps(p.page_id),
            self._stamp_bytes,
            ids,
            page,
            p.ctx,
            page,
            res,
            _TRUE_FALSE[contested],
            self._source_head(p),
            p.offset,
        )

    def _app(self, p: Prepared) -> None:
        early: list[bytes] = []
        identified: _Identified | None = None
        for hit in p.rules:
            found = self._identity_rules(p, hit, early, default_device=None)
            identified = identified or found
        self.chunk.messages.extend(early)
        rules = self.rules[p.source]
        for hit in p.rules:
            event = rules[hit.rule].event
            if event is None:
                continue
            person = identified or self._app_person(p, hit)
            if person is None:
                self.stats.rule_skipped[(rules[hit.rule].name, "no_user")] += 1
                continue
            attribution = Attribution(person.epoch, person.user, "named", False)
            context = self._context(attribution, p)
            self.chunk.messages.append(self._track(p, hit, event, attribution, context))

    def _identity_rules(
        self,
        p: Prepared,
        hit: RuleHit,
        out: list[bytes],
        *,
        default_device: str | None,
    ) -> _Identified | None:
        """identify (R2), logout (R3) and identity_change (R7) of one matched rule."""
        ts = p.ts
        rule = self.rules[p.source][hit.rule]
        result: _Identified | None = None
        if hit.user_state in ("no_user", "junk_user"):
            self.stats.rule_skipped[(rule.name, hit.user_state)] += 1
        elif hit.user_state == "ok" and hit.user is not None:
            user = hit.user
            ref = (p.source, p.fp, p.offset, p.lhash.decode())
            epoch, events = self.resolver.login(
                ts, user, hit.device or default_device, hit.session, ref
            )
            context = self._context(Attribution(epoch, user, "named", False), p)
            out.append(
                message_bytes(
                    "identify",
                    self._id(p, b"identify"),
                    p.stamp,
                    self._user(user) or user,
                    epoch,
                    identify_fields(hit.traits or {}),
                    context,
                )
            )
            self.stats.messages["identify"] += 1
            out.extend(self._alias(p, ev, context) for ev in events)
            result = _Identified(self.resolver.final(user, ts), epoch)
        if hit.logout is not None:
            session, device = hit.logout
            if not self.resolver.logout(ts, session, device):
                self.stats.rule_skipped[(rule.name, "no_session_or_device")] += 1
        if hit.change is not None:
            old, new = hit.change
            if old is None or new is None:
                self.stats.rule_skipped[(rule.name, "no_user")] += 1
            else:
                context = self._context(Attribution(None, new, "named", False), p)
                for ev in self.resolver.identity_change(ts, old, new):
                    out.append(
                        message_bytes(
                            "alias",
                            self._id(p, b"change"),
                            p.stamp,
                            self._user(ev.user) or ev.user,
                            None,
                            alias_fields(self._user(ev.previous) or ev.previous),
                            context,
                        )
                    )
                    self.stats.messages["alias"] += 1
        return result

    def _app_person(self, p: Prepared, hit: RuleHit) -> _Identified | None:
        """Whose is an app `event:` with no identify of its own: the person the source's identify
        templates name (prepared into the hit), else the person its session maps to."""
        if hit.user is not None:
            return _Identified(self.resolver.final(hit.user, p.ts), None)
        if hit.session is not None:
            person = self.resolver.session_person(p.ts, hit.session)
            if person is not None:
                return _Identified(person, None)
        return None

    def _cookieless(self, p: Prepared) -> tuple[Attribution, list[IdentityEvent]]:
        if p.derived is None:
            return Attribution(None, None, "dropped", False), []
        return Attribution(p.derived, None, "derived", False), []

    # -- message parts ---------------------------------------------------------------------

    def _context(self, attribution: Attribution, p: Prepared) -> bytes:
        """`context` encoded: the record's prepared head (ip, userAgent) and page, then
        identity and source (SPEC §3.1)."""
        return context_bytes(
            p.ctx,
            p.page,
            attribution.resolution,
            attribution.contested,
            self._source_head(p),
            p.offset,
        )

    def _source_head(self, p: Prepared) -> bytes:
        key = (p.source, p.path)
        head = self._sources.get(key)
        if head is None:
            head = self._sources[key] = source_head(p.source, p.path)
        return head

    def _track(
        self, p: Prepared, hit: RuleHit, event: str, attribution: Attribution, ctx: bytes
    ) -> bytes:
        self.stats.messages["track"] += 1
        return message_bytes(
            "track",
            self._id(p, self.rules[p.source][hit.rule].slot),
            p.stamp,
            self._user(attribution.user_id),
            attribution.anonymous_id,
            track_fields(event, hit.properties or {}),
            ctx,
        )

    def _alias(self, p: Prepared, ev: IdentityEvent, context: bytes) -> bytes:
        slot = ev.slot.encode()
        if ev.ref is not None:
            # A join completed by this record: the alias takes the login record's ids.
            source, fp, offset, lhash = ev.ref
            message_id = self.preparer.id_prefix(source, fp)(offset, lhash.encode(), slot)
        else:
            message_id = self._id(p, slot)
        self.stats.messages["alias"] += 1
        user = self._user(ev.user) or ev.user
        return message_bytes(
            "alias", message_id, p.stamp, user, None, alias_fields(ev.previous), context
        )

    def _user(self, named: str | None) -> str | None:
        return None if named is None else self.named_out(named)

    def _id(self, p: Prepared, slot: bytes) -> str:
        return self.preparer.id_prefix(p.source, p.fp)(p.offset, p.lhash, slot)
