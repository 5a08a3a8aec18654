"""`kiota ops …`: the operator's commands, what the dashboard does, for scripts.

Plain lines for a person, one JSON document with `--json`; a progress bar on standard error for what runs
more than a moment (cleaning, reconciling, retrying over a filter); the exit code says whether something
needs a person (`kiota/ops_output.py`: 0 fine, 1 attention, 2 failed or refused).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from arq.connections import ArqRedis

from kiota import job_actions, ops, queues, review_actions
from kiota.chain_rpc import ChainReader
from kiota.db import Pool, create_pool
from kiota.errors import InvalidInput
from kiota.job_history import find_jobs, job_detail
from kiota.job_names import Queue
from kiota.job_view import JOB_STATUSES, JobFilter, JobStatus, job_filter
from kiota.money import format_usdc, parse_usdc
from kiota.operators import Admin, verify_account
from kiota.ops_output import ATTENTION, OK, Output, Progress
from kiota.queue import create_queue
from kiota.reconcile import reconcile
from kiota.records import JobRun
from kiota.review_rules import Resolution
from kiota.store import proposals as proposal_store
from kiota.store.payouts import treasury_addresses

STUCK_COLUMNS = [
    "id", "status", "amount_kes", "mpesa_receipt", "review_reason", "confirmed_by", "confirm_answer",
    "job_status", "failures", "last_error", "blocked_reason", "updated_at",
]  # fmt: skip
REVIEW_COLUMNS = [
    "id", "kind", "deposit_id", "callback_id", "chain_transfer_id", "amount_kes", "amount_usdc_micro", "reason",
    "created_at",
]  # fmt: skip
PROPOSAL_COLUMNS = ["id", "action", "status", "deposit_id", "review_item_id", "user_id", "asset", "amount"]
JOB_COLUMNS = ["job_id", "queue", "function", "status", "deposit_id", "enqueued_at", "finished_at", "last_error"]


@dataclass(frozen=True, slots=True)
class Chain:
    """Where `kiota ops reconcile` reads balances."""

    rpc_url: str
    usdc_address: str
    chain_id: int


@dataclass(slots=True)
class Shell:
    """What a command runs with: the stores, who acts, how to answer."""

    args: argparse.Namespace
    pool: Pool
    queue: ArqRedis
    chain: Chain
    out: Output

    @property
    def admin(self) -> Admin:
        """A person at the shell acts as an operator, named by `--by` (recorded)."""
        return Admin(self.args.by, "operator")

    def progress(self, label: str) -> Progress:
        return Progress(label, 0, enabled=self.args.progress or sys.stderr.isatty())


def _deposit_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidInput(f"not a deposit id: {text}") from None


def _status(text: str | None) -> JobStatus | None:
    if text is None:
        return None
    for status in JOB_STATUSES:
        if status == text:
            return status
    raise InvalidInput(f"a job status is one of {', '.join(JOB_STATUSES)}")


async def run_ops(args: argparse.Namespace, database_url: str, redis_url: str, chain: Chain) -> int:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    queue = create_queue(redis_url)
    try:
        return await COMMANDS[args.action](Shell(args, pool, queue, chain, Output(args.json)))
    finally:
        await queue.aclose(close_connection_pool=True)
        await pool.close()


# --- finding what needs a person -----------------------------------------------------------------------


async def stuck(shell: Shell) -> int:
    rows = await ops.stuck_deposits(shell.pool, shell.args.older_than)
    shell.out.rows(rows, STUCK_COLUMNS)
    return ATTENTION if rows else OK


async def review(shell: Shell) -> int:
    rows = await ops.open_reviews(shell.pool)
    shell.out.rows(rows, REVIEW_COLUMNS)
    return ATTENTION if rows else OK


async def guards(shell: Shell) -> int:
    if shell.args.action == "limits":
        values = (shell.args.per_deposit, shell.args.hourly, shell.args.daily)
        per_deposit, hourly, daily = (parse_usdc(v) if v else None for v in values)
        await ops.set_limits(shell.pool, per_deposit, hourly, daily, shell.args.by)
    now = await ops.guards(shell.pool)
    limits = {
        "per_deposit_max": format_usdc(now.per_deposit_max_micro),
        "hourly_cap": format_usdc(now.hourly_cap_micro),
        "daily_cap": format_usdc(now.daily_cap_micro),
    }
    lanes = await ops.treasury_lanes(shell.pool)
    paused = [lane for lane in lanes if lane.paused]  # each treasury's own lane
    # What must be none before a treasury's key is removed (README "Several treasuries").
    in_flight = {lane.address: lane.in_flight for lane in lanes if lane.in_flight}
    # Several treasuries: what each could pay when its lane last looked (a larger deposit waits for a top-up).
    free = {lane.address: format_usdc(lane.free_usdc) for lane in lanes if lane.free_usdc is not None}
    shell.out.result(
        {
            "kill_switch": now.kill_switch,
            "lane_paused": now.lane_paused,
            "pause_reason": now.pause_reason,
            **limits,
            "treasury_lanes_paused": {lane.address: lane.pause_reason for lane in paused},
            "treasury_payouts_in_flight": in_flight,
            "treasury_free_usdc": free,
        },
        f"kill_switch={now.kill_switch} lane_paused={now.lane_paused} pause_reason={now.pause_reason}\n"
        + " ".join(f"{name}={value}" for name, value in limits.items())
        + "".join(f"\ntreasury {lane.address} lane paused: {lane.pause_reason}" for lane in paused)
        + "".join(f"\ntreasury {address}: {n} payout(s) in flight" for address, n in in_flight.items())
        + "".join(
            f"\ntreasury {address}: free USDC {usdc} when its lane last looked" for address, usdc in free.items()
        ),
    )
    return ATTENTION if now.kill_switch or now.lane_paused or paused else OK


async def reconcile_chain(shell: Shell) -> int:
    reader = ChainReader(shell.chain.rpc_url)
    bar = shell.progress("reconciling")
    try:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.advance(done - bar.done)

        # Every treasury: those given (comma-separated), else every one that ever signed a payout.
        given = [t.strip() for t in (shell.args.treasury or "").split(",") if t.strip()]
        treasuries = given or await treasury_addresses(shell.pool)
        differences, lines = await reconcile(
            shell.pool, reader, shell.chain.usdc_address, treasuries, on_progress=advance, chain_id=shell.chain.chain_id
        )
        bar.finish()
    finally:
        await reader.aclose()
    text = [
        *lines,
        *(
            f"DIFFERENCE {d.who} {d.address}: {d.sides[0]} {format_usdc(d.ledger_micro)}, "
            f"{d.sides[1]} {format_usdc(d.chain_micro)}, {d.sides[1]} - {d.sides[0]} "
            f"{format_usdc(d.chain_micro - d.ledger_micro)}"
            for d in differences
        ),
        f"{len(differences)} difference(s)",
    ]
    shell.out.result({"differences": differences, "lines": lines}, "\n".join(text))
    return ATTENTION if differences else OK


# --- deposits ------------------------------------------------------------------------------------------


async def retry(shell: Shell) -> int:
    result = await ops.retry_deposit(shell.pool, shell.queue, _deposit_id(shell.args.deposit_id), shell.admin)
    text = f"retrying {result.deposit_id} as job {result.job_id}" + (
        "" if result.enqueued else " (Redis unavailable: the sweeper will enqueue it)"
    )
    if not result.confirmed:
        text += (
            "\nits M-Pesa success is not confirmed: the STK query is asked again, and it returns to review unless "
            "M-Pesa answers 0; if the M-Pesa statement shows it paid: kiota ops confirm <id> --by NAME"
        )
    shell.out.result(result, text)
    return OK


# --- money: one operator proposes, another approves --------------------------------------------------


async def proposals(shell: Shell) -> int:
    rows = await proposal_store.open_proposals(shell.pool)
    shell.out.rows(rows, [*PROPOSAL_COLUMNS, "proposed_by", "note"])
    return ATTENTION if rows else OK


async def approve(shell: Shell) -> int:
    admin = await person(shell)
    done = await review_actions.approve(shell.pool, shell.queue, shell.args.proposal_id, admin, _note(shell))
    text = f"approved proposal {done.proposal.id} ({done.proposal.action}) by {shell.args.by}; done"
    if done.job_id is not None:
        text += f"\ncompleting {done.proposal.deposit_id} as job {done.job_id}" + (
            "" if done.enqueued else " (Redis unavailable: the sweeper will enqueue it)"
        )
    shell.out.result(done, text)
    return OK


async def reject(shell: Shell) -> int:
    closed = await review_actions.reject(shell.pool, shell.args.proposal_id, await person(shell), _note(shell))
    shell.out.result(closed, f"proposal {closed.id} {closed.status} by {shell.args.by}")
    return OK


async def person(shell: Shell) -> Admin:
    """Who moves money at the shell, proven: `--by` must be an operator account, its password read from
    standard input (a prompt on a terminal). A free-text `--by` would let one person propose as one name and
    approve as another; with the password, the two-person rule holds at the shell as on the dashboard."""
    prompt = f"{shell.args.by}'s password: "
    password = getpass.getpass(prompt) if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    admin = await verify_account(shell.pool, shell.args.by.strip(), password)
    if admin is None or not admin.may_act:
        raise InvalidInput(
            "money actions need --by to be an operator account (kiota admin add-user NAME --role operator) "
            "and its password on standard input"
        )
    return admin


async def propose(shell: Shell) -> int:
    args, note = shell.args, _note(shell)
    admin = await person(shell)
    if args.action == "confirm":
        proposal = await review_actions.propose(
            shell.pool, admin, Resolution.CONFIRM_DEPOSIT, deposit_id=_deposit_id(args.deposit_id), note=note
        )
    elif args.action == "credit":
        proposal = await review_actions.propose(
            shell.pool, admin, Resolution.CREDIT_USER, review_item_id=args.review_item_id, user_id=args.user,
            note=note,
        )  # fmt: skip
    else:
        proposal = await review_actions.propose(
            shell.pool, admin, Resolution.WRITE_OFF, review_item_id=args.review_item_id, note=note
        )
    shell.out.result(
        proposal,
        f"proposed {proposal.action} as proposal {proposal.id} by {args.by}; "
        f"another operator approves it: kiota ops approve {proposal.id} --by NAME",
    )
    return OK


def _note(shell: Shell) -> str:
    return str(getattr(shell.args, "note", None) or "")


# --- jobs ----------------------------------------------------------------------------------------------


def job_filter_of(shell: Shell) -> JobFilter:
    args = shell.args
    return job_filter(
        _status(args.status),
        args.function,
        _deposit_id(args.deposit_id) if args.deposit_id else None,
        queue=Queue(args.queue) if args.queue else None,
    )


@dataclass(frozen=True, slots=True)
class _JobRow:
    """A job as a line of `kiota ops jobs`: its status as the contract says it."""

    job_id: str
    queue: str
    function: str
    status: JobStatus
    deposit_id: uuid.UUID | None
    enqueued_at: datetime
    finished_at: datetime | None
    last_error: str | None

    @classmethod
    def of(cls, run: JobRun, status: JobStatus) -> _JobRow:
        return cls(
            run.id, run.queue, run.function, status, run.deposit_id, run.enqueued_at, run.finished_at, run.last_error
        )


async def jobs(shell: Shell) -> int:
    found = await find_jobs(shell.pool, job_filter_of(shell), shell.args.limit)
    rows = [_JobRow.of(detail.run, detail.status) for detail in found]
    shell.out.rows(rows, JOB_COLUMNS)
    return ATTENTION if any(row.status in ("failed", "blocked") for row in rows) else OK


async def job(shell: Shell) -> int:
    detail = await job_detail(shell.pool, shell.args.job_id)
    if detail is None:
        raise InvalidInput(f"no job {shell.args.job_id}")
    shell.out.result(
        {"job": detail.run, "status": detail.status, "attempts": detail.attempts},
        "\n".join(
            [
                f"{detail.run.id} {detail.status} on {detail.run.queue} ({detail.run.function})",
                *(
                    f"  attempt {n}: {a.started_at:%Y-%m-%d %H:%M:%S} {a.outcome or 'running'} {a.error or ''}".rstrip()
                    for n, a in enumerate(detail.attempts, 1)
                ),
                *(f"  log: {line}" for line in detail.run.logs or ()),
            ]
        ),
    )
    return ATTENTION if detail.status in ("failed", "blocked") else OK


async def retry_job(shell: Shell) -> int:
    said = await job_actions.retry_job(shell.pool, shell.queue, shell.args.job_id, shell.admin)
    shell.out.result({"job_id": shell.args.job_id, "done": said}, said)
    return OK


async def retry_jobs(shell: Shell) -> int:
    done = await job_actions.retry_matching(shell.pool, shell.queue, job_filter_of(shell), shell.admin)
    text = [f"retried {len(done.retried)} job(s)", *(f"refused {job_id}: {why}" for job_id, why in done.refused)]
    shell.out.result(done, "\n".join(text))
    return ATTENTION if done.refused else OK


async def cancel_job(shell: Shell) -> int:
    cancelled = await job_actions.cancel_job(shell.pool, shell.queue, shell.args.job_id, shell.admin)
    shell.out.result(cancelled, f"job {cancelled.id} cancelled" + (
        f"; its deposit {cancelled.deposit_id} is in review" if cancelled.deposit_id else ""
    ))  # fmt: skip
    return OK


async def clean(shell: Shell) -> int:
    bar = shell.progress("cleaning")

    def advance(done: int, total: int) -> None:
        bar.total = total
        bar.advance(done - bar.done)

    deleted, attempts = await job_actions.clean_history(
        shell.pool, shell.args.older_than_days, shell.admin, on_progress=advance
    )
    bar.finish()
    shell.out.result(
        {"jobs_deleted": deleted, "attempts_deleted": attempts},
        f"cleaned {deleted} job(s) and {attempts} attempt(s) that ended more than "
        f"{shell.args.older_than_days} days ago",
    )
    return OK


# --- the payout guards ---------------------------------------------------------------------------------


async def kill_switch(shell: Shell) -> int:
    released = await ops.set_kill_switch(shell.pool, shell.queue, shell.args.state == "on", shell.admin)
    shell.out.result(
        {"kill_switch": shell.args.state == "on", "released_jobs": released},
        f"kill switch {shell.args.state}" + (f"; {released} blocked job(s) re-enqueued" if released else ""),
    )
    return OK


async def resume_lane(shell: Shell) -> int:
    treasury = shell.args.treasury
    released = await ops.resume_lane(shell.pool, shell.queue, shell.admin, treasury)
    which = f"lane of treasury {treasury}" if treasury else "lanes"
    shell.out.result(
        {"treasury": treasury, "released_jobs": released}, f"{which} resumed; {released} blocked job(s) re-enqueued"
    )
    return OK


# --- queues -------------------------------------------------------------------------------------------


async def pause_or_resume(shell: Shell) -> int:
    change = queues.pause if shell.args.action == "pause" else queues.resume
    state = await change(shell.pool, shell.queue, shell.args.queue, shell.admin)
    shell.out.result(state, f"queue {state.queue} {'paused' if state.paused else 'resumed'} by {state.changed_by}")
    return OK


async def queue_stats(shell: Shell) -> int:
    """The queues' jobs by status and pause, and the live workers: exit 1 with none, or a queue paused."""
    stats = await queues.stats(shell.pool)
    lines = [f"{name}  " + "  ".join(f"{word}={value}" for word, value in counts.items())
             for name, counts in stats.queues.items()]  # fmt: skip
    lines += [
        f"worker {w.worker_id}  queues={','.join(w.queues)}  seen_at={w.seen_at.isoformat()}" for w in stats.workers
    ]
    shell.out.result(stats, "\n".join(lines or ["(no queue)"]) + ("" if stats.workers else "\nno live worker"))
    paused = any(counts.get("paused") for counts in stats.queues.values())
    return ATTENTION if paused or not stats.workers else OK


COMMANDS: dict[str, Callable[[Shell], Awaitable[int]]] = {
    "stuck": stuck,
    "review": review,
    "guards": guards,
    "limits": guards,
    "reconcile": reconcile_chain,
    "retry": retry,
    "proposals": proposals,
    "approve": approve,
    "reject": reject,
    "confirm": propose,
    "credit": propose,
    "write-off": propose,
    "jobs": jobs,
    "job": job,
    "retry-job": retry_job,
    "retry-jobs": retry_jobs,
    "cancel-job": cancel_job,
    "clean": clean,
    "kill-switch": kill_switch,
    "resume-lane": resume_lane,
    "pause": pause_or_resume,
    "resume": pause_or_resume,
    "queues": queue_stats,
}
