"""Operators' accounts: who may use the admin surface, with which role, and the record of what they did.

A viewer reads; an operator acts. `ADMIN_USERNAME`/`ADMIN_PASSWORD` stay as the bootstrap operator,
compared in constant time; every other account is a row of `operators` whose password is an argon2id
hash (`kiota admin add-user`). Every refusal costs one argon2 verification, for an unknown name too
(against a dummy hash), so the answer's timing does not say whether a name exists. Verification runs
in a thread: argon2 is made to be slow, and the event loop must not wait for it.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Literal, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from kiota.db import Executor
from kiota.errors import InvalidInput, KiotaError
from kiota.records import AdminAction, Operator
from kiota.settings import Settings
from kiota.store import admin as store

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
MIN_PASSWORD_LENGTH = 12
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")  # as the table's CHECK: never a ':', which HTTP Basic splits on


@dataclass(frozen=True, slots=True)
class Admin:
    """Someone authenticated on the admin surface."""

    name: str
    role: Role
    bootstrap: bool = False  # ADMIN_USERNAME/ADMIN_PASSWORD, not an account

    @property
    def may_act(self) -> bool:
        return self.role == "operator"


class OperatorExists(KiotaError):
    """An account by that name exists already."""


class NoSuchOperator(KiotaError):
    """No enabled account by that name."""


def check_new_account(name: str, role: str, password: str) -> Role:
    """The role, if the account may be made; else InvalidInput saying why (never echoing the password)."""
    if not _NAME.fullmatch(name):
        raise InvalidInput("a name is 1 to 64 letters, digits or . _ @ -")
    if role not in ROLES:
        raise InvalidInput(f"a role is one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    return role


@cache
def _hasher() -> PasswordHasher:
    # argon2id at OWASP's recommended minimum (19 MiB, 2 passes, 1 lane) rather than the library's 64 MiB: every
    # refused Basic request costs one verification, so a flood of them must not cost a process its memory.
    # A hash keeps its own parameters, so they can be raised later without breaking existing accounts.
    return PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@cache
def _dummy_hash() -> str:
    """What an unknown name's password is checked against, so that it costs what a known one does."""
    return _hasher().hash("kiota: no such operator")


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def bootstrap_matches(settings: Settings, name: str, password: str) -> bool:
    """`ADMIN_USERNAME`/`ADMIN_PASSWORD`, both compared in constant time and both always."""
    expected_name = (settings.admin_username or "").encode()
    expected_password = settings.admin_password.get_secret_value().encode() if settings.admin_password else b""
    name_ok = hmac.compare_digest(name.encode(), expected_name)
    password_ok = hmac.compare_digest(password.encode(), expected_password)
    return settings.admin_enabled and name_ok and password_ok


async def authenticate(db: Executor, settings: Settings, name: str, password: str) -> Admin | None:
    """The admin these credentials name, or None: the bootstrap operator, or an enabled account."""
    if bootstrap_matches(settings, name, password):
        return Admin(name, "operator", bootstrap=True)
    return await verify_account(db, name, password)


async def verify_account(db: Executor, name: str, password: str) -> Admin | None:
    """The enabled account these credentials name, or None (one argon2 verification either way)."""
    account = await store.operator_by_name(db, name) if _NAME.fullmatch(name) else None
    usable = account is not None and account.disabled_at is None
    password_hash = account.password_hash if account is not None and usable else _dummy_hash()
    verified = await asyncio.to_thread(_verify, password_hash, password)
    if account is None or not usable or not verified:
        return None
    return Admin(account.name, cast(Role, account.role))


async def add_operator(db: Executor, name: str, role: str, password: str) -> Operator:
    """A new account. A name is one person's whatever its case: "ALICE" is refused when "alice" exists (the
    table's unique index on `person_key(name)`, sql/migrations/0018), as the two-person rule counts them as one."""
    checked_role = check_new_account(name, role, password)
    password_hash = await asyncio.to_thread(_hasher().hash, password)
    account = await store.insert_operator(db, name, checked_role, password_hash)
    if account is None:
        taken = await store.operator_of_person(db, name)
        said = name if taken is None or taken.name == name else f"{taken.name} (names are compared ignoring case)"
        raise OperatorExists(f"an operator named {said} exists already")
    return account


async def may_move_money(db: Executor, admin: Admin) -> bool:
    """Whether this admin may propose or approve a money action. The bootstrap operator may only while no
    enabled operator account exists: once people have accounts, one of them could propose under their own
    name and approve as ADMIN_USERNAME, two identities for one person, and the two-person rule would count two."""
    return admin.may_act and not (admin.bootstrap and await store.operator_accounts_exist(db))


async def disable_operator(db: Executor, name: str) -> Operator:
    account = await store.disable_operator(db, name)
    if account is None:
        raise NoSuchOperator(f"no enabled operator named {name}")
    return account


async def operators(db: Executor) -> list[Operator]:
    return await store.operators(db)


async def record_action(
    db: Executor,
    admin: Admin,
    action: str,
    target_kind: str,
    target_id: str | None = None,
    *,
    before: Mapping[str, object] | None = None,
    after: Mapping[str, object] | None = None,
) -> AdminAction:
    """Every admin action is recorded: pass the caller's connection to record it in the change's transaction."""
    return await store.insert_action(db, admin.name, admin.role, action, target_kind, target_id, before, after)


async def actions_on(db: Executor, target_kind: str, target_id: str | None = None) -> list[AdminAction]:
    return await store.actions_on(db, target_kind, target_id)
