"""The client address's forms (SPEC §1.3, §8): `context.ip` truncation and X-Forwarded-For."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.identity.clientip import ClientIp


def truncated(addr: str) -> str | None:
    """SPEC §8 `privacy.ip: truncate` written out with `ipaddress` alone: IPv4 /24, IPv6 /48,
    None for anything that is not an address."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network((addr, prefix), strict=False).network_address)


octets = st.one_of(
    st.integers(min_value=0, max_value=300).map(str),
    st.sampled_from(["00", "01", "007", "²", "١", "٣", " 1", "1 ", "", "+1", "-1", "0x1"]),
)
dotted = st.lists(octets, min_size=3, max_size=5).map(".".join)


@settings(max_examples=1500, deadline=None)
@given(addr=st.one_of(dotted, st.ip_addresses().map(str), st.text(max_size=20)))
def test_truncate_matches_ipaddress_on_any_text(addr: str) -> None:
    """The fast dotted-quad path gives what `ipaddress` gives, and never raises: a Unicode digit
    (`²` made `int()` raise, an Arabic-Indic one was taken for its value), a leading zero or an
    octet over 255 is not an address."""
    assert ClientIp().for_context(addr) == truncated(addr)


def test_a_forwarded_for_entry_that_is_not_an_address_is_not_echoed() -> None:
    """Through a trusted proxy, an X-Forwarded-For entry with a superscript digit is the client,
    and `context.ip` leaves it out instead of failing the hit."""
    ips = ClientIp((ipaddress.ip_network("10.0.0.0/8"),))
    client = ips.client("10.1.2.3", "198.51.100.²")
    assert client == "198.51.100.²"
    assert ips.for_context(client) is None


def test_modes_full_and_drop() -> None:
    """`privacy.ip: full` echoes the address, `drop` never does."""
    assert ClientIp(privacy_ip="full").for_context("203.0.113.7") == "203.0.113.7"
    assert ClientIp(privacy_ip="drop").for_context("203.0.113.7") is None
    assert ClientIp().for_context("203.0.113.7") == "203.0.113.0"
