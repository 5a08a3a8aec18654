"""What a long-running process (`kiota api`, `kiota worker`) does once, just before it serves."""

from __future__ import annotations

import gc


def freeze_what_lives_forever() -> None:
    """Everything built so far (the modules of FastAPI, pydantic, web3 …, the app) lives as long as
    the process: moved out of the collector's sight, a full collection no longer walks it. Those
    walks were the callbacks' worst latencies (B1 p99 ~50 ms at 32 connections, ~20 ms without them).
    Garbage is collected first, so none of it is kept forever."""
    gc.collect()
    gc.freeze()
