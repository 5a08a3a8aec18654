"""`kiota admin …`: operators' accounts for the admin surface (the dashboard, `/metrics`, the admin API).

A password is read from a prompt, or from standard input when it is not a terminal (or with
`--password-stdin`): never from the command line, where `ps` and shell history would keep it.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from kiota import operators
from kiota.db import create_pool
from kiota.errors import InvalidInput


def read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise InvalidInput("the two passwords differ")
    return first


async def run_admin(args: argparse.Namespace, database_url: str, bootstrap_name: str | None) -> int:
    password = ""
    if args.action == "add-user":
        if args.name == bootstrap_name:
            raise InvalidInput(f"{args.name} is ADMIN_USERNAME, the bootstrap operator: choose another name")
        password = read_password(args.password_stdin)
        operators.check_new_account(args.name, args.role, password)  # before connecting
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        if args.action == "add-user":
            account = await operators.add_operator(pool, args.name, args.role, password)
            print(f"added {account.name} ({account.role})")
        elif args.action == "disable-user":
            account = await operators.disable_operator(pool, args.name)
            print(f"disabled {account.name}")
        else:
            for account in await operators.operators(pool):
                state = "enabled" if account.disabled_at is None else f"disabled {account.disabled_at:%Y-%m-%d %H:%M}"
                print(f"{account.name}  {account.role}  {state}  created {account.created_at:%Y-%m-%d %H:%M}")
    finally:
        await pool.close()
    return 0
