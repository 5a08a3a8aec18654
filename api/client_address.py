"""The client's address at the HTTP edge, as our trusted proxies report it (the webhook's allowlist and
the per-address limit read it the same way)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Scope

from kiota.netaddr import Network, client_address


def forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Every X-Forwarded-For line, in order, as one list: a proxy may add its hop as a line of its own,
    and reading only the first (or the last) line would believe a hop the client wrote."""
    lines = [value.decode("latin-1") for name, value in headers if name.lower() == b"x-forwarded-for"]
    return ", ".join(lines) if lines else None


def scope_client_address(scope: Scope, trusted_proxies: list[Network]) -> str | None:
    """The client's address as our trusted proxies report it (X-Forwarded-For is not even read without any)."""
    client = scope.get("client")
    forwarded = forwarded_for(scope.get("headers", [])) if trusted_proxies else None
    return client_address(client[0] if client else None, forwarded, trusted_proxies)
