"""Derived anonymous ids for hits without usable cookies (SPEC §1.3), and the site secret.

derived = "anon-" + base32_lower(HMAC_SHA256(secret, "v1\\n" + site + "\\n" + ip_norm + "\\n"
                                             + user_agent + "\\n" + utc_day))[:26]
"""

from __future__ import annotations

import hmac
import os
import secrets
import time

from agent.errors import StartupError

#: Entries kept per UTC day (a day's distinct cookieless ip + agent pairs); past it, that day's
#: cache starts over. Days before the newest two are dropped as a new day begins.
_CACHE_MAX = 200_000


def load_or_create_secret(path: str) -> bytes:
    """Read the secret file; create it (0600, 32 random bytes as hex) when missing."""
    try:
        with open(path, "rb") as fh:
            data = fh.read().strip()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        data = secrets.token_hex(32).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_secret(path)  # another process created it first
        except OSError as exc:
            raise StartupError(f"cannot create identity secret {path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        return data
    except OSError as exc:
        raise StartupError(f"cannot read identity secret {path}: {exc.strerror}") from None
    if not data:
        raise StartupError(
            f"identity secret {path} is empty (delete it to have trackd create one, or copy the "
            "secret file of the other hosts of this site)"
        )
    return data


#: Lower-case base32 (RFC 4648) of every 10-bit value: two characters each.
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]


def base32_head(digest: bytes) -> str:
    """The first 26 characters of `digest`'s lower-case base32: its first 130 bits, ten at a
    time (what `base64.b32encode(digest).lower()[:26]` gives, at less than half the cost)."""
    n = int.from_bytes(digest[:17], "big") >> 6
    t = _B32_PAIRS
    return "".join(
        (
            t[n >> 120],
            t[n >> 110 & 1023],
            t[n >> 100 & 1023],
            t[n >> 90 & 1023],
            t[n >> 80 & 1023],
            t[n >> 70 & 1023],
            t[n >> 60 & 1023],
            t[n >> 50 & 1023],
            t[n >> 40 & 1023],
            t[n >> 30 & 1023],
            t[n >> 20 & 1023],
            t[n >> 10 & 1023],
            t[n & 1023],
        )
    )


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


class DerivedIds:
    """`derived(ip_norm, user_agent, ts)` -> `anon-…`, cached per (ip, agent, day)."""

    __slots__ = ("_by_day", "_days", "_key", "_site", "minted")

    def __init__(self, secret: bytes, site: str) -> None:
        self._key = secret
        self._site = site
        #: Per day number: (ip, agent) -> derived id.
        self._by_day: dict[int, dict[tuple[str, str], str]] = {}
        self._days: dict[int, str] = {}
        #: Derived ids computed (distinct visitor-days, unless a day's cache overflowed).
        self.minted = 0

    def __call__(self, ip_norm: str, user_agent: str, ts: float) -> str:
        day_no = int(ts // 86400)
        cache = self._by_day.get(day_no)
        if cache is None:
            cache = self._new_day(day_no)
        key = (ip_norm, user_agent)
        hit = cache.get(key)
        if hit is not None:
            return hit
        day = self._days[day_no]
        msg = f"v1\n{self._site}\n{ip_norm}\n{user_agent}\n{day}".encode("utf-8", "surrogateescape")
        hit = "anon-" + base32_head(hmac.digest(self._key, msg, "sha256"))
        self.minted += 1
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = hit
        return hit

    @property
    def days_cached(self) -> int:
        return len(self._by_day)

    def _new_day(self, day_no: int) -> dict[tuple[str, str], str]:
        """A day seen for the first time: its cache, after dropping days older than the two
        newest (hits arrive in event-time order, give or take late ones)."""
        newest = max(self._by_day, default=day_no)
        for old in [d for d in self._by_day if d < max(newest, day_no) - 1]:
            del self._by_day[old]
            self._days.pop(old, None)
        self._days[day_no] = utc_day(day_no * 86400.0)
        cache: dict[tuple[str, str], str] = {}
        self._by_day[day_no] = cache
        return cache

    def __repr__(self) -> str:
        return f"DerivedIds(site={self._site!r})"
