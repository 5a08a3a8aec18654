"""The client's address behind trusted proxies, and the callback allowlist: by table."""

from __future__ import annotations

import pytest

from kiota.netaddr import Network, allowed, client_address, parse_networks

RENDER = parse_networks("10.0.0.0/8")


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "trusted", "expected"),
    [
        ("196.201.214.200", None, [], "196.201.214.200"),
        ("196.201.214.200", "1.2.3.4", [], "196.201.214.200"),  # no trusted proxy: the header is not believed
        ("10.1.2.3", "196.201.214.200", RENDER, "196.201.214.200"),
        ("10.1.2.3", "6.6.6.6, 196.201.214.200, 10.9.9.9", RENDER, "196.201.214.200"),  # right to left past ours
        ("10.1.2.3", "10.5.5.5, 10.9.9.9", RENDER, "10.5.5.5"),  # only our hops: the leftmost
        ("196.201.214.200", "1.2.3.4", RENDER, "196.201.214.200"),  # the peer is no proxy of ours
        ("10.1.2.3", None, RENDER, "10.1.2.3"),
        (None, "1.2.3.4", RENDER, None),
        ("not-an-ip", "1.2.3.4", RENDER, "not-an-ip"),
    ],
)
def test_client_address(
    peer: str | None, forwarded_for: str | None, trusted: list[Network], expected: str | None
) -> None:
    assert client_address(peer, forwarded_for, trusted) == expected


@pytest.mark.parametrize(
    ("address", "allowlist", "expected"),
    [
        ("196.201.214.200", "", True),  # an empty list allows all: the token is the control
        (None, "", True),
        ("196.201.214.200", "196.201.214.0/24", True),
        ("196.201.215.1", "196.201.214.0/24", False),
        (None, "196.201.214.0/24", False),
        ("garbage", "196.201.214.0/24", False),
        ("2001:db8::1", "196.201.214.0/24, 2001:db8::/32", True),
    ],
)
def test_allowed(address: str | None, allowlist: str, expected: bool) -> None:
    assert allowed(address, parse_networks(allowlist)) == expected
