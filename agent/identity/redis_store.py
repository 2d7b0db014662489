"""The identity graph on Redis (`identity.store: redis://…` / `rediss://…`, SPEC §5.5): one graph
for a fleet of hosts, so a login on host A names the visitor's hits on host B, and two hosts
seeing one login send one alias.

Key layout (`P` = `td:<site>:`; the `{…}` hash tag keeps one device's keys, or one named id's, in
one Redis Cluster slot):

    P d:{D}        hash  e<i> [started, contested] · b<i> [named, bound_at] · sh · r · ls
    P n:{N}        hash  f first_seen · c/ca R7 change · d:<device> for each device
    P au:{N}       set   previousIds aliased to N (for `trackd identity` and `forget`)
    P s:{S}        hash  n s u d r (the login's mapping) · ld lt (last device)
    P a:{D}~k      string  the alias claim of epoch D~k (or R7 old id): [userId, ts, host]
    P changes      hash  R7: old -> [new, ts]
    P count:{c}:K  counters per kind (approximate: keys expired by TTL stay counted)
    P forgotten    stream  erasure notices (HMAC tokens, never ids) for the other hosts

Decisions are atomic without cross-slot scripts: an alias claim is one `SET … NX GET` whose value
names the claimant (user, event time, host id) — so this host, replaying a chunk a crash rolled
back, gets its own claim again, and any other claim is a loss. Epoch creation and binding are
`HSETNX` per field (the first host to bind an epoch wins; a later writer never unbinds it),
sessions merge in a one-key Lua script (newest login wins; a logout only shortens).

Writes are write-behind: `save` (inside the chunk's SQLite transaction) appends the changes to a
journal table of the state database, and the next store call after the commit sends them — so
Redis never holds graph changes of a chunk that did not commit, and a crash or an outage loses
none (the journal is sent when Redis answers again). Reads go in one pipelined round trip per
batch. An unreachable Redis is never fatal: a circuit breaker (short socket timeouts, capped
exponential backoff with jitter) answers "unavailable" at once while it is open, the resolver
resolves from its cache and counts `degraded`, and no alias is emitted whose claim could not be
recorded.

TTLs: devices and named ids `identity.forget_after` from their last write (wall clock: a backfill
of old history is not expired on arrival), sessions twice `identity.session_ttl`; alias claims
never expire (an epoch aliased once must never be aliased to someone else), as in SQLite.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis
import structlog

from agent.identity.graph import (
    Batch,
    Changes,
    Device,
    Epoch,
    Named,
    Person,
    Session,
    StoreUnavailable,
)

log = structlog.get_logger("trackd.identity.redis")

#: How long the resolver serves a cached entry before asking Redis again.
CACHE_TTL = 2.0
#: Socket timeouts: a hit never waits long on a Redis that stopped answering.
CONNECT_TIMEOUT = 0.25
SOCKET_TIMEOUT = 1.0
_JOURNAL_PAGE = 200
_SCAN_COUNT = 1000
_STREAM_MAX = 10_000

_SESSION_SCRIPT = """
local k = KEYS[1]
local n, s, u, d, r, ld, lt, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local created = redis.call('EXISTS', k) == 0
if n ~= '' then
  local cn = redis.call('HGET', k, 'n')
  local cs = redis.call('HGET', k, 's')
  if (not cn) or tonumber(s) > tonumber(cs) then
    redis.call('HSET', k, 'n', n, 's', s, 'u', u, 'd', d, 'r', r)
  elseif tonumber(s) == tonumber(cs) then
    local cu = redis.call('HGET', k, 'u')
    if (not cu) or tonumber(u) < tonumber(cu) then redis.call('HSET', k, 'u', u) end
    if d ~= '' then redis.call('HSET', k, 'd', d) end
  end
end
if ld ~= '' then
  local clt = redis.call('HGET', k, 'lt')
  if (not clt) or tonumber(lt) >= tonumber(clt) then redis.call('HSET', k, 'ld', ld, 'lt', lt) end
end
if redis.call('EXISTS', k) == 1 then redis.call('PEXPIRE', k, ttl) end
if created then return 1 end
return 0
"""

#: One device's write: epochs and bindings are set once (HSETNX: the first host to bind an epoch
#: wins, a stale writer never unbinds it), the R4 history and last_seen are the writer's; returns
#: 1 when the device is new.
_DEVICE_SCRIPT = """
local k = KEYS[1]
local created = 0
for i = 5, #ARGV, 2 do
  local n = redis.call('HSETNX', k, ARGV[i], ARGV[i + 1])
  if n == 1 and ARGV[i] == 'e0' then created = 1 end
end
if ARGV[4] ~= '' then redis.call('HSETNX', k, 'sh', ARGV[4]) end
redis.call('HSET', k, 'r', ARGV[2], 'ls', ARGV[3])
redis.call('PEXPIRE', k, ARGV[1])
return created
"""

#: One named id's write: first_seen once, its devices added, an R7 change set; 1 when new.
_NAMED_SCRIPT = """
local k = KEYS[1]
local created = redis.call('HSETNX', k, 'f', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', k, 'c', ARGV[3], 'ca', ARGV[4]) end
for i = 5, #ARGV do redis.call('HSET', k, ARGV[i], '1') end
redis.call('PEXPIRE', k, ARGV[1])
return created
"""

_SCRIPTS = {"device": _DEVICE_SCRIPT, "named": _NAMED_SCRIPT, "session": _SESSION_SCRIPT}

_JOURNAL_DDL = (
    "CREATE TABLE IF NOT EXISTS id_redis_journal ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)"
)
#: `meta` keys: this host's claimant id, and the last erasure notice applied.
META_HOST = "redis_host_id"
META_ERASURES = "redis_erasures_seen"


def _num(raw: bytes | None) -> float | None:
    return None if raw is None else float(raw)


def _text(value: float) -> str:
    """A float as Redis stores it: `repr` round-trips exactly (Lua compares the same double)."""
    return repr(float(value))


def describe(url: str) -> str:
    """The store's URL without its password (for logs, errors and `status`)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    return f"{parts.scheme}://{host}:{port}{parts.path or '/0'}"


def connect_client(url: str) -> redis.Redis:
    """A client for `url` (no connection is made yet). A password missing from the URL is taken
    from the systemd credential `redis_password` when there is one (SPEC §4 secrets)."""
    kwargs: dict[str, Any] = {}
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and not urllib.parse.urlsplit(url).password:
        cred = os.path.join(cred_dir, "redis_password")
        if os.path.exists(cred):
            with open(cred, encoding="utf-8") as fh:
                kwargs["password"] = fh.read().strip()
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        retry_on_timeout=False,
        health_check_interval=0,
        **kwargs,
    )


class Breaker:
    """Open after a failure: calls are refused at once until a capped, jittered backoff has
    passed, then one call tries again (success closes it)."""

    __slots__ = ("_clock", "_failures", "_retry_at", "cap", "initial")

    def __init__(
        self, initial: float = 0.5, cap: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.initial = initial
        self.cap = cap
        self._clock = clock
        self._failures = 0
        self._retry_at = 0.0

    @property
    def open(self) -> bool:
        return self._failures > 0

    def allow(self) -> bool:
        return self._failures == 0 or self._clock() >= self._retry_at

    def failed(self) -> float:
        self._failures += 1
        delay = min(self.cap, self.initial * 2.0 ** min(self._failures - 1, 16))
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not crypto)
        self._retry_at = float(self._clock()) + delay
        return delay

    def ok(self) -> None:
        self._failures = 0


class RedisIdentityStore:
    """IdentityStore on Redis, used from the pipeline thread only (a sync client)."""

    cache_ttl: float | None = CACHE_TTL

    def __init__(
        self,
        client: redis.Redis,
        conn: sqlite3.Connection | None,
        *,
        site: str = "default",
        host_id: str = "host",
        forget_after: float = 400 * 86400.0,
        session_ttl: float = 86400.0,
        where: str = "redis",
    ) -> None:
        self._r = client
        self._conn = conn
        self._p = "td:" + site.replace("{", "%7B").replace("}", "%7D") + ":"
        self._host = host_id
        self._ttl_ms = max(1, int(forget_after * 1000))
        self._session_ms = max(1, int(2 * session_ttl * 1000))
        self._where = where
        self.degraded = 0
        self.breaker = Breaker()
        self._claimed: set[str] = set()
        self._counts: Counter[str] = Counter()
        self._last_counts = {"device": 0, "named": 0, "session": 0, "aliases": 0}
        self._shas: dict[str, str] = {}
        self._erasures_seen = _meta_get(conn, META_ERASURES) if conn is not None else None
        self._erasures_saved = self._erasures_seen
        #: Claims that could not be recorded (Redis unreachable): no alias was emitted.
        self.unrecorded_claims = 0
        #: The journal may hold rows not sent yet (an earlier run's, or since the last flush).
        self._journal_pending = conn is not None
        if conn is not None:
            # Not in agent/state/schema.py: only a Redis store writes it (a local table, created
            # on first use; a state without it is simply a state that never used Redis).
            conn.execute(_JOURNAL_DDL)

    # -- keys ------------------------------------------------------------------------------

    def _dkey(self, device: str) -> str:
        return f"{self._p}d:{{{device}}}"

    def _nkey(self, named: str) -> str:
        return f"{self._p}n:{{{named}}}"

    def _aukey(self, named: str) -> str:
        return f"{self._p}au:{{{named}}}"

    def _skey(self, session: str) -> str:
        return f"{self._p}s:{{{session}}}"

    def _akey(self, previous: str) -> str:
        head, sep, tail = previous.rpartition("~")
        if sep and head and tail.isdigit():
            return f"{self._p}a:{{{head}}}~{tail}"
        return f"{self._p}a:{{{previous}}}"

    def _count_key(self, kind: str) -> str:
        return f"{self._p}count:{{c}}:{kind}"

    # -- the connection --------------------------------------------------------------------

    def _call(self, what: str, fn: Any) -> Any:
        """Run `fn()` against Redis unless the breaker is open; None when it cannot be done."""
        if not self.breaker.allow():
            return None
        try:
            result = fn()
        except (redis.RedisError, OSError) as exc:
            was_open = self.breaker.open
            delay = self.breaker.failed()
            if not was_open:
                log.warning(
                    "identity_store_unreachable",
                    store=self._where,
                    during=what,
                    error=" ".join(str(exc).split())[:200],
                    retry_in_s=round(delay, 2),
                    hint="resolving from the local cache (trackd_identity_degraded_total); "
                    "graph changes wait in the state database and are sent when Redis answers",
                )
            return None
        if self.breaker.open:
            log.info("identity_store_reconnected", store=self._where, degraded=self.degraded)
        self.breaker.ok()
        return result

    def _pipe(self, build: Any) -> list[Any] | None:
        """One round trip: `build(pipe)` queues commands; their results, or None."""

        def run() -> list[Any]:
            for attempt in (0, 1):
                pipe = self._r.pipeline(transaction=False)
                build(pipe)
                try:
                    return list(pipe.execute())
                except redis.exceptions.NoScriptError:
                    # Redis restarted (scripts flushed): load it again and send the batch again
                    # (every write in it is idempotent).
                    self._shas.clear()
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        return self._call("pipeline", run)  # type: ignore[no-any-return]

    def _sha(self, name: str) -> str:
        sha = self._shas.get(name)
        if sha is None:
            sha = self._shas[name] = str(self._r.script_load(_SCRIPTS[name]))
        return sha

    # -- reads -----------------------------------------------------------------------------

    def load_batch(self, devices: list[str], named: list[str], sessions: list[str]) -> Batch | None:
        if self._journal_pending and not self._flush():
            self.degraded += len(devices) + len(named) + len(sessions)
            return None

        def build(pipe: Any) -> None:
            for d in devices:
                pipe.hgetall(self._dkey(d))
            for n in named:
                pipe.hgetall(self._nkey(n))
            for s in sessions:
                pipe.hgetall(self._skey(s))

        found = self._pipe(build)
        if found is None:
            self.degraded += len(devices) + len(named) + len(sessions)
            return None
        nd, nn = len(devices), len(named)
        return Batch(
            [_device_from(d, h) for d, h in zip(devices, found[:nd], strict=True) if h],
            [_named_from(n, h) for n, h in zip(named, found[nd : nd + nn], strict=True) if h],
            [_session_from(s, h) for s, h in zip(sessions, found[nd + nn :], strict=True) if h],
        )

    def load_devices(self, devices: list[str]) -> list[Device]:
        found = self.load_batch(devices, [], [])
        return found.devices if found is not None else []

    def load_named_many(self, named: list[str]) -> list[Named]:
        found = self.load_batch([], named, [])
        return found.named if found is not None else []

    def load_sessions(self, sessions: list[str]) -> list[Session]:
        found = self.load_batch([], [], sessions)
        return found.sessions if found is not None else []

    def load_device(self, device: str) -> Device | None:
        found = self.load_devices([device])
        return found[0] if found else None

    def load_named(self, named: str) -> Named | None:
        found = self.load_named_many([named])
        return found[0] if found else None

    def load_changes(self) -> dict[str, tuple[str, float]]:
        raw = self._call("load_changes", lambda: self._r.hgetall(self._p + "changes"))
        if not raw:
            return {}
        out: dict[str, tuple[str, float]] = {}
        for old, value in raw.items():
            new, ts = orjson.loads(value)
            out[old.decode()] = (str(new), float(ts))
        return out

    def aliases_touching(self, ids: list[str]) -> list[tuple[str, str, float]]:
        members = self._pipe(lambda pipe: [pipe.smembers(self._aukey(i)) for i in ids])
        if members is None:
            return []
        previous = sorted(set(ids) | {m.decode() for group in members for m in group})
        values = self._pipe(lambda pipe: [pipe.get(self._akey(p)) for p in previous])
        if values is None:
            return []
        wanted = set(ids)
        found = []
        for p, raw in zip(previous, values, strict=True):
            if raw is None:
                continue
            user, ts, _host = orjson.loads(raw)
            if p in wanted or user in wanted:
                found.append((p, str(user), float(ts)))
        return sorted(found, key=lambda a: a[2])

    # -- the one decision ------------------------------------------------------------------

    def claim_alias(self, previous: str, user: str, ts: float) -> bool | None:
        if previous in self._claimed:
            return False
        mine = orjson.dumps([user, ts, self._host])
        key = self._akey(previous)
        sentinel = b""

        def claim() -> bytes:
            old = self._r.set(key, mine, nx=True, get=True)
            return sentinel if old is None else bytes(old)  # type: ignore[arg-type]

        old = self._call("claim_alias", claim)
        if old is None:
            self.unrecorded_claims += 1
            self.degraded += 1
            if self.unrecorded_claims <= 10 or self.unrecorded_claims % 1000 == 0:
                log.warning(
                    "alias_not_claimed_store_down",
                    store=self._where,
                    total=self.unrecorded_claims,
                    hint="no alias is sent that the fleet could not record as sent; it is "
                    "claimed again (and sent) with the device's next hit once Redis answers",
                )
            return None
        if old is not sentinel and old != mine:
            return False  # another host (or an earlier login) sent this epoch's alias
        if old is sentinel:
            self._counts["aliases"] += 1
        self._claimed.add(previous)
        return True

    # -- writes: journal, then flush -------------------------------------------------------

    def save(self, changes: Changes) -> None:
        devices, named, sessions, aliases = changes
        if not (devices or named or sessions or aliases):
            return
        if self._conn is None:
            raise RuntimeError("a read-only RedisIdentityStore cannot save")
        body = orjson.dumps(
            {
                "d": [
                    [
                        d.device,
                        [[e.index, e.started, e.named, e.bound_at, e.contested] for e in d.epochs],
                        d.shared_since,
                        d.recent_named,
                        d.last_seen,
                    ]
                    for d in devices
                ],
                "n": [
                    [n.named, n.first_seen, n.devices, n.changed_to, n.changed_at] for n in named
                ],
                "s": [
                    [
                        s.session,
                        s.named,
                        s.since,
                        s.until,
                        s.device,
                        s.login_ref,
                        s.last_device,
                        s.last_device_ts,
                    ]
                    for s in sessions
                ],
                "a": aliases,
            }
        )
        self._conn.execute("INSERT INTO id_redis_journal (body) VALUES (?)", (body,))
        self._journal_pending = True
        for d in devices:
            d.saved_seen = d.last_seen

    def _flush(self, *, counts: bool = False) -> bool:
        """Send the committed journal to Redis (oldest first), and the counters with it (`counts`:
        also when the journal is empty); False when Redis is unreachable. Inside a transaction
        the journal may hold rows that are not committed: nothing is sent."""
        conn = self._conn
        if conn is None or conn.in_transaction:
            return self.breaker.allow()
        if not self.breaker.allow():
            return False
        while True:
            rows = conn.execute(
                "SELECT seq, body FROM id_redis_journal ORDER BY seq LIMIT ?", (_JOURNAL_PAGE,)
            ).fetchall()
            if not rows:
                self._journal_pending = False
            if not rows and not (counts and any(self._counts.values())):
                if self.breaker.open:
                    return self._call("ping", self._r.ping) is not None
                return True
            entries = [orjson.loads(body) for _seq, body in rows]
            counted = {k: n for k, n in self._counts.items() if n}
            created: list[str] = []

            def build(
                pipe: Any,
                entries: list[Any] = entries,
                created: list[str] = created,
                counted: dict[str, int] = counted,
            ) -> None:
                created.clear()
                for kind, n in counted.items():
                    pipe.incrby(self._count_key(kind), n)
                    created.append("")
                for entry in entries:
                    created.extend(self._commands(pipe, entry))

            results = self._pipe(build)
            if results is None:
                return False
            for kind, n in counted.items():
                self._counts[kind] -= n
                if not self._counts[kind]:
                    del self._counts[kind]
            for kind, result in zip(created, results, strict=True):
                if kind and result:
                    self._counts[kind] += 1
            if rows:
                conn.execute("DELETE FROM id_redis_journal WHERE seq <= ?", (rows[-1][0],))
            # Loops once more while what this page created is still to be counted (one small
            # round trip), so `status` counts what was just written.

    def _commands(self, pipe: Any, entry: dict[str, Any]) -> Iterable[str]:
        """Queue one journal entry's writes; yields, per command, the counter kind its true
        result means "created" for (or "")."""
        ttl = self._ttl_ms
        device_sha, named_sha = self._sha("device"), self._sha("named")
        for device, epochs, shared, recent, seen in entry["d"]:
            fields: list[Any] = []
            for index, started, named, bound_at, contested in epochs:
                fields += (f"e{index}", orjson.dumps([started, contested]))
                if named is not None:
                    fields += (f"b{index}", orjson.dumps([named, bound_at]))
            pipe.evalsha(device_sha, 1, self._dkey(device), ttl, orjson.dumps(recent),
                         _text(seen), "" if shared is None else _text(shared), *fields)  # fmt: skip
            yield "device"
        for named, first, devices, changed_to, changed_at in entry["n"]:
            changed = changed_to is not None and changed_at is not None
            pipe.evalsha(named_sha, 1, self._nkey(named), ttl, _text(first), changed_to or "",
                         _text(changed_at) if changed else "", *(f"d:{d}" for d in devices))  # fmt: skip
            yield "named"
            if changed:
                pipe.hset(self._p + "changes", named, orjson.dumps([changed_to, changed_at]))
                yield ""
        for session, named, since, until, dev, ref, last, last_ts in entry["s"]:
            pipe.evalsha(
                self._sha("session"),
                1,
                self._skey(session),
                named or "",
                _text(since),
                _text(until),
                dev or "",
                orjson.dumps(ref),
                last or "",
                _text(last_ts),
                self._session_ms,
            )
            yield "session"
        for previous, user, _ts in entry["a"]:
            pipe.sadd(self._aukey(user), previous)
            yield ""

    def sync(self) -> list[set[str]]:
        """Flush the journal, and fetch the erasure notices other hosts published."""
        if not self._flush(counts=True):
            return []
        conn = self._conn
        if conn is None:
            return []
        if self._erasures_seen != self._erasures_saved and not conn.in_transaction:
            _meta_put(conn, META_ERASURES, self._erasures_seen or "")
            self._erasures_saved = self._erasures_seen
        stream = self._p + "forgotten"
        if self._erasures_seen is None:
            last = self._call("erasures", lambda: self._r.xrevrange(stream, count=1))
            if last is None:
                return []
            self._erasures_seen = last[0][0].decode() if last else "0-0"
            return []
        seen = self._erasures_seen
        entries = self._call("erasures", lambda: self._r.xrange(stream, min=f"({seen}", count=100))
        if not entries:
            return []
        out: list[set[str]] = []
        for entry_id, fields in entries:
            self._erasures_seen = entry_id.decode()
            if fields.get(b"host", b"").decode() == self._host:
                continue  # this host's own erasure: applied when it was made
            out.append(set(orjson.loads(fields.get(b"t", b"[]"))))
        return out

    # -- housekeeping ----------------------------------------------------------------------

    def collect(self, newest: float, forget_after: float, session_ttl: float) -> tuple[int, int]:
        """Nothing to do: Redis expires devices and named ids `forget_after` after their last
        write, and sessions after twice `session_ttl` (TTLs set by every write)."""
        return 0, 0

    def counts(self) -> dict[str, int]:
        kinds = ("device", "named", "session", "aliases")
        found = self._call("counts", lambda: self._r.mget([self._count_key(k) for k in kinds]))
        if found is not None:
            self._last_counts = {
                k: max(0, int(v or 0)) + self._counts[k] for k, v in zip(kinds, found, strict=True)
            }
        return dict(self._last_counts)

    def forget(self, person: Person, notice: Iterable[str] = ()) -> dict[str, int]:
        """Delete the person's keys, and publish `notice` (erasure tokens) to the other hosts.
        Raises StoreUnavailable when Redis cannot be reached: an erasure is never half-done
        silently (every step is idempotent; running it again finishes it)."""
        if not self._flush():
            raise StoreUnavailable(self._where)
        named, devices = set(person.named), set(person.devices)
        sessions = self._person_sessions(named, devices)
        keys = (
            [self._dkey(d) for d in person.devices]
            + [k for n in person.named for k in (self._nkey(n), self._aukey(n))]
            + [self._skey(s) for s in sessions]
            + [self._akey(a) for a in person.aliases]
        )
        tokens = sorted(set(notice))

        def build(pipe: Any) -> None:
            for key in keys:
                pipe.delete(key)
            if person.named:
                pipe.hdel(self._p + "changes", *person.named)
            if tokens:
                pipe.xadd(
                    self._p + "forgotten",
                    {"t": orjson.dumps(tokens), "host": self._host},
                    maxlen=_STREAM_MAX,
                    approximate=True,
                )

        results = self._pipe(build)
        if results is None:
            raise StoreUnavailable(self._where)
        nd, nn, ns = len(person.devices), len(person.named), len(sessions)
        gone = [int(x) for x in results[: len(keys)]]
        removed = {
            "devices": sum(gone[:nd]),
            "named": sum(gone[nd : nd + 2 * nn : 2]),
            "sessions": sum(gone[nd + 2 * nn : nd + 2 * nn + ns]),
            "aliases": sum(gone[nd + 2 * nn + ns :]),
        }
        for kind, key in (("device", "devices"), ("named", "named"), ("session", "sessions")):
            self._counts[kind] -= removed[key]
        self._counts["aliases"] -= removed["aliases"]
        self._claimed.difference_update(person.aliases)
        return removed

    def _person_sessions(self, named: set[str], devices: set[str]) -> list[str]:
        """Sessions mapped to the person or last seen on their devices (a SCAN: erasure is rare,
        and an index per person would cost memory on every session)."""
        prefix = self._skey("")[:-2]
        found: list[str] = []
        cursor = 0
        while True:
            step = self._call(
                "scan",
                lambda c=cursor: self._r.scan(c, match=prefix + "{*", count=_SCAN_COUNT),
            )
            if step is None:
                raise StoreUnavailable(self._where)
            cursor, keys = step
            if keys:
                values = self._pipe(lambda pipe, ks=keys: [pipe.hgetall(k) for k in ks])
                if values is None:
                    raise StoreUnavailable(self._where)
                for key, h in zip(keys, values, strict=True):
                    text = key.decode()
                    sess = _session_from(text[len(prefix) + 1 : -1], h)
                    if sess.named in named or sess.device in devices or sess.last_device in devices:
                        found.append(sess.session)
            if int(cursor) == 0:
                return found

    def close(self) -> None:
        self._r.close()

    def __repr__(self) -> str:
        state = "down" if self.breaker.open else "up"
        return f"RedisIdentityStore({self._where}, {state}, degraded={self.degraded})"


def _device_from(device: str, h: dict[bytes, bytes]) -> Device:
    epochs: dict[int, Epoch] = {}
    bindings: dict[int, tuple[str, float]] = {}
    for field, value in h.items():
        tag, rest = field[:1], field[1:]
        if not rest.isdigit():
            continue
        if tag == b"e":
            started, contested = orjson.loads(value)
            epochs[int(rest)] = Epoch(int(rest), float(started), contested=bool(contested))
        elif tag == b"b":
            named, bound_at = orjson.loads(value)
            bindings[int(rest)] = (str(named), float(bound_at))
    if 0 not in epochs:
        epochs[0] = Epoch(0, min((e.started for e in epochs.values()), default=0.0))
    for index, (named, bound_at) in bindings.items():
        if index in epochs:
            epochs[index].named, epochs[index].bound_at = named, bound_at
    recent_raw = h.get(b"r")
    recent = [(float(t), str(n)) for t, n in orjson.loads(recent_raw)] if recent_raw else []
    seen = _num(h.get(b"ls")) or 0.0
    ordered = sorted(epochs.values(), key=lambda e: (e.started, e.index))
    return Device(device, ordered, _num(h.get(b"sh")), recent, seen, seen)


def _named_from(named: str, h: dict[bytes, bytes]) -> Named:
    devices = sorted(f[2:].decode() for f in h if f.startswith(b"d:"))
    changed = h.get(b"c")
    return Named(
        named,
        _num(h.get(b"f")) or 0.0,
        devices,
        changed.decode() if changed is not None else None,
        _num(h.get(b"ca")),
    )


def _session_from(session: str, h: dict[bytes, bytes]) -> Session:
    ref_raw = h.get(b"r")
    ref = orjson.loads(ref_raw) if ref_raw else None
    named = h.get(b"n")
    dev = h.get(b"d")
    last = h.get(b"ld")
    return Session(
        session,
        named.decode() if named else None,
        _num(h.get(b"s")) or 0.0,
        _num(h.get(b"u")) or 0.0,
        dev.decode() if dev else None,
        (str(ref[0]), str(ref[1]), int(ref[2]), str(ref[3])) if ref else None,
        last.decode() if last else None,
        _num(h.get(b"lt")) or 0.0,
    )


def _meta_get(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return str(row[0]) if row is not None and row[0] else None


def _meta_put(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
