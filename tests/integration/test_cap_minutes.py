"""The payout caps' running totals per minute (sql/migrations/0023) give the same figure as summing the payouts.

`paid_out_since` reads whole minutes from `payout_cap_minutes` and the window's first, partial minute from
`payouts`. These tests change payouts in every way the lane, the nonce filler, a reorg and an operator do (signed,
settled, given up on, cancelled, reverted, re-signed in another minute, deleted, several in one statement) and
compare it, to the micro-unit, with the row-by-row sum it replaced, for windows whose edge falls inside a minute.
"""

from __future__ import annotations

import random

import asyncpg
import pytest

from kiota.reconcile import CAPS_CHECKED_HOURS, _cap_totals
from kiota.store.payouts import cap_totals_drift, paid_out_since
from tests.support import REPO

CHAIN = 8453
OTHER_CHAIN = 84532
WINDOWS = (3600.0, 86400.0, 600.5, 61.0, 59.9, 1.0)
ROW_BY_ROW = """
SELECT coalesce(sum(amount_micro), 0)::bigint FROM payouts
WHERE status IN ('signed', 'cancelling', 'confirmed') AND chain_id = $1
  AND signed_at > now() - make_interval(secs => $2)
"""
# Filler rows: no deposit, so the database's confirmation check on signing (0010) does not apply.
INSERT = """
INSERT INTO payouts (purpose, chain_id, token_address, from_address, to_address, amount_micro, nonce, status, signed_at)
SELECT 'nonce_filler', $1, '0xtoken', '0xtreasury', '0xuser', amount, nonce, status, now() - make_interval(secs => ago)
FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::float8[]) AS t (amount, nonce, status, ago)
"""


async def assert_same(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():  # one now() for both
        for chain in (CHAIN, OTHER_CHAIN):
            for window in WINDOWS:
                assert await paid_out_since(conn, chain, window) == await conn.fetchval(ROW_BY_ROW, chain, window)
    assert await cap_totals_drift(pool, CHAIN, 90_000) == await cap_totals_drift(pool, OTHER_CHAIN, 90_000) == []


async def test_the_running_totals_follow_every_change_of_the_payouts(pool: asyncpg.Pool) -> None:
    rng = random.Random(14)
    n = 3000
    amounts = [rng.randrange(1, 5_000_000_000) for _ in range(n)]
    statuses = [rng.choice(["created", "signed", "confirmed", "cancelling", "cancelled", "reverted"]) for _ in range(n)]
    agos = [rng.uniform(0, 90_000) for _ in range(n)]  # the last 25 hours, edges inside minutes
    for chain in (CHAIN, OTHER_CHAIN):
        nonces = list(range(chain * 10_000, chain * 10_000 + n))
        await pool.execute(INSERT, chain, amounts, nonces, statuses, agos)
    await assert_same(pool)

    # Settled and final: still counted, nothing written to the totals.
    before = await pool.fetch("SELECT * FROM payout_cap_minutes ORDER BY chain_id, minute")
    await pool.execute("UPDATE payouts SET status = 'confirmed', final_at = now() WHERE status = 'signed'")
    assert await pool.fetch("SELECT * FROM payout_cap_minutes ORDER BY chain_id, minute") == before
    await assert_same(pool)

    # Given up on, cancelled, reverted; a reorg puts some back to 'signed'.
    await pool.execute("UPDATE payouts SET status = 'cancelling' WHERE id % 7 = 0 AND status = 'confirmed'")
    await pool.execute("UPDATE payouts SET status = 'cancelled' WHERE id % 3 = 0 AND status = 'cancelling'")
    await pool.execute("UPDATE payouts SET status = 'reverted' WHERE id % 11 = 0 AND status = 'confirmed'")
    await pool.execute("UPDATE payouts SET status = 'signed' WHERE id % 5 = 0 AND status = 'confirmed'")
    await assert_same(pool)

    # Signed at another moment (into and out of the windows), amounts changed, rows created and signed later.
    await pool.execute("UPDATE payouts SET signed_at = signed_at + interval '37 seconds' WHERE id % 4 = 1")
    await pool.execute("UPDATE payouts SET amount_micro = amount_micro + 1 WHERE id % 9 = 2")
    await pool.execute("UPDATE payouts SET signed_at = NULL, status = 'created' WHERE id % 13 = 3")
    await pool.execute("UPDATE payouts SET signed_at = now(), status = 'signed' WHERE id % 26 = 3")
    await pool.execute("UPDATE payouts SET chain_id = $1 WHERE id % 17 = 4 AND chain_id = $2", OTHER_CHAIN, CHAIN)
    await assert_same(pool)

    # Deleted (no code path deletes payouts; the totals follow anyway).
    await pool.execute("DELETE FROM payouts WHERE id % 19 = 5")
    await assert_same(pool)


async def test_a_payout_signed_just_before_the_window_is_not_counted_and_one_just_inside_is(
    pool: asyncpg.Pool,
) -> None:
    """The window's first minute is partial: its payouts are read one by one, not from its minute's total."""
    async with pool.acquire() as conn, conn.transaction():  # now() is the transaction's start: exact offsets
        await conn.execute(INSERT, CHAIN, [7, 11, 13], [1, 2, 3], ["signed"] * 3, [3600.2, 3599.8, 1800.0])
        assert await paid_out_since(conn, CHAIN, 3600) == 11 + 13
        assert await paid_out_since(conn, CHAIN, 3600.5) == 7 + 11 + 13
        assert await paid_out_since(conn, CHAIN, 3599.7) == 13


async def test_payouts_cannot_be_truncated_from_under_the_totals(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="TRUNCATE is refused"):
        await pool.execute("TRUNCATE payouts CASCADE")


async def test_reconcile_finds_totals_that_writes_without_triggers_left_behind_and_the_runbook_rebuilds_them(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(INSERT, CHAIN, [5_000_000, 7_000_000], [1, 2], ["signed", "signed"], [120.0, 60_000.0])
    assert await _cap_totals(pool, CHAIN) is None
    async with pool.acquire() as conn:  # as a data-only restore or a logical replica writes: no triggers fire
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("UPDATE payouts SET amount_micro = 9000000 WHERE nonce = 1")
        await conn.execute(INSERT, OTHER_CHAIN, [3_000_000], [3], ["confirmed"], [CAPS_CHECKED_HOURS * 3600 + 120])
        await conn.execute("RESET session_replication_role")

    caps = await _cap_totals(pool, CHAIN)

    assert caps is not None  # the payout older than the checked window is not looked at
    assert (caps.ledger_micro, caps.chain_micro, caps.sides) == (9_000_000, 5_000_000, ("payouts", "running totals"))
    assert caps.address.startswith("1 minute(s) from ")
    assert await _cap_totals(pool, OTHER_CHAIN) is None  # its only change is older than the window the caps read
    # README, Runbook, "the caps' running totals": delete them, then the backfill at the end of migration 0023.
    migration = (REPO / "sql/migrations/0023_payout_cap_minutes.sql").read_text()
    backfill = migration[migration.rindex("INSERT INTO payout_cap_minutes") :]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM payout_cap_minutes")
        await conn.execute(backfill)
    assert await _cap_totals(pool, CHAIN) is None
    await assert_same(pool)
