"""Serving an ASGI app on the current event loop, for the dev tools and tests (simulator, RPC proxy, API).

`serve_in_background` runs uvicorn as a task of the caller's loop and yields the bound base URL; signals
and logging stay with the host process, which may run several such servers at once (`kiota dev`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Generator

import uvicorn
from fastapi import FastAPI

__all__ = ["serve_in_background"]


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its host process (`kiota dev` runs several servers)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def _serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits the process when it cannot bind; we only fail the task
        raise RuntimeError(f"uvicorn could not start on {server.config.host}:{server.config.port}") from exc


@contextlib.asynccontextmanager
async def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on this event loop; yields its base URL (port 0: a free port).

    Logging is left to the host process (`log_config=None`, no level set): uvicorn's defaults would
    reconfigure the process-wide "uvicorn.*" loggers that `kiota api` shares.
    """
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, ws="none", lifespan="on")
    server = _EmbeddedServer(config)
    task = asyncio.create_task(_serve(server), name=f"uvicorn {host}:{port}")
    try:
        while not server.started:
            if task.done():
                task.result()  # raises the start-up failure
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        bound_port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        await asyncio.wait([task])  # never raises: a start-up failure has already been raised above
    task.result()  # reached on a clean exit only: surfaces a server that crashed while serving
