"""The ingester asks the database which of a round's recipients are deposit addresses (issue 14, item 3).

It no longer loads every user's address: these tests try to fool the lookup (a stranger, an address one
hex digit away from a user's), check that a user created between two rounds is matched by the next one,
and that a round's RPC calls are the same at 10 and at 1,000 users.
"""

from __future__ import annotations

import random

import pytest

from kiota.chain_rpc import ChainReader
from kiota.dev.chain import BASE_USDC_ADDRESS
from kiota.ingester import RoundReport, ScanConfig, scan_round
from kiota.ledger import user_account
from kiota.store.ledger import balance
from tests.conftest import MpesaSystem
from tests.integration.test_usdc_deposits import mint_usdc_unmined, rpc
from tests.support import bearer

pytestmark = pytest.mark.no_worker  # the tests run the rounds themselves

AMOUNT = 1_500_000
INSERT_USERS = """
INSERT INTO users (id, address_index, deposit_address)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[])
"""
INSERT_ACCOUNTS = """
INSERT INTO accounts (code, kind, user_id, asset, normal_side)
SELECT 'user:' || id || ':USDC', 'user', id, 'USDC', 'C' FROM unnest($1::text[]) AS id
"""


def config(system: MpesaSystem) -> ScanConfig:
    return ScanConfig(8453, BASE_USDC_ADDRESS, system.treasury_address, 2, 120)


async def address_of(system: MpesaSystem, user: str) -> str:
    response = await system.http.get("/api/v1/portfolio", headers=bearer(user))
    return str(response.json()["deposit_address"])


async def mint_in_one_block(system: MpesaSystem, recipients: list[str]) -> None:
    """A mint to each recipient, all in one block, then enough blocks to confirm them."""
    await rpc(system, "evm_setAutomine", False)
    try:
        for to in recipients:
            await mint_usdc_unmined(system, to, AMOUNT)
        await rpc(system, "anvil_mine", 1)
    finally:
        await rpc(system, "evm_setAutomine", True)
    await rpc(system, "anvil_mine", 3)


async def one_round(system: MpesaSystem, reader: ChainReader) -> tuple[RoundReport, int]:
    """A round, and every JSON-RPC call it made (the balance cache's included)."""
    before = reader.calls
    report = await scan_round(system.pool, reader, config(system))
    assert report is not None
    return report, reader.calls - before


async def bulk_users(system: MpesaSystem, prefix: str, count: int, first_index: int) -> list[str]:
    """`count` users with their USDC accounts, in two statements; their (random) deposit addresses."""
    rng = random.Random(f"{prefix}{count}")
    ids = [f"{prefix}{i}" for i in range(count)]
    addresses = ["0x" + rng.randbytes(20).hex() for _ in ids]
    async with system.pool.acquire() as conn, conn.transaction():
        await conn.execute(INSERT_USERS, ids, list(range(first_index, first_index + count)), addresses)
        await conn.execute(INSERT_ACCOUNTS, ids)
    return addresses


def near_misses(address: str) -> list[str]:
    """The same address but for its last hex digit, or its first."""

    def other(digit: str) -> str:
        return "0" if digit.lower() != "0" else "1"

    return [address[:-1] + other(address[-1]), address[:2] + other(address[2]) + address[3:]]


async def test_a_stranger_and_a_near_miss_address_are_ignored(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    ana = await address_of(system, "ana")
    stranger = "0x" + random.Random(14).randbytes(20).hex()
    reader = ChainReader(system.settings.base_rpc_url)
    try:
        await mint_in_one_block(system, [stranger, *near_misses(ana), ana])
        report, _ = await one_round(system, reader)
    finally:
        await reader.aclose()
    assert (report.matched, report.credited) == (1, 1)
    rows = await system.pool.fetch("SELECT user_id, to_address FROM chain_transfers")
    assert [tuple(r) for r in rows] == [("ana", ana.lower())]
    assert await balance(system.pool, user_account("ana", "USDC")) == AMOUNT


async def test_a_user_created_after_a_round_is_matched_by_the_next_one(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    reader = ChainReader(system.settings.base_rpc_url)
    try:
        await mint_in_one_block(system, [await address_of(system, "ben")])
        first, _ = await one_round(system, reader)
        cat = await address_of(system, "cat")  # a new user, after the first round
        await mint_in_one_block(system, [cat])
        second, _ = await one_round(system, reader)
    finally:
        await reader.aclose()
    assert (first.matched, first.credited) == (1, 1)
    assert second.credited == 1
    row = await system.pool.fetchrow("SELECT user_id, status FROM chain_transfers WHERE to_address = $1", cat.lower())
    assert row is not None and tuple(row) == ("cat", "credited")
    assert await balance(system.pool, user_account("cat", "USDC")) == AMOUNT


async def test_a_rounds_rpc_calls_are_the_same_at_10_and_1000_users(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    few = await bulk_users(system, "few", 10, first_index=10_000)
    reader = ChainReader(system.settings.base_rpc_url)
    try:
        await mint_in_one_block(system, few + few)  # 20 deposits to 10 users
        at_10, calls_at_10 = await one_round(system, reader)
        many = await bulk_users(system, "many", 990, first_index=20_000)
        await mint_in_one_block(system, many[::49])  # 21 deposits to 21 of the 1,000
        at_1000, calls_at_1000 = await one_round(system, reader)
    finally:
        await reader.aclose()
    assert (at_10.matched, at_10.credited) == (20, 20)
    assert at_1000.credited == 21
    # eth_blockNumber, one eth_getLogs, and one batch of balanceOf for the balance cache of the credited users
    assert at_1000.rpc_calls == calls_at_1000 == at_10.rpc_calls == calls_at_10 == 3
