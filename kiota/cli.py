"""The `kiota` command: migrate, api, worker, dev, reconcile, ops and admin."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic_settings import BaseSettings, SettingsConfigDict

from kiota.errors import ConfigError, KiotaError, MigrationError
from kiota.logging import configure_logging
from kiota.process import freeze_what_lives_forever, restore_recursion_limit
from kiota.settings import Settings, WorkerSettings, load_settings

if TYPE_CHECKING:
    from kiota.dev.options import DevOptions


def _fail(message: str) -> int:
    print(f"kiota: {message}", file=sys.stderr)
    return 2


class _Stores(BaseSettings):
    """What `migrate`, `ops` and `reconcile` need: the stores, not the app's secrets."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")
    database_url: str = Settings.model_fields["database_url"].default
    redis_url: str = Settings.model_fields["redis_url"].default


def cmd_migrate(args: argparse.Namespace) -> int:
    from kiota.migrate import migrate

    configure_logging()
    try:
        applied = asyncio.run(migrate(_Stores().database_url))
    except MigrationError as exc:
        return _fail(str(exc))
    print(f"kiota migrate: {len(applied)} applied" + (f" ({', '.join(applied)})" if applied else ""))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    try:
        settings = load_settings(Settings)
    except ConfigError as exc:
        return _fail(str(exc))
    configure_logging()
    app = create_app(settings)
    restore_recursion_limit()
    freeze_what_lives_forever()
    uvicorn.run(
        app,
        host="0.0.0.0",  # noqa: S104 - Render routes to 0.0.0.0:$PORT
        port=settings.port,
        access_log=False,
        log_config=None,  # its lines go through configure_logging's handler, not uvicorn's own formatters
        proxy_headers=False,  # the client address is read by our own trusted-proxy rule
        timeout_graceful_shutdown=20,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from jobs.worker import run_worker

    if args.check:
        return _check_workers(args.queues)
    try:
        settings = load_settings(WorkerSettings, **({"worker_queues": args.queues} if args.queues else {}))
    except ConfigError as exc:
        return _fail(str(exc))
    run_worker(settings)
    return 0


def _check_workers(queues: str | None) -> int:
    """`kiota worker --check`: 0 when a live worker consumes each queue asked for (all by default), else 1;
    one line either way. It needs only the stores, no secrets: a health probe can run it anywhere."""
    from kiota.db import create_pool
    from kiota.job_names import Queue
    from kiota.queues import consumers

    try:
        wanted = Queue.parse(queues) if queues else list(Queue)
    except KiotaError as exc:
        return _fail(str(exc))

    async def count() -> dict[Queue, int]:
        pool = await create_pool(_Stores().database_url, min_size=1, max_size=2)
        try:
            return await consumers(pool, wanted)
        finally:
            await pool.close()

    try:
        counts = asyncio.run(count())
    except (OSError, asyncio.TimeoutError) as exc:  # noqa: UP041 - asyncpg's connect raises the builtin one too
        print(f"kiota worker --check: PostgreSQL unreachable ({type(exc).__name__})", file=sys.stderr)
        return 1
    idle = [queue.value for queue, n in counts.items() if n == 0]
    if idle:
        print(f"kiota worker --check: no live worker consumes {', '.join(idle)}", file=sys.stderr)
        return 1
    print("kiota worker --check: ok: " + ", ".join(f"{queue.value} ({n} worker(s))" for queue, n in counts.items()))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from kiota.dev.options import DevOptions
    from kiota.dev.runner import main

    options = DevOptions(
        api_port=args.port,
        anvil_port=args.anvil_port,
        simulator_port=args.simulator_port,
        database_url=args.database_url,
        redis_url=args.redis_url,
    )
    return main(options)


class _OpsConfig(_Stores):
    """What `kiota ops` needs: the stores, and the chain for `reconcile`."""

    base_rpc_url: str = Settings.model_fields["base_rpc_url"].default
    base_usdc_address: str = Settings.model_fields["base_usdc_address"].default
    base_chain_id: int = Settings.model_fields["base_chain_id"].default


def cmd_ops(args: argparse.Namespace) -> int:
    from kiota.ops_cli import Chain, run_ops

    configure_logging()  # log lines on standard error: standard output is the answer (`--json`: one document)
    config = _OpsConfig()
    chain = Chain(config.base_rpc_url, config.base_usdc_address, config.base_chain_id)
    try:
        return asyncio.run(run_ops(args, config.database_url, config.redis_url, chain))
    except KiotaError as exc:
        return _fail(str(exc))


def cmd_admin(args: argparse.Namespace) -> int:
    from kiota.admin_cli import run_admin

    class _Accounts(_Stores):
        admin_username: str | None = None  # the bootstrap operator's name, which no account may take

    config = _Accounts()
    try:
        return asyncio.run(run_admin(args, config.database_url, config.admin_username))
    except KiotaError as exc:
        return _fail(str(exc))


def cmd_reconcile(args: argparse.Namespace) -> int:
    """`kiota reconcile` is `kiota ops reconcile`, kept for the scripts that call it."""
    args.action = "reconcile"
    return cmd_ops(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiota", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply the SQL migrations to DATABASE_URL").set_defaults(func=cmd_migrate)
    sub.add_parser("api", help="serve the HTTP API on 0.0.0.0:$PORT").set_defaults(func=cmd_api)
    worker = sub.add_parser("worker", help="run the job workers, one per queue")
    worker.add_argument(
        "--queues", help="comma-separated queues to consume: payouts, chain, maintenance (default: WORKER_QUEUES, all)"
    )
    worker.add_argument(
        "--check", action="store_true", help="exit 1 unless a live worker consumes each of the queues (all by default)"
    )
    worker.set_defaults(func=cmd_worker)
    dev = sub.add_parser("dev", help="the whole system on this machine, with generated local secrets")
    defaults = _dev_defaults()
    dev.add_argument("--port", type=int, default=defaults.api_port, help="API port")
    dev.add_argument("--anvil-port", type=int, default=defaults.anvil_port)
    dev.add_argument("--simulator-port", type=int, default=defaults.simulator_port)
    dev.add_argument("--database-url", default=defaults.database_url, help="recreated on every start")
    dev.add_argument("--redis-url", default=defaults.redis_url, help="flushed on every start")
    dev.set_defaults(func=cmd_dev)
    rec = sub.add_parser("reconcile", help="compare ledger balances with on-chain USDC; exit 1 on differences")
    rec.add_argument("--treasury", help="treasury addresses (comma-separated) to report; default: every one that paid")
    rec.set_defaults(func=cmd_reconcile, json=False, progress=False, by="reconcile")
    ops = sub.add_parser("ops", help="operator commands: find and retry stuck deposits, payout guards")
    ops_sub = ops.add_subparsers(dest="action", required=True)
    stuck = ops_sub.add_parser("stuck", help="deposits in review, or pending/processing for too long")
    stuck.add_argument("--older-than", type=float, default=600, help="seconds without progress (default 600)")
    ops_sub.add_parser("review", help="open review items (money whose owner or amount is unclear)")
    for verb, says in (("pause", "hold a queue's jobs (none lost)"), ("resume", "let a paused queue's jobs run")):
        queue_action = ops_sub.add_parser(verb, help=says + "; recorded")
        queue_action.add_argument("queue", choices=["payouts", "chain", "maintenance"])
    ops_sub.add_parser("queues", help="each queue's jobs by status, whether it is paused, and the live workers")
    retry = ops_sub.add_parser("retry", help="run a deposit's completion again")
    retry.add_argument("deposit_id")
    confirm = ops_sub.add_parser(
        "confirm",
        help="propose confirming by hand an M-Pesa payment found on the statement; another operator approves",
    )
    confirm.add_argument("deposit_id")
    confirm.add_argument("--by", required=True, help="who checked the M-Pesa statement (recorded)")
    confirm.add_argument("--note", help="what was seen, e.g. the receipt on the statement (recorded)")
    credit = ops_sub.add_parser("credit", help="propose crediting a user the USDC a review item holds")
    credit.add_argument("review_item_id", type=int)
    credit.add_argument("--user", required=True, help="the user to credit")
    credit.add_argument("--by", required=True, help="who proposes (recorded)")
    credit.add_argument("--note")
    write_off = ops_sub.add_parser("write-off", help="propose writing off the money a review item holds in suspense")
    write_off.add_argument("review_item_id", type=int)
    write_off.add_argument("--by", required=True, help="who proposes (recorded)")
    write_off.add_argument("--note")
    ops_sub.add_parser("proposals", help="money actions waiting for a second operator")
    for verb, text in (("approve", "approve (and so run) another operator's proposal"), ("reject", "reject one")):
        decide = ops_sub.add_parser(verb, help=text + "; the proposer's own reject withdraws it")
        decide.add_argument("proposal_id", type=int)
        decide.add_argument("--by", required=True, help="who decides (recorded; never the proposer, to approve)")
        decide.add_argument("--note")
    switch = ops_sub.add_parser("kill-switch", help="stop (on) or allow (off) every payout")
    switch.add_argument("state", choices=["on", "off"])
    resume = ops_sub.add_parser("resume-lane", help="resume the payout lanes after a pause (e.g. a treasury refill)")
    resume.add_argument("--treasury", help="resume only this treasury's lane (default: every lane)")
    ops_sub.add_parser("guards", help="show the payout guards")
    limits = ops_sub.add_parser("limits", help="change payout limits (USDC decimal strings)")
    limits.add_argument("--per-deposit")
    limits.add_argument("--hourly")
    limits.add_argument("--daily")
    _add_ops_jobs(ops_sub)
    ops.add_argument("--by", default=os.environ.get("USER", "operator"), help="who is acting (recorded)")
    ops.add_argument("--json", action="store_true", help="print one JSON document (money in its smallest unit)")
    ops.add_argument("--progress", action="store_true", help="draw progress bars even when stderr is no terminal")
    ops.set_defaults(func=cmd_ops)
    admin = sub.add_parser("admin", help="operators' accounts for the admin surface")
    admin_sub = admin.add_subparsers(dest="action", required=True)
    add_user = admin_sub.add_parser(
        "add-user", help="add an account; its password from a prompt, or standard input when not a terminal"
    )
    add_user.add_argument("name")
    add_user.add_argument("--role", required=True, choices=["viewer", "operator"], help="viewers read, operators act")
    add_user.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    admin_sub.add_parser("list-users", help="every account, its role and whether it is enabled")
    disable = admin_sub.add_parser("disable-user", help="refuse an account from now on (its record stays)")
    disable.add_argument("name")
    admin.set_defaults(func=cmd_admin)
    return parser


def _add_ops_jobs(ops_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`kiota ops` for jobs, history and the chain: what the dashboard's queues and jobs pages do."""
    rec = ops_sub.add_parser("reconcile", help="ledger USDC against the chain; exit 1 on a difference")
    rec.add_argument("--treasury", help="treasury addresses (comma-separated) to report; default: every one that paid")
    jobs = ops_sub.add_parser("jobs", help="the job history, newest first; exit 1 if a listed job failed")
    retry_jobs = ops_sub.add_parser("retry-jobs", help="retry every job the filter matches (up to 500)")
    for listing in (jobs, retry_jobs):
        listing.add_argument("--queue", choices=["payouts", "chain", "maintenance"])
        listing.add_argument("--status", help="queued, active, deferred, retrying, blocked, succeeded, failed, ...")
        listing.add_argument("--function")
        listing.add_argument("--deposit-id")
    jobs.add_argument("--limit", type=int, default=50)
    for verb, text in (
        ("job", "one job: its attempts and log lines"),
        ("retry-job", "run a failed or cancelled job again"),
        ("cancel-job", "cancel a job waiting to run (its deposit goes to review)"),
    ):
        ops_sub.add_parser(verb, help=text).add_argument("job_id")
    clean = ops_sub.add_parser("clean", help="delete finished job history older than N days (never the ledger)")
    clean.add_argument("--older-than-days", type=int, required=True)


def _dev_defaults() -> DevOptions:
    from kiota.dev.options import DevOptions

    return DevOptions()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
