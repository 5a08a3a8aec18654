"""The payout lane's rows in PostgreSQL: guards, payouts, their signed attempts, nonces, and the
deposit writes a payout makes (paid, or sent to review).

Owns the named queries of `sql/queries/payouts.sql`; also runs, by name, the few deposit and wallet
queries the lane shares with other areas (`deposit_by_id`, `deposit_status`,
`deposits_completed`, `upsert_wallet_balances`). Every function returns records or plain values.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from kiota.db import Connection, Executor
from kiota.records import Attempt, Deposit, Guards, Payout
from kiota.sql import load_queries
from kiota.treasury import SignedTx


# A single statement may run on a borrowed connection or straight on the pool.
@dataclass(frozen=True, slots=True)
class Payee:
    """A deposit to pay out, with where its USDC goes: its user's deposit address."""

    deposit: Deposit
    address: str


@dataclass(frozen=True, slots=True)
class TreasuryFunds:
    """A treasury's free USDC (its balance less its payouts in flight) as its lane last read it, and how long ago."""

    free_micro: int
    age_seconds: float


@dataclass(frozen=True, slots=True)
class TreasuryLane:
    """A treasury's lane as operators left it: paused (why) or running."""

    chain_id: int
    address: str
    paused: bool
    pause_reason: str | None
    in_flight: int = 0  # its payouts signed, being cancelled, or settled and not final (operators' view only)
    free_usdc: int | None = None  # its free USDC as its lane last read it (several treasuries; operators' view only)


def _payee(row: asyncpg.Record) -> Payee:
    return Payee(Deposit.from_row(row), row["deposit_address"])


def _seconds(value: Decimal | float | None) -> float:
    return 0.0 if value is None else float(value)


# Guards


async def guards(db: Executor) -> Guards:
    row = await db.fetchrow(load_queries().guards)
    assert row is not None  # the migration inserts the one row
    return Guards.from_row(row)


async def guards_for_share(conn: Connection) -> Guards:
    """The guards, locked until the caller's transaction ends: an operator's switch waits for it."""
    row = await conn.fetchrow(load_queries().guards_for_share)
    assert row is not None
    return Guards.from_row(row)


async def guards_for_update(conn: Connection) -> Guards:
    """The guards, locked for an operator's change until the caller's transaction ends."""
    row = await conn.fetchrow(load_queries().guards_for_update)
    assert row is not None
    return Guards.from_row(row)


async def set_kill_switch(db: Executor, on: bool, by: str) -> None:
    await db.execute(load_queries().set_kill_switch, on, by)


async def pause_lane(db: Executor, reason: str) -> None:
    await db.execute(load_queries().pause_lane, reason)


async def resume_lane(db: Executor, by: str) -> None:
    await db.execute(load_queries().resume_lane, by)


async def pause_treasury(db: Executor, chain_id: int, address: str, reason: str) -> None:
    """One treasury's lane paused (its own shortfall); the others go on."""
    await db.execute(load_queries().pause_treasury, chain_id, address, reason)


async def resume_treasuries(db: Executor, address: str | None, by: str) -> list[str]:
    """The treasury lanes resumed (`address`, or all when None); the addresses that were paused."""
    return [row["address"] for row in await db.fetch(load_queries().resume_treasuries, address, by)]


async def treasury_lanes(db: Executor, chain_id: int | None = None) -> list[TreasuryLane]:
    """On `chain_id`: the lanes of treasuries that were ever paused (a lane with no row runs). All chains when
    None: every treasury known here (it signed a payout, or was paused), for operators."""
    q = load_queries()
    rows = await (db.fetch(q.all_treasury_lanes) if chain_id is None else db.fetch(q.treasury_lanes, chain_id))
    return [
        TreasuryLane(
            r["chain_id"],
            r["address"],
            r["paused"],
            r["pause_reason"],
            int(r.get("in_flight") or 0),
            r.get("free_usdc_micro"),
        )
        for r in rows
    ]


async def treasury_addresses(db: Executor) -> list[str]:
    """Every treasury that ever signed a payout."""
    return [row["address"] for row in await db.fetch(load_queries().treasury_addresses)]


async def paid_out_by_treasury(db: Executor) -> dict[str, int]:
    """USDC micro-units each treasury paid out by its settled payouts, by lower-cased address."""
    rows = await db.fetch(load_queries().paid_out_by_treasury)
    return {row["from_address"].lower(): int(row["paid"]) for row in rows}


async def note_treasury_funds(db: Executor, chain_id: int, address: str, free_micro: int) -> None:
    """Remember a treasury's free USDC as its lane just read it (it steers `kiota.payouts.lanes.choose_lane`)."""
    await db.execute(load_queries().note_treasury_funds, chain_id, address, free_micro)


async def treasury_funds(db: Executor, chain_id: int) -> dict[str, TreasuryFunds]:
    """Each treasury's last-read free USDC, by lower-cased address (a treasury never read has none)."""
    rows = await db.fetch(load_queries().treasury_funds, chain_id)
    return {r["address"].lower(): TreasuryFunds(int(r["free_usdc_micro"]), float(r["age_seconds"])) for r in rows}


@dataclass(frozen=True, slots=True)
class DepositRoute:
    """What choosing a deposit's lane reads: the deposit's status, USDC (micro-units) and paying transaction, the
    treasury whose payout of it may still be mined (signed or being cancelled), if one is; and the chain's paused
    lanes (lower-cased addresses) and treasuries' funds (as `treasury_funds` gives them)."""

    status: str
    amount_micro: int
    tx_hash: str | None
    signed_by: str | None
    paused: frozenset[str]
    funds: dict[str, TreasuryFunds]


async def deposit_route(db: Executor, deposit_id: uuid.UUID, chain_id: int) -> DepositRoute | None:
    """None: no such deposit."""
    row = await db.fetchrow(load_queries().deposit_route, deposit_id, chain_id)
    if row is None:
        return None
    funds = {f["address"].lower(): TreasuryFunds(int(f["free"]), float(f["age"])) for f in row["funds"]}
    paused = frozenset(address.lower() for address in row["paused"])
    return DepositRoute(row["status"], int(row["amount_usdc"]), row["tx_hash"], row["signed_by"], paused, funds)


async def lock_caps(conn: Connection, key: int) -> None:
    """Until the caller's transaction ends, no other lane signs against the shared caps."""
    await conn.execute(load_queries().caps_lock, key)


async def set_limits(db: Executor, per_deposit: int | None, hourly: int | None, daily: int | None, by: str) -> None:
    """Each limit in USDC micro-units; None leaves it as it is."""
    await db.execute(load_queries().set_limits, per_deposit, hourly, daily, by)


async def paid_out_since(db: Executor, chain_id: int, seconds: float) -> int:
    """USDC signed for in the last `seconds` (for the hourly and daily caps)."""
    return int(await db.fetchval(load_queries().paid_out_since, chain_id, seconds))


@dataclass(frozen=True, slots=True)
class CapMinute:
    """A minute whose running total for the caps disagrees with the payouts it counts."""

    minute: datetime
    payouts_micro: int
    totals_micro: int


async def cap_totals_drift(db: Executor, chain_id: int, seconds: float) -> list[CapMinute]:
    """The chain's minutes of the last `seconds` whose running total (`payout_cap_minutes`) is not their payouts'
    sum, oldest first."""
    rows = await db.fetch(load_queries().cap_totals_drift, chain_id, seconds)
    return [CapMinute(r["minute"], int(r["payouts_micro"]), int(r["totals_micro"])) for r in rows]


async def in_flight_micro(db: Executor, chain_id: int, address: str) -> int:
    """The treasury's USDC signed for and not settled (or settled and sent again after a reorg)."""
    return int(await db.fetchval(load_queries().in_flight_micro, chain_id, address))


# Deposits, as the lane reads and writes them


async def payee(db: Executor, deposit_id: uuid.UUID) -> Payee | None:
    row = await db.fetchrow(load_queries().deposit_by_id, deposit_id)
    return None if row is None else _payee(row)


async def payees(db: Executor, deposit_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Payee]:
    """Many deposits' payees in one query, by deposit id (ids with no deposit are absent)."""
    rows = await db.fetch(load_queries().deposits_by_ids, list(deposit_ids))
    return {row["id"]: _payee(row) for row in rows}


async def deposit_status(db: Executor, deposit_id: uuid.UUID) -> str | None:
    status: str | None = await db.fetchval(load_queries().deposit_status, deposit_id)
    return status


async def deposit_payout_state(db: Executor, deposit_id: uuid.UUID) -> tuple[str | None, bool]:
    """The deposit's status, and whether its payout is signed and unsettled (in a lane owner's pipeline)."""
    row = await db.fetchrow(load_queries().deposit_payout_state, deposit_id)
    return (None, False) if row is None else (row["status"], bool(row["in_flight"]))


async def deposits_awaiting_payout(
    conn: Connection,
    other_than: uuid.UUID | None,
    max_micro: int,
    limit: int,
    lanes: int = 1,
    slots: Sequence[int] = (0,),
) -> list[Payee]:
    """Confirmed processing deposits with no signed payout, oldest first (`other_than` left out); of `lanes`
    lanes, only the deposits whose slot (kiota/payouts/lanes.py `slot_of`) is one of `slots`."""
    rows = await conn.fetch(load_queries().deposits_awaiting_payout, other_than, max_micro, limit, lanes, list(slots))
    return [_payee(row) for row in rows]


async def deposits_still_processing(conn: Connection, deposit_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Of these, the deposits still processing and confirmed, locked (FOR SHARE) in id order."""
    return {row["id"] for row in await conn.fetch(load_queries().deposits_still_processing, deposit_ids)}


async def deposits_completed(conn: Connection, deposit_ids: list[uuid.UUID], tx_hashes: list[str]) -> None:
    await conn.execute(load_queries().deposits_completed, deposit_ids, tx_hashes)


# Payouts


async def live_payouts(
    conn: Connection, payees: Sequence[Payee], chain_id: int, token_address: str, from_address: str
) -> list[Payout]:
    """Each deposit's live payout, created ('created') when it has none; in the payees' order."""
    if not payees:
        return []
    q = load_queries()
    ids = [p.deposit.id for p in payees]
    await conn.execute(
        q.insert_payouts,
        ids,
        [p.address for p in payees],
        [p.deposit.amount_usdc for p in payees],
        chain_id,
        token_address,
        from_address,
    )
    payouts = {row["deposit_id"]: Payout.from_row(row) for row in await conn.fetch(q.live_payouts_for_deposits, ids)}
    return [payouts[deposit_id] for deposit_id in ids]


async def payouts_still_created(conn: Connection, payout_ids: list[int], from_address: str) -> set[int]:
    """Of these, the payouts never signed, locked (FOR UPDATE) in id order and claimed for `from_address`."""
    return {row["id"] for row in await conn.fetch(load_queries().payouts_still_created, payout_ids, from_address)}


async def payouts_signed(conn: Connection, payout_ids: list[int], nonces: list[int]) -> None:
    await conn.execute(load_queries().payouts_signed, payout_ids, nonces)


async def unsettled_payouts(conn: Connection, chain_id: int, address: str, limit: int) -> list[Payout]:
    """Signed and not settled, in nonce order."""
    rows = await conn.fetch(load_queries().unsettled_payouts, chain_id, address, limit)
    return [Payout.from_row(row) for row in rows]


async def payouts_still_signed(conn: Connection, payout_ids: list[int]) -> set[int]:
    """Of these, the payouts still signed and unsettled."""
    return {row["id"] for row in await conn.fetch(load_queries().payouts_still_signed, payout_ids)}


async def payouts_confirmed(conn: Connection, payout_ids: list[int], tx_hashes: list[str], blocks: list[int]) -> None:
    await conn.execute(load_queries().payouts_confirmed, payout_ids, tx_hashes, blocks)


async def payout_reverted(conn: Connection, payout_id: int, tx_hash: str, block: int) -> None:
    await conn.execute(load_queries().payout_reverted, payout_id, tx_hash, block)


async def payout_abandon(conn: Connection, deposit_id: uuid.UUID, reason: str) -> None:
    """The deposit's payout given up on: cancelled if never signed, else 'cancelling' until its nonce is decided."""
    await conn.execute(load_queries().payout_abandon, deposit_id, reason)


async def payout_in_flight_of_deposit(conn: Connection, deposit_id: uuid.UUID) -> Payout | None:
    """The deposit's payout that may still be mined: signed, or given up on and not yet decided."""
    row = await conn.fetchrow(load_queries().payout_in_flight_of_deposit, deposit_id)
    return None if row is None else Payout.from_row(row)


# Payouts given up on ('cancelling') and their nonce filler


async def any_cancelling(db: Executor, chain_id: int, address: str) -> bool:
    return bool(await db.fetchval(load_queries().any_cancelling, chain_id, address))


async def cancelling_payouts(conn: Connection, chain_id: int, address: str) -> list[Payout]:
    rows = await conn.fetch(load_queries().cancelling_payouts, chain_id, address)
    return [Payout.from_row(row) for row in rows]


async def cancelling_for_seconds(conn: Connection, payout_id: int) -> float:
    """How long the payout has been given up on (0 when it is not)."""
    return _seconds(await conn.fetchval(load_queries().cancelling_for_seconds, payout_id))


async def payout_filled(conn: Connection, payout_id: int, tx_hash: str | None, block: int | None) -> None:
    """A given-up payout cancelled: its nonce was used by the filler (or, with no hash, by a stranger)."""
    await conn.execute(load_queries().payout_filled, payout_id, tx_hash, block)


# Settled payouts not final yet


async def any_unsettled_since(conn: Connection, chain_id: int, address: str, seconds: float) -> bool:
    """Whether a payout of this treasury was signed more than `seconds` ago and is still unsettled."""
    return bool(await conn.fetchval(load_queries().any_unsettled_since, chain_id, address, seconds))


async def any_unfinal_payout(db: Executor, chain_id: int, address: str) -> bool:
    return bool(await db.fetchval(load_queries().any_unfinal_payout, chain_id, address))


async def unfinal_payouts(conn: Connection, chain_id: int, address: str, limit: int) -> list[Payout]:
    rows = await conn.fetch(load_queries().unfinal_payouts, chain_id, address, limit)
    return [Payout.from_row(row) for row in rows]


async def payouts_rechecked(
    conn: Connection, payout_ids: list[int], tx_hashes: list[str], blocks: list[int], finals: list[bool]
) -> None:
    await conn.execute(load_queries().payouts_rechecked, payout_ids, tx_hashes, blocks, finals)


async def payout_out_of_chain(conn: Connection, payout_id: int, head: int) -> None:
    await conn.execute(load_queries().payout_out_of_chain, payout_id, head)


async def out_of_chain_for_seconds(conn: Connection, payout_id: int) -> float:
    """How long a settled payout has been in no block (0 when it is in one)."""
    return _seconds(await conn.fetchval(load_queries().payout_out_of_chain_for_seconds, payout_id))


async def payout_lost(conn: Connection, payout_id: int) -> None:
    await conn.execute(load_queries().payout_lost, payout_id)


async def payout_review_item(conn: Connection, payout_id: int, deposit_id: uuid.UUID | None, reason: str) -> None:
    await conn.execute(load_queries().insert_payout_review_item, payout_id, deposit_id, reason)


# Nonces and attempts


async def locked_next_nonce(conn: Connection, chain_id: int, address: str) -> int | None:
    """The treasury's stored next nonce, locked until the caller's transaction ends (None: none stored)."""
    value = await conn.fetchval(load_queries().lock_nonce, chain_id, address)
    return None if value is None else int(value)


async def store_next_nonce(conn: Connection, chain_id: int, address: str, next_nonce: int) -> None:
    await conn.execute(load_queries().store_nonce, chain_id, address, next_nonce)


async def store_attempts(conn: Connection, payout_ids: list[int], txs: list[SignedTx], kind: str) -> None:
    """Signed transactions stored before they are sent: `txs[i]` for payout `payout_ids[i]`."""
    await conn.execute(
        load_queries().insert_attempts,
        payout_ids,
        [tx.nonce for tx in txs],
        [tx.tx_hash for tx in txs],
        [tx.raw_tx for tx in txs],
        [tx.fees.max_fee_per_gas for tx in txs],
        [tx.fees.max_priority_fee_per_gas for tx in txs],
        [tx.gas_limit for tx in txs],
        [kind] * len(txs),
    )


async def attempt_broadcast(conn: Connection, tx_hash: str, head: int) -> None:
    await conn.execute(load_queries().attempt_broadcast, tx_hash, head)


async def attempts_broadcast(conn: Connection, tx_hashes: list[str], head: int) -> None:
    await conn.execute(load_queries().attempts_broadcast, tx_hashes, head)


async def attempts_of_payout(conn: Connection, payout_id: int) -> list[Attempt]:
    """Oldest first."""
    return [Attempt.from_row(row) for row in await conn.fetch(load_queries().attempts_of_payout, payout_id)]


async def attempts_of_payouts(conn: Connection, payout_ids: list[int]) -> list[Attempt]:
    """Oldest first."""
    return [Attempt.from_row(row) for row in await conn.fetch(load_queries().attempts_of_payouts, payout_ids)]
