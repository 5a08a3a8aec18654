"""Deposit intents: the app's "I am about to send USDC" — one open per user, state derived by the ingester."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from kiota.db import Pool
from kiota.records import Intent, User
from kiota.store import intents as store


@dataclass(frozen=True, slots=True)
class Created:
    """A new intent: the user had none open."""

    intent: Intent


@dataclass(frozen=True, slots=True)
class Reopened:
    """The user's open intent, whatever the new request asked for."""

    intent: Intent


async def create_or_open(pool: Pool, user: User, expected_micro: int | None, *, ttl_seconds: int) -> Created | Reopened:
    """A new intent watching the user's address, or the user's open one."""
    created = await store.insert_intent(
        pool,
        uuid.uuid4(),
        user_id=user.id,
        deposit_address=user.deposit_address,
        expected_micro=expected_micro,
        ttl_seconds=float(ttl_seconds),
    )
    if created is not None:
        return Created(created)
    opened = await store.open_intent_of_user(pool, user.id)
    if opened is None:  # it ended between the two statements: make a new one
        return await create_or_open(pool, user, expected_micro, ttl_seconds=ttl_seconds)
    return Reopened(opened)
