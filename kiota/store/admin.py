"""Operators' accounts and the record of admin actions in PostgreSQL.

Owns the named queries of `sql/queries/admin.sql`.
"""

from __future__ import annotations

from collections.abc import Mapping

from kiota.db import Executor
from kiota.records import AdminAction, Operator
from kiota.sql import load_queries


async def insert_operator(db: Executor, name: str, role: str, password_hash: str) -> Operator | None:
    """The new account, or None when the name is taken."""
    row = await db.fetchrow(load_queries().operator_insert, name, role, password_hash)
    return None if row is None else Operator.from_row(row)


async def operator_by_name(db: Executor, name: str) -> Operator | None:
    row = await db.fetchrow(load_queries().operator_by_name, name)
    return None if row is None else Operator.from_row(row)


async def operator_of_person(db: Executor, name: str) -> Operator | None:
    """The account whose name is `name` in any case or spacing."""
    row = await db.fetchrow(load_queries().operator_of_person, name)
    return None if row is None else Operator.from_row(row)


async def operator_accounts_exist(db: Executor) -> bool:
    """Whether any enabled account has the operator role."""
    return bool(await db.fetchval(load_queries().operator_accounts_exist))


async def operators(db: Executor) -> list[Operator]:
    return [Operator.from_row(row) for row in await db.fetch(load_queries().operators_all)]


async def disable_operator(db: Executor, name: str) -> Operator | None:
    """The account now disabled, or None when there is none by that name still enabled."""
    row = await db.fetchrow(load_queries().operator_disable, name)
    return None if row is None else Operator.from_row(row)


async def insert_action(
    db: Executor,
    actor: str,
    actor_role: str,
    action: str,
    target_kind: str,
    target_id: str | None,
    before: Mapping[str, object] | None,
    after: Mapping[str, object] | None,
) -> AdminAction:
    row = await db.fetchrow(
        load_queries().admin_action_insert,
        actor,
        actor_role,
        action,
        target_kind,
        target_id,
        None if before is None else dict(before),
        None if after is None else dict(after),
    )
    assert row is not None
    return AdminAction.from_row(row)


async def actions_on(db: Executor, target_kind: str, target_id: str | None, limit: int = 50) -> list[AdminAction]:
    """What was done to a target, newest first (every target of the kind when `target_id` is None)."""
    rows = await db.fetch(load_queries().admin_actions_on, target_kind, target_id, limit)
    return [AdminAction.from_row(row) for row in rows]


async def find_actions(
    db: Executor,
    *,
    actor: str | None = None,
    action: str | None = None,
    target_kinds: list[str] | None = None,
    target_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[AdminAction]:
    """The log, newest first, narrowed by whichever of these are given."""
    rows = await db.fetch(load_queries().admin_actions_find, actor, action, target_kinds, target_id, limit, offset)
    return [AdminAction.from_row(row) for row in rows]
