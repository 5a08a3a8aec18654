"""Processes: what a long-running one (`kiota api`, `kiota worker`) does once just before it serves,
and how a parent stops a child it started."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys

DEFAULT_RECURSION_LIMIT = 1000


def restore_recursion_limit() -> None:
    """web3 imports py_ecc, which raises the recursion limit to 100000 at import; with it a deeply nested
    JSON body or answer overflows the C stack (the process dies of SIGSEGV) instead of raising
    RecursionError. A process that imported it (the worker; the API, through the services of `kiota/ops.py`)
    puts it back before it serves."""
    sys.setrecursionlimit(DEFAULT_RECURSION_LIMIT)


def freeze_what_lives_forever() -> None:
    """Everything built so far (the modules of FastAPI, pydantic, web3 …, the app) lives as long as
    the process: moved out of the collector's sight, a full collection no longer walks it. Those
    walks were the callbacks' worst latencies (B1 p99 ~50 ms at 32 connections, ~20 ms without them).
    Garbage is collected first, so none of it is kept forever."""
    gc.collect()
    gc.freeze()


async def stop(process: asyncio.subprocess.Process, grace: float) -> None:
    """Stop a child: SIGTERM lets it shut down cleanly (a worker finishes its jobs); SIGKILL only if it
    is still running after `grace` seconds. Returns once it has exited."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
