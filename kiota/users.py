"""Users, created on first sight of a token's subject, each with a deposit address."""

from __future__ import annotations

from kiota.db import Pool
from kiota.hdwallet import ExtendedPublicKey
from kiota.ledger import USER_ASSETS
from kiota.records import User
from kiota.store import users as store


async def ensure_user(pool: Pool, user_id: str, xpub: ExtendedPublicKey) -> User:
    """The user with this id, created (with its address and accounts) if new.

    The index comes from a database sequence, so it is unique and never reused;
    a losing racer just skips one index.
    """
    user = await store.user_by_id(pool, user_id)
    if user is not None:
        return user
    async with pool.acquire() as conn, conn.transaction():
        index = await store.next_address_index(conn)
        user = await store.insert_user(conn, user_id, index, xpub.child_address(index))
        if user is None:
            earlier = await store.user_by_id(conn, user_id)
            assert earlier is not None
            return earlier
        await store.insert_user_accounts(conn, user_id, USER_ASSETS)
        return user
