"""`kiota ops …`: the operator's commands, printing plain text."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Sequence

from arq.connections import ArqRedis

from kiota import ops, review_actions
from kiota.db import Pool, create_pool
from kiota.errors import InvalidInput
from kiota.money import format_usdc, parse_usdc
from kiota.operators import Admin
from kiota.queue import create_queue
from kiota.review_rules import Resolution
from kiota.store import proposals as proposal_store

_MONEY_ACTIONS = frozenset({"confirm", "credit", "write-off", "proposals", "approve", "reject"})
_PROPOSAL_COLUMNS = ["id", "action", "status", "deposit_id", "review_item_id", "user_id", "asset", "amount"]


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
    elif args.action in _MONEY_ACTIONS:
        await _money(args, pool, queue)
    elif args.action == "kill-switch":
        released = await ops.set_kill_switch(pool, queue, args.state == "on", args.by)
        print(f"kill switch {args.state}" + (f"; {released} blocked job(s) re-enqueued" if released else ""))
    elif args.action == "resume-lane":
        print(f"lane resumed; {await ops.resume_lane(pool, queue, args.by)} blocked job(s) re-enqueued")
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


async def _money(args: argparse.Namespace, pool: Pool, queue: ArqRedis) -> None:
    """The two-person rule at the shell: one operator proposes (confirm, credit, write-off), another approves.
    `--by` says who runs the command: a person at the shell is an operator."""
    if args.action == "proposals":
        _print_rows(await proposal_store.open_proposals(pool), [*_PROPOSAL_COLUMNS, "proposed_by", "note"])
        return
    admin = Admin(args.by, "operator")
    note = args.note or ""
    if args.action == "approve":
        done = await review_actions.approve(pool, queue, args.proposal_id, admin, note)
        print(f"approved proposal {done.proposal.id} ({done.proposal.action}) by {args.by}; done")
        if done.job_id is not None:
            print(
                f"completing {done.proposal.deposit_id} as job {done.job_id}"
                + ("" if done.enqueued else " (Redis unavailable: the sweeper will enqueue it)")
            )
        return
    if args.action == "reject":
        closed = await review_actions.reject(pool, args.proposal_id, admin, note)
        print(f"proposal {closed.id} {closed.status} by {args.by}")
        return
    if args.action == "confirm":
        proposal = await review_actions.propose(
            pool, admin, Resolution.CONFIRM_DEPOSIT, deposit_id=_deposit_id(args.deposit_id), note=note
        )
    elif args.action == "credit":
        proposal = await review_actions.propose(
            pool, admin, Resolution.CREDIT_USER, review_item_id=args.review_item_id, user_id=args.user, note=note
        )
    else:
        proposal = await review_actions.propose(
            pool, admin, Resolution.WRITE_OFF, review_item_id=args.review_item_id, note=note
        )
    print(
        f"proposed {proposal.action} as proposal {proposal.id} by {args.by}; "
        f"another operator approves it: kiota ops approve {proposal.id} --by NAME"
    )
