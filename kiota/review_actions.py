"""Resolving review items with money, under the two-person rule: one operator proposes, another approves.

Crediting a user (from suspense, or USDC never booked), confirming a deposit's M-Pesa payment by hand (which
then pays it out), and writing suspense off each move money on one person's word, so none runs on one
person's word: `propose` records what is to be done, for how much, and `approve` by a second operator does
it, once, in the approval's own transaction (the deposit's completion job is enqueued after the commit).
A proposal may be rejected by another operator or withdrawn by its proposer. PostgreSQL holds the rule as
well (sql/migrations/0016): an approval by the proposer, a second live proposal and a second approval for one
item or deposit are refused there, and the resolving journal entry's key is the money's own. Every step is
recorded in admin_actions, on the deposit or review item it concerns.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog
from arq.connections import ArqRedis

from kiota import ledger
from kiota.db import Connection, Pool
from kiota.errors import KiotaError
from kiota.job_history import enqueue
from kiota.job_names import JobName
from kiota.operators import Admin, may_move_money, record_action
from kiota.ops import confirm_in
from kiota.records import MoneyProposal, ReviewItem
from kiota.review_rules import Held, Resolution, held_by, money_key, resolutions, usdc_here
from kiota.store import ops as ops_store
from kiota.store import proposals as store
from kiota.store import users as users_store
from kiota.store.ledger import post_entry

log = structlog.get_logger(__name__)


class ProposalRefused(KiotaError):
    """A money action was refused: the two-person rule, a proposal no longer live, or money that does not match."""


@dataclass(frozen=True, slots=True)
class Approved:
    """An approved proposal; `job_id` names the deposit's completion job a confirmation enqueued."""

    proposal: MoneyProposal
    job_id: str | None = None
    enqueued: bool = False


def _target(proposal: MoneyProposal) -> tuple[str, str]:
    """Where the proposal's record is shown: its deposit's page, else its review item's."""
    if proposal.deposit_id is not None:
        return "deposit", str(proposal.deposit_id)
    return "review_item", str(proposal.review_item_id)


def _values(proposal: MoneyProposal) -> dict[str, object]:
    return {
        "proposal_id": proposal.id,
        "action": proposal.action,
        "status": proposal.status,
        "review_item_id": proposal.review_item_id,
        "user_id": proposal.user_id,
        "asset": proposal.asset,
        "amount": proposal.amount,
        "proposed_by": proposal.proposed_by,
        "approved_by": proposal.approved_by,
        "closed_by": proposal.closed_by,
        "note": proposal.note,
        "close_note": proposal.close_note,
    }


def same_person(name: str, other: str) -> bool:
    """Whether two recorded names are one person's: an account, the bootstrap ADMIN_USERNAME and a shell's
    `--by` may spell one name in another case or with spaces, and the two-person rule must not count twice."""
    return name.strip().casefold() == other.strip().casefold()


def _must_act(admin: Admin) -> None:
    if not admin.may_act:
        raise ProposalRefused(f"{admin.name} is a viewer: only an operator proposes or decides a money action")


async def _must_move_money(conn: Connection, admin: Admin) -> None:
    """Proposing or approving needs an operator who is one person: not the bootstrap login once accounts exist."""
    _must_act(admin)
    if not await may_move_money(conn, admin):
        raise ProposalRefused(
            f"{admin.name} is the bootstrap login (ADMIN_USERNAME): once operator accounts exist, money actions "
            "are proposed and approved from named accounts only, so that one person cannot be two"
        )


async def propose(
    pool: Pool,
    admin: Admin,
    action: Resolution,
    *,
    review_item_id: int | None = None,
    deposit_id: uuid.UUID | None = None,
    user_id: str | None = None,
    note: str = "",
) -> MoneyProposal:
    """Record a money action for a second operator to approve; nothing moves yet."""
    async with pool.acquire() as conn, conn.transaction():
        await _must_move_money(conn, admin)
        what = await _what(conn, action, review_item_id, deposit_id, user_id)
        if action is Resolution.CONFIRM_DEPOSIT:
            review_item_id = None  # the deposit is what is confirmed; its review item is resolved with it
        proposal = await store.insert_proposal(
            conn,
            action.value,
            review_item_id,
            what.deposit_id,
            what.user_id,
            what.asset,
            what.amount,
            note[:1000],
            admin.name,
        )
        if proposal is None:
            raise ProposalRefused("a proposal for this is open already, or one was approved: see the review page")
        kind, target = _target(proposal)
        await record_action(conn, admin, f"propose_{action.value}", kind, target, after=_values(proposal))
    log.warning("money action proposed", proposal_id=proposal.id, action=action.value, by=admin.name)
    return proposal


async def approve(pool: Pool, queue: ArqRedis, proposal_id: int, admin: Admin, note: str = "") -> Approved:
    """A second operator approves: the action runs now, in this transaction, once."""
    job_id: str | None = None
    async with pool.acquire() as conn, conn.transaction():
        await _must_move_money(conn, admin)
        proposal = await _live(conn, proposal_id)
        if same_person(proposal.proposed_by, admin.name):
            raise ProposalRefused(
                f"the two-person rule: {admin.name} proposed this, so another operator must approve it"
            )
        entry_id: int | None = None
        if proposal.action == Resolution.CONFIRM_DEPOSIT:
            assert proposal.deposit_id is not None
            if await _confirmable_amount(conn, proposal.deposit_id) != proposal.amount:
                raise ProposalRefused("the deposit's amount received is not the one proposed: propose again")
            said = f"{proposal.note} (proposed by {proposal.proposed_by}, approved by {admin.name})".strip()
            job_id = await confirm_in(conn, proposal.deposit_id, proposal.proposed_by, said)
        else:
            entry_id = await _move_money(conn, proposal, admin)
        closed = await store.close_proposal(conn, proposal.id, "approved", admin.name, note[:1000], entry_id)
        assert closed is not None  # locked and live above
        kind, target = _target(closed)
        await record_action(
            conn, admin, f"approve_{closed.action}", kind, target, before=_values(proposal), after=_values(closed)
        )
    enqueued = False
    if job_id is not None:
        enqueued = await enqueue(queue, JobName.COMPLETE_MPESA_DEPOSIT, job_id, str(proposal.deposit_id))
    log.warning("money action approved", proposal_id=proposal_id, action=closed.action, by=admin.name)
    return Approved(closed, job_id, enqueued)


async def reject(pool: Pool, proposal_id: int, admin: Admin, note: str = "") -> MoneyProposal:
    """Another operator says no (or the proposer withdraws it): nothing moves, and the item stays open."""
    _must_act(admin)
    async with pool.acquire() as conn, conn.transaction():
        proposal = await _live(conn, proposal_id)
        status = "withdrawn" if same_person(proposal.proposed_by, admin.name) else "rejected"
        closed = await store.close_proposal(conn, proposal.id, status, admin.name, note[:1000], None)
        assert closed is not None
        kind, target = _target(closed)
        verb = "withdraw" if status == "withdrawn" else "reject"
        await record_action(
            conn, admin, f"{verb}_{closed.action}", kind, target, before=_values(proposal), after=_values(closed)
        )
    return closed


@dataclass(frozen=True, slots=True)
class _What:
    """What a proposal moves: for a deposit's confirmation its shillings received, else the item's money."""

    deposit_id: uuid.UUID | None
    user_id: str | None
    asset: str
    amount: int


async def _what(
    conn: Connection,
    action: Resolution,
    review_item_id: int | None,
    deposit_id: uuid.UUID | None,
    user_id: str | None,
) -> _What:
    if action is Resolution.CONFIRM_DEPOSIT:
        if deposit_id is None:
            raise ProposalRefused("confirming names a deposit")
        return _What(deposit_id, None, "KES", await _confirmable_amount(conn, deposit_id))
    if action not in (Resolution.CREDIT_USER, Resolution.WRITE_OFF):
        raise ProposalRefused(f"{action} is not a money action: it needs no second operator")
    if review_item_id is None:
        raise ProposalRefused(f"{action} names a review item")
    _, held = await _item_holding_money(conn, review_item_id, action)
    if action is Resolution.WRITE_OFF:
        return _What(None, None, held.asset, held.amount)
    if not user_id or await users_store.user_by_id(conn, user_id) is None:
        raise ProposalRefused(f"no user {user_id!r} to credit")
    return _What(None, user_id, held.asset, held.amount)


async def _live(conn: Connection, proposal_id: int) -> MoneyProposal:
    proposal = await store.proposal_for_update(conn, proposal_id)
    if proposal is None:
        raise ProposalRefused(f"no proposal {proposal_id}")
    if proposal.status != "proposed":
        by = f" by {proposal.closed_by}" if proposal.closed_by else ""
        raise ProposalRefused(f"proposal {proposal_id} is {proposal.status} already{by}")
    return proposal


async def _confirmable_amount(conn: Connection, deposit_id: uuid.UUID) -> int:
    """The shillings received for a deposit whose success may be confirmed by hand (locked), or refused."""
    deposit = await ops_store.deposit_for_retry(conn, deposit_id)
    if deposit is None:
        raise ProposalRefused(f"no deposit {deposit_id}")
    if deposit.confirmed_at is not None:
        raise ProposalRefused("the deposit is confirmed already; `kiota ops retry` runs its completion again")
    eligible = deposit.status in ("processing", "needs_review") and deposit.tx_hash is None
    if not eligible or deposit.received_kes is None:
        raise ProposalRefused(
            f"the deposit is {deposit.status}: only a success received for it (processing or in review) "
            "and never paid out can be confirmed"
        )
    return deposit.received_kes


async def _item_holding_money(conn: Connection, item_id: int, action: Resolution) -> tuple[ReviewItem, Held]:
    item = await store.review_item_for_update(conn, item_id)
    if item is None:
        raise ProposalRefused(f"no review item {item_id}")
    if item.status != "open":
        raise ProposalRefused(f"review item {item_id} is {item.status} already")
    held = held_by(item)
    on_chain = await _usdc_on_chain(conn, item)
    if held is None or action not in resolutions(item, None, False, usdc_on_chain=on_chain):
        if held is not None and held.asset == "USDC" and not on_chain:
            raise ProposalRefused(
                f"review item {item_id} ({item.kind}): its USDC is not on chain now (its transfer is gone, or "
                "not confirmed again since a reorg), so it cannot be credited"
            )
        raise ProposalRefused(f"review item {item_id} ({item.kind}) is not resolved by {action}")
    return item, held


async def _usdc_on_chain(conn: Connection, item: ReviewItem) -> bool:
    """Whether the USDC the item is about is at the deposit address now (`review_rules.usdc_here`)."""
    if item.chain_transfer_id is None:
        return False
    transfer = await store.held_transfer(conn, item.chain_transfer_id)
    return transfer is not None and usdc_here(item, *transfer)


async def _move_money(conn: Connection, proposal: MoneyProposal, admin: Admin) -> int:
    """Book the credit or the write-off the proposal names, and resolve its item; the entry's id. What is on
    chain is read again now: a credit of USDC gone since the proposal is refused, and a write-off takes USDC
    that is gone out of custody (kiota/ledger.py `review_write_off`)."""
    action = Resolution(proposal.action)
    assert proposal.review_item_id is not None
    item, held = await _item_holding_money(conn, proposal.review_item_id, action)
    if (held.asset, held.amount) != (proposal.asset, proposal.amount):
        raise ProposalRefused("the item's money is not what was proposed: reject this and propose again")
    key = money_key(item)
    if action is Resolution.CREDIT_USER:
        assert proposal.user_id is not None
        entry = ledger.review_credit(key, held.account, proposal.user_id, held.amount)
        said = f"credited to user {proposal.user_id}"
    else:
        gone = held.asset == "USDC" and not await _usdc_on_chain(conn, item)
        entry = ledger.review_write_off(key, held.account, held.asset, held.amount, gone=gone)
        said = "written off (not on chain: out of custody)" if gone else "written off"
    entry_id, created = await post_entry(conn, entry)
    if not created:
        raise ProposalRefused(f"the money of review item {item.id} was resolved already (entry {entry_id})")
    resolution = f"{said}: proposed by {proposal.proposed_by}, approved by {admin.name}"
    if not await store.resolve_review_item(conn, item.id, resolution, item.chain_transfer_id):
        raise ProposalRefused(f"review item {item.id} was resolved meanwhile")
    return entry_id
