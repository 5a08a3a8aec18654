"""Users and deposit addresses: first sight creates, indexes are unique and never reused."""

from __future__ import annotations

import asyncio

import asyncpg

from kiota.hdwallet import ExtendedPublicKey
from kiota.users import ensure_user
from tests.support import TEST_CHILDREN, TEST_XPUB

KEY = ExtendedPublicKey.parse(TEST_XPUB)


async def test_first_users_get_the_known_children(pool: asyncpg.Pool) -> None:
    users = [await ensure_user(pool, sub, KEY) for sub in ("alice", "bob", "carol")]
    assert [u.address_index for u in users] == [0, 1, 2]
    assert [u.deposit_address for u in users] == list(TEST_CHILDREN)
    again = await ensure_user(pool, "bob", KEY)
    assert again == users[1]


async def test_concurrent_first_sight_creates_one_user_and_never_reuses_an_index(pool: asyncpg.Pool) -> None:
    same = await asyncio.gather(*(ensure_user(pool, "racer", KEY) for _ in range(20)))
    assert len({(u.address_index, u.deposit_address) for u in same}) == 1
    others = await asyncio.gather(*(ensure_user(pool, f"u{i}", KEY) for i in range(30)))
    everyone = [same[0], *others]
    assert len({u.address_index for u in everyone}) == 31
    assert len({u.deposit_address for u in everyone}) == 31
    for user in everyone:
        assert user.deposit_address == KEY.child_address(user.address_index)
    assert await pool.fetchval("SELECT count(*) FROM users") == 31
    # Each user has exactly one USDC account.
    assert await pool.fetchval("SELECT count(*) FROM accounts WHERE kind = 'user'") == 31
    # A later user never gets an index that a lost race skipped.
    newest = await ensure_user(pool, "late", KEY)
    assert newest.address_index > max(u.address_index for u in everyone)
