"""The wallet balances cache under concurrent writers: each lane's settling transaction caches its users' balances,
and with several treasuries two lanes may settle payouts of the same users at once."""

from __future__ import annotations

import asyncio

import asyncpg

from kiota.store.chain import cache_wallet_balances
from tests.integration.test_payout_lane import wait_for


async def _blocked_on_a_lock(pool: asyncpg.Pool, pid: int) -> bool:
    wait = await pool.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
    return bool(wait == "Lock")


async def test_two_settlings_caching_the_same_users_in_opposite_orders_do_not_deadlock(pool: asyncpg.Pool) -> None:
    """B7 on four treasuries hit `deadlock detected` in the wallet balances' upsert: two lanes' transactions wrote
    the same users' rows in opposite orders. Each call now writes in user order, so a writer waits for the first
    row it shares instead of holding one the other needs."""
    await pool.execute(
        "INSERT INTO users (id, address_index, deposit_address) VALUES ('ann', 0, $1), ('ben', 1, $2)",
        "0x" + "a" * 40,
        "0x" + "b" * 40,
    )
    await pool.execute(
        "INSERT INTO wallet_balances (user_id, usdc_micro, block_number) VALUES ('ann', 0, 1), ('ben', 0, 1)"
    )
    async with pool.acquire() as first, pool.acquire() as second:
        first_tx, second_tx = first.transaction(), second.transaction()
        await first_tx.start()
        await second_tx.start()
        try:
            await cache_wallet_balances(first, ["ann"], [5], 10)
            other = asyncio.create_task(cache_wallet_balances(second, ["ben", "ann"], [7, 7], 11))
            pid = second.get_server_pid()
            await wait_for(lambda: _blocked_on_a_lock(pool, pid), 5)
            # In the order given, the other writer would hold ben's row now, and this would deadlock.
            await cache_wallet_balances(first, ["ben"], [5], 10)
            await first_tx.commit()
            await asyncio.wait_for(other, 10)
            await second_tx.commit()
        except BaseException:
            await first_tx.rollback()
            await second_tx.rollback()
            raise
    rows = await pool.fetch("SELECT user_id, usdc_micro, block_number FROM wallet_balances ORDER BY user_id")
    assert [tuple(r) for r in rows] == [("ann", 7, 11), ("ben", 7, 11)]
