"""USDC deposit intents in PostgreSQL, as the app makes and reads them (the ingester moves them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from kiota import usdc
from kiota.db import Executor
from kiota.records import Intent
from kiota.sql import load_queries


@dataclass(frozen=True, slots=True)
class IntentOnChain:
    """An intent with what the chain has shown of it: the transfer that paid it, and the last head scanned."""

    intent: Intent
    tx_hash: str | None
    block_number: int | None
    last_head: int | None

    @property
    def confirmations(self) -> int:
        if self.block_number is None or self.last_head is None:
            return 0
        return usdc.confirmations(self.last_head, self.block_number)


async def insert_intent(
    conn: Executor,
    intent_id: uuid.UUID,
    *,
    user_id: str,
    deposit_address: str,
    expected_micro: int | None,
    ttl_seconds: float,
) -> Intent | None:
    """The new intent; None while the user has an open one (one open per user)."""
    row = await conn.fetchrow(
        load_queries().insert_intent, intent_id, user_id, deposit_address, expected_micro, ttl_seconds
    )
    return None if row is None else Intent.from_row(row)


async def open_intent_of_user(conn: Executor, user_id: str) -> Intent | None:
    row = await conn.fetchrow(load_queries().open_intent_for_user, user_id)
    return None if row is None else Intent.from_row(row)


async def intent_of_user(conn: Executor, intent_id: uuid.UUID, user_id: str, chain_id: int) -> IntentOnChain | None:
    """The intent, if it is this user's (another user's is none), with what `chain_id` has shown of it."""
    row = await conn.fetchrow(load_queries().intent_of_user, intent_id, user_id, chain_id)
    if row is None:
        return None
    return IntentOnChain(Intent.from_row(row), row["tx_hash"], row["block_number"], row["last_head"])
