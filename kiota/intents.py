"""Deposit intents: the app's "I am about to send USDC" — one open per user, state derived by the ingester."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from kiota.money import format_usdc
from kiota.settings import Settings
from kiota.sql import load_queries
from kiota.usdc import confirmations
from kiota.users import User


async def create_or_open(
    pool: asyncpg.Pool, settings: Settings, user: User, expected_micro: int | None
) -> tuple[int, dict[str, Any]]:
    """201 with a new intent, or 200 with the caller's open one (whatever the new body says)."""
    q = load_queries()
    intent_id = await pool.fetchval(
        q.insert_intent, uuid.uuid4(), user.id, user.deposit_address, expected_micro, float(settings.intent_ttl_seconds)
    )
    status = 201
    if intent_id is None:
        intent_id = await pool.fetchval(q.open_intent_for_user, user.id)
        status = 200
        if intent_id is None:  # it ended between the two statements: make a new one
            return await create_or_open(pool, settings, user, expected_micro)
    row = await pool.fetchrow(q.intent_of_user, intent_id, user.id, settings.base_chain_id)
    assert row is not None
    return status, {
        "intent_id": str(row["id"]),
        "status": row["status"],
        "deposit_address": row["deposit_address"],
        "chain_id": settings.base_chain_id,
        "token_address": settings.base_usdc_address,
        "confirmations_required": settings.deposit_confirmations_required,
        "expires_at": row["expires_at"].isoformat(),
    }


def intent_out(row: asyncpg.Record) -> dict[str, Any]:
    seen = row["block_number"] is not None and row["last_head"] is not None
    return {
        "intent_id": str(row["id"]),
        "status": row["status"],
        "deposit_address": row["deposit_address"],
        "expected_amount_usdc": format_usdc(row["expected_amount_usdc"]) if row["expected_amount_usdc"] else None,
        "received_amount_usdc": (
            format_usdc(row["received_amount_usdc"]) if row["received_amount_usdc"] is not None else None
        ),
        "tx_hash": row["tx_hash"],
        "confirmations": confirmations(row["last_head"], row["block_number"]) if seen else 0,
        "checks": row["checks"],
        "end_reason": row["end_reason"],
        "expires_at": row["expires_at"].isoformat(),
    }
