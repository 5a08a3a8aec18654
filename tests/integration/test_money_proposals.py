"""The two-person rule for money (issue 13, item 4): crediting a user from a review item, confirming a deposit's
payment by hand, and writing suspense off are proposed by one operator and approved by another, once; every
step is recorded. Each test also tries to fool the rule."""

from __future__ import annotations

import asyncio
import functools
import uuid

import asyncpg
import pytest
from arq.connections import ArqRedis

from kiota import ledger, operators, review_actions
from kiota.hdwallet import ExtendedPublicKey
from kiota.operators import Admin
from kiota.queue import create_queue
from kiota.review_actions import ProposalRefused
from kiota.review_rules import Resolution
from kiota.store.ledger import balance, post_entry
from kiota.users import ensure_user
from tests.integration.test_ops_cli import SHELL_PASSWORD, kiota_ops, paid_deposit_in_review, shell_operators
from tests.support import TEST_XPUB

OLGA = Admin("olga", "operator")
PAT = Admin("pat", "operator")
VERA = Admin("vera", "viewer")
TX = "0x" + "ab" * 32


@pytest.fixture
async def queue(redis_url: str) -> asyncio.AsyncIterator[ArqRedis]:  # type: ignore[name-defined]
    redis = create_queue(redis_url)
    yield redis
    await redis.aclose(close_connection_pool=True)


async def reversed_usdc(
    pool: asyncpg.Pool, user: str = "amani", amount: int = 5_000_000, *, back: bool = True
) -> tuple[int, int, int]:
    """A credited USDC deposit a reorg reversed into suspense, then seen again: two review items for one
    transfer's money. (reversed item id, reappeared item id, transfer id). Not `back`: the transfer never came
    back (its log is missing from chain, as the ingester records it); the reappeared item is then -1."""
    await ensure_user(pool, user, ExtendedPublicKey.parse(TEST_XPUB))
    credit = ledger.usdc_received(8453, TX, 0, user, amount)
    async with pool.acquire() as conn, conn.transaction():
        transfer_id = await conn.fetchval(
            "INSERT INTO chain_transfers (chain_id, tx_hash, log_index, block_number, block_hash, token_address, "
            "from_address, to_address, amount_micro, user_id, kind, status, flags, credit_key) "
            "VALUES (8453, $1, 0, 100, $1, '0xusdc', '0xfrom', '0xto', $2, $3, 'deposit', 'reversed', "
            "'{unsolicited}', $4) RETURNING id",
            TX,
            amount,
            user,
            credit.key,
        )
        if not back:
            await conn.execute("UPDATE chain_transfers SET missing_since = now() WHERE id = $1", transfer_id)
        await post_entry(conn, credit)
        await post_entry(conn, ledger.usdc_reversed(credit.key, user, amount))
        ids = [
            await conn.fetchval(
                "INSERT INTO review_items (kind, dedupe_key, chain_transfer_id, amount_usdc_micro, reason) "
                "VALUES ($1, $2, $3, $4, 'a reorg removed its log') RETURNING id",
                kind,
                f"usdc:transfer:{transfer_id}:{kind}",
                transfer_id,
                amount,
            )
            for kind in ("usdc_reversed", "usdc_reappeared")[: 2 if back else 1]
        ]
    return ids[0], ids[1] if back else -1, transfer_id


async def kes_in_suspense(pool: asyncpg.Pool, amount: int = 1500, receipt: str = "QWE123RTY9") -> int:
    """A callback's shillings whose owner is unclear, booked to suspense:KES and listed: the item's id."""
    async with pool.acquire() as conn, conn.transaction():
        await post_entry(conn, ledger.mpesa_unmatched(f"receipt:{receipt}", amount))
        item_id: int = await conn.fetchval(
            "INSERT INTO review_items (kind, dedupe_key, amount_kes, reason) "
            "VALUES ('mpesa_callback', $1, $2, 'no deposit has this CheckoutRequestID') RETURNING id",
            f"receipt:{receipt}",
            amount,
        )
    return item_id


async def unconfirmed_deposit(pool: asyncpg.Pool) -> uuid.UUID:
    """A paid deposit in review whose success M-Pesa never confirmed (its review item open)."""
    deposit_id = await paid_deposit_in_review(pool)
    await pool.execute(
        "INSERT INTO review_items (kind, dedupe_key, deposit_id, amount_kes, reason) "
        "VALUES ('unconfirmed_success', 'unconfirmed:' || $1::uuid::text, $1::uuid, 1295, 'STK query said 1032')",
        deposit_id,
    )
    return deposit_id


async def actions(pool: asyncpg.Pool) -> list[str]:
    return [row["action"] for row in await pool.fetch("SELECT action FROM admin_actions ORDER BY id")]


async def test_crediting_from_suspense_takes_two_operators_and_balances(pool: asyncpg.Pool, queue: ArqRedis) -> None:
    reversed_item, reappeared_item, _ = await reversed_usdc(pool)
    proposal = await review_actions.propose(
        pool, OLGA, Resolution.CREDIT_USER, review_item_id=reversed_item, user_id="amani", note="log is back"
    )
    assert (proposal.status, proposal.amount, proposal.asset) == ("proposed", 5_000_000, "USDC")
    assert await balance(pool, ledger.user_account("amani", "USDC")) == 0  # nothing moved yet

    with pytest.raises(ProposalRefused, match="two-person rule"):
        await review_actions.approve(pool, queue, proposal.id, OLGA)
    with pytest.raises(ProposalRefused, match="viewer"):
        await review_actions.approve(pool, queue, proposal.id, VERA)
    with pytest.raises(ProposalRefused, match="open already"):  # one live proposal per item
        await review_actions.propose(pool, PAT, Resolution.WRITE_OFF, review_item_id=reversed_item)

    done = await review_actions.approve(pool, queue, proposal.id, PAT)
    assert (done.proposal.status, done.proposal.approved_by, done.job_id) == ("approved", "pat", None)
    assert await balance(pool, ledger.user_account("amani", "USDC")) == 5_000_000
    assert await balance(pool, ledger.SUSPENSE_USDC) == 0
    items = await pool.fetch("SELECT status, resolution FROM review_items ORDER BY id")
    assert [i["status"] for i in items] == ["resolved", "resolved"]  # both items of the transfer's money
    assert "approved by pat" in items[0]["resolution"]

    # Once: a second approval, a proposal on the resolved item, and one on its sibling are refused.
    with pytest.raises(ProposalRefused, match="approved already by pat"):
        await review_actions.approve(pool, queue, proposal.id, Admin("third", "operator"))
    for item in (reversed_item, reappeared_item):
        with pytest.raises(ProposalRefused, match="resolved already"):
            await review_actions.propose(pool, OLGA, Resolution.CREDIT_USER, review_item_id=item, user_id="amani")
    assert await balance(pool, ledger.user_account("amani", "USDC")) == 5_000_000
    assert await actions(pool) == ["propose_credit_user", "approve_credit_user"]
    recorded = await pool.fetchrow("SELECT * FROM admin_actions WHERE action = 'approve_credit_user'")
    assert (recorded["actor"], recorded["target_kind"], recorded["target_id"]) == (
        "pat",
        "review_item",
        str(reversed_item),
    )


async def test_writing_off_suspense_takes_two_operators_and_balances(pool: asyncpg.Pool, queue: ArqRedis) -> None:
    item = await kes_in_suspense(pool)
    with pytest.raises(ProposalRefused, match="not resolved by credit_user"):  # shillings: no journal credit
        await review_actions.propose(pool, OLGA, Resolution.CREDIT_USER, review_item_id=item, user_id="x")
    proposal = await review_actions.propose(pool, OLGA, Resolution.WRITE_OFF, review_item_id=item)
    done = await review_actions.approve(pool, queue, proposal.id, PAT, note="unclaimed for 90 days")
    assert done.proposal.entry_id is not None
    assert await balance(pool, ledger.SUSPENSE_KES) == 0
    assert await balance(pool, ledger.WRITTEN_OFF["KES"]) == 1500
    assert await pool.fetchval("SELECT status FROM review_items WHERE id = $1", item) == "resolved"


async def test_the_database_refuses_the_proposer_as_approver(pool: asyncpg.Pool) -> None:
    item = await kes_in_suspense(pool)
    proposal = await review_actions.propose(pool, OLGA, Resolution.WRITE_OFF, review_item_id=item)
    with pytest.raises(asyncpg.CheckViolationError, match="money_proposals_two_people"):
        await pool.execute(
            "UPDATE money_proposals SET status = 'approved', approved_by = proposed_by, closed_by = proposed_by, "
            "closed_at = now() WHERE id = $1",
            proposal.id,
        )
    with pytest.raises(asyncpg.UniqueViolationError):  # a second live proposal for one item, written by hand
        await pool.execute(
            "INSERT INTO money_proposals (action, review_item_id, asset, amount, proposed_by) "
            "VALUES ('write_off', $1, 'KES', 1500, 'pat')",
            item,
        )


async def test_a_viewer_cannot_propose_and_a_proposal_can_be_rejected_or_withdrawn(
    pool: asyncpg.Pool, queue: ArqRedis
) -> None:
    item = await kes_in_suspense(pool)
    with pytest.raises(ProposalRefused, match="viewer"):
        await review_actions.propose(pool, VERA, Resolution.WRITE_OFF, review_item_id=item)
    first = await review_actions.propose(pool, OLGA, Resolution.WRITE_OFF, review_item_id=item)
    assert (await review_actions.reject(pool, first.id, PAT, "wrong item")).status == "rejected"
    with pytest.raises(ProposalRefused, match="rejected already"):
        await review_actions.approve(pool, queue, first.id, PAT)
    second = await review_actions.propose(pool, OLGA, Resolution.WRITE_OFF, review_item_id=item)
    assert (await review_actions.reject(pool, second.id, OLGA)).status == "withdrawn"
    assert await balance(pool, ledger.SUSPENSE_KES) == 1500  # nothing moved
    assert await pool.fetchval("SELECT status FROM review_items WHERE id = $1", item) == "open"
    assert await actions(pool) == ["propose_write_off", "reject_write_off", "propose_write_off", "withdraw_write_off"]


async def test_an_approval_for_other_money_than_proposed_is_refused(pool: asyncpg.Pool, queue: ArqRedis) -> None:
    """The item's amount is what was proposed; a proposal whose amount no longer matches (changed by hand, or
    the item listed again for another amount) moves nothing."""
    item = await kes_in_suspense(pool)
    proposal = await review_actions.propose(pool, OLGA, Resolution.WRITE_OFF, review_item_id=item)
    await pool.execute("UPDATE money_proposals SET amount = 150000 WHERE id = $1", proposal.id)
    with pytest.raises(ProposalRefused, match="not what was proposed"):
        await review_actions.approve(pool, queue, proposal.id, PAT)
    assert await balance(pool, ledger.SUSPENSE_KES) == 1500
    with pytest.raises(ProposalRefused, match="no user"):
        await review_actions.propose(
            pool, OLGA, Resolution.CREDIT_USER, review_item_id=(await reversed_usdc(pool))[0], user_id="ghost"
        )


async def test_two_approvals_at_once_move_the_money_once(pool: asyncpg.Pool, queue: ArqRedis) -> None:
    item, _, _ = await reversed_usdc(pool)
    proposal = await review_actions.propose(pool, OLGA, Resolution.CREDIT_USER, review_item_id=item, user_id="amani")
    outcomes = await asyncio.gather(
        *(review_actions.approve(pool, queue, proposal.id, Admin(name, "operator")) for name in ("pat", "quinn")),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["Approved", "ProposalRefused"]
    assert await balance(pool, ledger.user_account("amani", "USDC")) == 5_000_000
    assert await pool.fetchval("SELECT count(*) FROM journal_entries WHERE kind = 'review_credit'") == 1


async def test_confirming_a_deposit_in_review_takes_two_operators(pool: asyncpg.Pool, queue: ArqRedis) -> None:
    deposit_id = await unconfirmed_deposit(pool)
    with pytest.raises(ProposalRefused, match="no deposit"):
        await review_actions.propose(pool, OLGA, Resolution.CONFIRM_DEPOSIT, deposit_id=uuid.uuid4())
    proposal = await review_actions.propose(
        pool, OLGA, Resolution.CONFIRM_DEPOSIT, deposit_id=deposit_id, note="statement line QWE123"
    )
    assert (proposal.amount, proposal.asset) == (1295, "KES")
    assert await pool.fetchval("SELECT confirmed_at FROM deposits WHERE id = $1", deposit_id) is None
    done = await review_actions.approve(pool, queue, proposal.id, PAT)
    assert done.job_id is not None and done.enqueued
    row = await pool.fetchrow("SELECT * FROM deposits WHERE id = $1", deposit_id)
    assert (row["status"], row["confirmed_by"]) == ("processing", "operator:olga")
    assert "approved by pat" in row["confirm_answer"]
    assert await pool.fetchval("SELECT status FROM review_items WHERE deposit_id = $1", deposit_id) == "resolved"
    with pytest.raises(ProposalRefused, match="confirmed already"):
        await review_actions.propose(pool, PAT, Resolution.CONFIRM_DEPOSIT, deposit_id=deposit_id)
    recorded = await pool.fetch("SELECT actor, action, target_id FROM admin_actions ORDER BY id")
    assert [(r["actor"], r["action"], r["target_id"]) for r in recorded] == [
        ("olga", "propose_confirm_deposit", str(deposit_id)),
        ("pat", "approve_confirm_deposit", str(deposit_id)),
    ]


async def test_the_cli_proposes_and_another_operator_approves(
    pool: asyncpg.Pool, database_url: str, redis_url: str
) -> None:
    deposit_id = await unconfirmed_deposit(pool)
    await shell_operators(pool, "olga", "pat", "quinn")
    await operators.add_operator(pool, "vic", "viewer", SHELL_PASSWORD)
    money = functools.partial(kiota_ops, database_url, redis_url, password=SHELL_PASSWORD)
    # Moving money at the shell takes an operator account's password: a free-text name would let one person
    # propose as one name and approve as another.
    for who, password in (("olga", "wrong password"), ("nobody", SHELL_PASSWORD), ("vic", SHELL_PASSWORD)):
        code, out = await kiota_ops(database_url, redis_url, "confirm", str(deposit_id), "--by", who, password=password)
        assert code == 2 and "an operator account" in out, (who, out)
    assert await pool.fetchval("SELECT count(*) FROM money_proposals") == 0
    code, out = await money("confirm", str(deposit_id), "--by", "olga", "--note", "seen")
    assert code == 0 and "proposed confirm_deposit as proposal" in out, out
    proposal_id = await pool.fetchval("SELECT id FROM money_proposals")
    code, out = await kiota_ops(database_url, redis_url, "proposals")
    assert code == 1 and f"id={proposal_id}" in out and "proposed_by=olga" in out  # waiting for a person
    code, out = await money("approve", str(proposal_id), "--by", "olga")
    assert code == 2 and "two-person rule" in out
    code, out = await kiota_ops(database_url, redis_url, "approve", str(proposal_id), "--by", "pat", password="guess")
    assert code == 2 and "an operator account" in out
    code, out = await money("approve", str(proposal_id), "--by", "pat")
    assert code == 0 and f"completing {deposit_id}" in out, out
    code, out = await money("approve", str(proposal_id), "--by", "quinn")
    assert code == 2 and "approved already" in out

    item = await kes_in_suspense(pool)
    code, out = await money("write-off", str(item), "--by", "olga")
    assert code == 0, out
    second = await pool.fetchval("SELECT max(id) FROM money_proposals")
    code, out = await money("reject", str(second), "--by", "pat", "--note", "wait")
    assert code == 0 and "rejected by pat" in out


async def test_a_confirmation_overtaken_by_events_moves_nothing(pool: asyncpg.Pool, queue: ArqRedis) -> None:
    """Proposed while the deposit waited, approved after the STK query confirmed it (or it was paid out): the
    approval is refused, the proposal stays for a person to reject, and the deposit is left as it is."""
    deposit_id = await unconfirmed_deposit(pool)
    proposal = await review_actions.propose(pool, OLGA, Resolution.CONFIRM_DEPOSIT, deposit_id=deposit_id)
    await pool.execute("UPDATE deposits SET confirmed_at = now(), confirmed_by = 'stk_query' WHERE id = $1", deposit_id)
    with pytest.raises(ProposalRefused, match="confirmed already"):
        await review_actions.approve(pool, queue, proposal.id, PAT)
    row = await pool.fetchrow("SELECT status, confirmed_by FROM deposits WHERE id = $1", deposit_id)
    assert (row["status"], row["confirmed_by"]) == ("needs_review", "stk_query")
    assert await pool.fetchval("SELECT status FROM money_proposals WHERE id = $1", proposal.id) == "proposed"
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0
    assert (await review_actions.reject(pool, proposal.id, PAT, "overtaken")).status == "rejected"
