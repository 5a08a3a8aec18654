"""The records are the tables: each record's fields are exactly its table's columns, so a column
added by a migration without its field (or a field without its column) fails here."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import asyncpg
import pytest

from kiota.records import (
    AdminAction,
    Attempt,
    Callback,
    Deposit,
    Guards,
    Intent,
    JobAttempt,
    JobRun,
    MoneyProposal,
    Operator,
    Payout,
    QueueDepthSample,
    QueueState,
    Record,
    ReviewItem,
    Transfer,
    User,
    WorkerHeartbeat,
)

TABLES: dict[str, type[Record]] = {
    "users": User,
    "deposits": Deposit,
    "mpesa_callbacks": Callback,
    "payouts": Payout,
    "payout_attempts": Attempt,
    "deposit_intents": Intent,
    "chain_transfers": Transfer,
    "jobs": JobRun,
    "job_attempts": JobAttempt,
    "payout_guards": Guards,
    "review_items": ReviewItem,
    "operators": Operator,
    "admin_actions": AdminAction,
    "queue_depth_samples": QueueDepthSample,
    "money_proposals": MoneyProposal,
    "queue_states": QueueState,
    "worker_heartbeats": WorkerHeartbeat,
}


@pytest.mark.parametrize(("table", "record"), TABLES.items())
async def test_a_record_has_its_tables_columns(pool: asyncpg.Pool, table: str, record: type[Record]) -> None:
    columns = await pool.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
        table,
    )
    assert [c["column_name"] for c in columns] == [f.name for f in dataclasses.fields(record)]  # type: ignore[arg-type]


def test_a_row_missing_a_column_is_refused() -> None:
    row = {f.name: None for f in dataclasses.fields(JobRun)}
    del row["worker_id"]
    with pytest.raises(KeyError, match="worker_id"):
        JobRun.from_row(row)


def test_numeric_money_becomes_int_and_a_fraction_is_refused() -> None:
    row: dict[str, object] = {f.name: None for f in dataclasses.fields(Attempt)}
    row.update(max_fee_per_gas=Decimal("1500000000"), max_priority_fee_per_gas=Decimal(1), nonce=3)
    attempt = Attempt.from_row(row)
    assert attempt.max_fee_per_gas == 1_500_000_000 and type(attempt.max_fee_per_gas) is int
    row["max_fee_per_gas"] = Decimal("1.5")
    with pytest.raises(ValueError, match="whole"):
        Attempt.from_row(row)
