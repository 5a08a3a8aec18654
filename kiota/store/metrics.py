"""What the operators' metrics report, read from PostgreSQL in one round trip, so every process reports the
same truth."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiota.db import Executor
from kiota.sql import load_queries


@dataclass(frozen=True, slots=True)
class Snapshot:
    deposits: dict[str, int]  # by status; a status no deposit has is absent
    jobs: dict[str, int]  # the PostgreSQL job history, by status; likewise
    open_reviews: int
    kill_switch: bool
    lane_paused: bool  # any lane: all of them, or one treasury's
    payouts_cancelling: int
    live_workers: int
    next_block: int | None  # the ingester's next block to scan; None before its first round
    # by treasury address: paused (treasuries never paused are absent)
    treasury_lanes: dict[str, bool] = field(default_factory=dict)
    payouts_too_large: int = 0  # deposits blocked as larger than every running treasury's free USDC


async def snapshot(conn: Executor, chain_id: int) -> Snapshot:
    row = await conn.fetchrow(load_queries().metrics_snapshot, chain_id)
    assert row is not None  # a SELECT of values always returns its one row
    return Snapshot(
        deposits=row["deposits"],
        jobs=row["jobs"],
        open_reviews=row["open_reviews"],
        kill_switch=row["kill_switch"],
        lane_paused=row["lane_paused"],
        treasury_lanes=row["treasury_lanes"],
        payouts_cancelling=row["payouts_cancelling"],
        payouts_too_large=row["payouts_too_large"],
        live_workers=row["live_workers"],
        next_block=row["next_block"],
    )
