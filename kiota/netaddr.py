"""The client's address behind proxies, and allowlists of CIDRs (pure)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> list[Network]:
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


def _within(address: str, networks: Sequence[Network]) -> bool:
    if not networks:  # nothing to be within (and no address to parse on every request)
        return False
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[Network]) -> str | None:
    """The first address, from the right, that is not one of our trusted proxies.

    X-Forwarded-For is believed only when the peer itself is a trusted proxy; each
    trusted hop may have appended the address it saw, so walk back from the right.
    A client can write anything at the left of the header, so the left is never read
    past the first untrusted hop.
    """
    if peer is None or not _within(peer, trusted_proxies) or not forwarded_for:
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _within(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


def allowed(address: str | None, allowlist: Sequence[Network]) -> bool:
    """An empty allowlist allows everyone (the token is the control; the list is defence in depth)."""
    return not allowlist or (address is not None and _within(address, allowlist))


class FirstSeen:
    """Says True the first time it sees a key, for a log line once per address. It remembers at most
    `limit` keys, so a caller spraying addresses cannot grow it without end."""

    def __init__(self, limit: int = 4096) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def first(self, key: str) -> bool:
        if key in self._seen or len(self._seen) >= self._limit:
            return False
        self._seen.add(key)
        return True
