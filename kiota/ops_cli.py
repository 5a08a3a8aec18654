"""`kiota ops …`: the operator's commands, printing plain text."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Sequence

from arq.connections import ArqRedis

from kiota import ops, queues
from kiota.db import Pool, create_pool
from kiota.errors import InvalidInput
from kiota.money import format_usdc, parse_usdc
from kiota.queue import create_queue


def _print_rows(rows: Sequence[object], columns: list[str]) -> None:
    """`name=value` for each named field that has a value, a line per row (money as whole units: the records
    hold integers)."""
    if not rows:
        print("(none)")
        return
    for row in rows:
        values = [(name, getattr(row, name)) for name in columns]
        print("  ".join(f"{name}={value}" for name, value in values if value is not None))


def _deposit_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidInput(f"not a deposit id: {text}") from None


def _print_queues(stats: queues.Stats) -> None:
    for name, counts in stats.queues.items():
        print(f"{name}  " + "  ".join(f"{word}={value}" for word, value in counts.items()))
    for worker in stats.workers:
        print(f"worker {worker.worker_id}  queues={','.join(worker.queues)}  seen_at={worker.seen_at.isoformat()}")
    if not stats.workers:
        print("no live worker")


async def run_ops(args: argparse.Namespace, database_url: str, redis_url: str) -> int:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    queue = create_queue(redis_url)
    try:
        return await _dispatch(args, pool, queue)
    finally:
        await queue.aclose(close_connection_pool=True)
        await pool.close()


async def _dispatch(args: argparse.Namespace, pool: Pool, queue: ArqRedis) -> int:
    if args.action == "stuck":
        rows = await ops.stuck_deposits(pool, args.older_than)
        _print_rows(
            rows,
            [
                "id",
                "status",
                "amount_kes",
                "mpesa_receipt",
                "review_reason",
                "confirmed_by",
                "confirm_answer",
                "job_status",
                "failures",
                "last_error",
                "blocked_reason",
                "updated_at",
            ],
        )
    elif args.action == "review":
        _print_rows(
            await ops.open_reviews(pool),
            [
                "id",
                "kind",
                "deposit_id",
                "callback_id",
                "chain_transfer_id",
                "amount_kes",
                "amount_usdc_micro",
                "reason",
                "created_at",
            ],
        )
    elif args.action == "retry":
        result = await ops.retry_deposit(pool, queue, _deposit_id(args.deposit_id), args.by)
        print(
            f"retrying {result.deposit_id} as job {result.job_id}"
            + ("" if result.enqueued else " (Redis unavailable: the sweeper will enqueue it)")
        )
        if not result.confirmed:
            print(
                "its M-Pesa success is not confirmed: the STK query is asked again, and it returns to review "
                "unless M-Pesa answers 0; if the M-Pesa statement shows it paid: kiota ops confirm <id> --by NAME"
            )
    elif args.action == "confirm":
        result = await ops.confirm_deposit(pool, queue, _deposit_id(args.deposit_id), args.by, args.note or "")
        print(
            f"confirmed {result.deposit_id} by {args.by}; completing it as job {result.job_id}"
            + ("" if result.enqueued else " (Redis unavailable: the sweeper will enqueue it)")
        )
    elif args.action == "kill-switch":
        released = await ops.set_kill_switch(pool, queue, args.state == "on", args.by)
        print(f"kill switch {args.state}" + (f"; {released} blocked job(s) re-enqueued" if released else ""))
    elif args.action == "resume-lane":
        print(f"lane resumed; {await ops.resume_lane(pool, queue, args.by)} blocked job(s) re-enqueued")
    elif args.action in ("pause", "resume"):
        change = queues.pause if args.action == "pause" else queues.resume
        state = await change(pool, queue, args.queue, args.by)
        print(f"queue {state.queue} {'paused' if state.paused else 'resumed'} by {state.changed_by}")
    elif args.action == "queues":
        _print_queues(await queues.stats(pool))
    elif args.action == "limits":
        per_deposit, hourly, daily = (parse_usdc(v) if v else None for v in (args.per_deposit, args.hourly, args.daily))
        await ops.set_limits(pool, per_deposit, hourly, daily, args.by)
    if args.action in ("guards", "limits"):
        guards = await ops.guards(pool)
        print(f"kill_switch={guards.kill_switch} lane_paused={guards.lane_paused} pause_reason={guards.pause_reason}")
        print(
            f"per_deposit_max={format_usdc(guards.per_deposit_max_micro)} "
            f"hourly_cap={format_usdc(guards.hourly_cap_micro)} daily_cap={format_usdc(guards.daily_cap_micro)}"
        )
    return 0
