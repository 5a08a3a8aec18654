"""Answers sent from plain ASGI middleware (before routing): the body cap's 413 and the limits' 429."""

from __future__ import annotations

import json

from starlette.types import Send


async def send_json(send: Send, status: int, content: object, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A complete JSON answer: status, content type and length, any extra headers, then the body."""
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
