"""The visitor's address: X-Forwarded-For through trusted proxies, and its forms (SPEC §1.3, §8)."""

from __future__ import annotations

import ipaddress
import re

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_MAX = 20_000


class ClientIp:
    """Resolve the client address and derive its normalised (/64) and truncated forms, cached."""

    __slots__ = ("_mode", "_norm_cache", "_trunc_cache", "_trusted", "_trusted_cache")

    def __init__(self, trusted_proxies: tuple[IPNetwork, ...] = (), privacy_ip: str = "truncate"):
        self._trusted = trusted_proxies
        self._mode = privacy_ip
        self._trusted_cache: dict[str, bool] = {}
        self._norm_cache: dict[str, str] = {}
        self._trunc_cache: dict[str, str | None] = {}

    @property
    def mode(self) -> str:
        """`privacy.ip`: full, truncate or drop."""
        return self._mode

    @property
    def has_trusted(self) -> bool:
        """Whether trusted proxies are configured (X-Forwarded-For is walked through them)."""
        return bool(self._trusted)

    def client(self, remote_addr: str, forwarded_for: str) -> str:
        """The client address: the rightmost X-Forwarded-For entry not inside a trusted proxy."""
        if not self._trusted or not forwarded_for or not self._is_trusted(remote_addr):
            return remote_addr
        for entry in reversed(forwarded_for.split(",")):
            addr = entry.strip()
            if addr and not self._is_trusted(addr):
                return addr
        return remote_addr

    def _is_trusted(self, addr: str) -> bool:
        hit = self._trusted_cache.get(addr)
        if hit is None:
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                hit = False
            else:
                hit = any(ip in net for net in self._trusted)
            if len(self._trusted_cache) >= _CACHE_MAX:
                self._trusted_cache.clear()
            self._trusted_cache[addr] = hit
        return hit

    def normalized(self, addr: str) -> str:
        """IPv4 as is; IPv6 as its /64 prefix (the `ip_norm` of derived ids)."""
        if ":" not in addr:
            return addr
        hit = self._norm_cache.get(addr)
        if hit is None:
            try:
                net = ipaddress.IPv6Network((addr, 64), strict=False)
            except ValueError:
                hit = addr
            else:
                hit = f"{net.network_address}/64"
            if len(self._norm_cache) >= _CACHE_MAX:
                self._norm_cache.clear()
            self._norm_cache[addr] = hit
        return hit

    def for_context(self, addr: str) -> str | None:
        """`context.ip` per `privacy.ip`: full, truncate (IPv4 /24, IPv6 /48) or drop (None)."""
        if self._mode == "full":
            return addr or None
        if self._mode == "drop" or not addr:
            return None
        try:
            return self._trunc_cache[addr]
        except KeyError:
            pass
        hit = _ipv4_slash24(addr)
        if hit is None:
            hit = self._slow_truncate(addr)
        if len(self._trunc_cache) >= _CACHE_MAX:
            self._trunc_cache.clear()
        self._trunc_cache[addr] = hit
        return hit

    @staticmethod
    def _slow_truncate(addr: str) -> str | None:
        hit: str | None
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            hit = None  # not an address: never echo an unknown string as one
        else:
            prefix = 24 if ip.version == 4 else 48
            hit = str(ipaddress.ip_network((addr, prefix), strict=False).network_address)
        return hit

    def __repr__(self) -> str:
        return f"ClientIp(trusted={len(self._trusted)}, privacy_ip={self._mode!r})"


#: A plain dotted-quad IPv4 address: four decimal octets 0-255, ASCII digits, no leading zeros
#: (what `ipaddress` accepts).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}").fullmatch


def _ipv4_slash24(addr: str) -> str | None:
    """`203.0.113.7` -> `203.0.113.0` without ipaddress; None if not plain IPv4 (`ipaddress`
    decides those). Only ASCII digits count: `str.isdigit` also takes `²` and Arabic-Indic digits."""
    if _IPV4(addr) is None:
        return None
    return addr[: addr.rindex(".")] + ".0"
