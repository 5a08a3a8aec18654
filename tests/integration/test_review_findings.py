"""Adversarial review of issue 13's money paths: each test proves a bug found in review, now fixed.

- The two-person rule compared operators' names byte for byte: "olga" proposed, "Olga" (a second account, the
  bootstrap ADMIN_USERNAME spelled otherwise, or `kiota ops approve --by Olga`) approved her own proposal.
- Cancelling a pending deposit's STK-query job sent the unpaid deposit to review; the customer's payment that
  arrived afterwards was booked to suspense, whose only resolution is a write-off: the user was never paid.
  A query job is no longer cancelled.
- A paused queue piled up one cron job per tick, all run at the resume: a paused queue's ticks are now skipped.
- The jobs API and the job list showed job errors and log lines unmasked.
- A reversed USDC transfer was offered "credit to user" though its log never came back (money that never
  arrived), and a transfer in review (too large, or its credit failed) stayed creditable after a reorg took
  its block away: the scanner re-checked only `seen` transfers. Such USDC is now credited only while its log is
  on chain, confirmed; the service refuses, and the page does not offer it.
- Writing off reversed USDC that is gone moved it suspense -> written_off and left custody claiming USDC the
  chain does not have: it now leaves custody, and `kiota reconcile` agrees with the chain after it.
- The bootstrap login (ADMIN_USERNAME) was a second identity next to a person's own account: one person could
  propose as one and approve as the other. Once operator accounts exist it moves no money.
- The database's two-person CHECK compared names byte for byte, and "ALICE" could be made next to "alice".
- A proposal's USDC amount was shown in micro-units; `?notice=` showed any text a link carried on our pages.
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis

from kiota import job_actions, ledger, money_views, operators, queues, review_actions
from kiota.callbacks import ingest_callback
from kiota.chain_rpc import ChainReader
from kiota.dev.chain import BASE_USDC_ADDRESS, AnvilNode, Web3Client
from kiota.job_history import JobHistory, record_job
from kiota.job_names import JobName, Queue, arq_queue_name
from kiota.migrate import discover, migrate
from kiota.operators import Admin
from kiota.queue import create_queue
from kiota.reconcile import reconcile
from kiota.review_actions import ProposalRefused
from kiota.review_rules import Resolution
from kiota.settings import Settings
from kiota.store import chain as chain_store
from kiota.store import proposals as proposal_store
from kiota.store.ledger import balance
from kiota.usdc import MAX_CREDIT_MICRO
from tests.conftest import MpesaSystem
from tests.integration.test_callback_groups import paid, pending_deposits
from tests.integration.test_dashboard_money import PASSWORD, post
from tests.integration.test_dashboard_queues import notice
from tests.integration.test_hostile_chain import address_of, call, mint_unmined, one_round, transfer_row
from tests.integration.test_money_proposals import OLGA, kes_in_suspense, reversed_usdc
from tests.integration.test_operators import kiota_admin
from tests.support import ADMIN_AUTH

PAT = Admin("pat", "operator")
PAT_AUTH = ("pat", PASSWORD)


@pytest.fixture
async def queue(redis_url: str) -> asyncio.AsyncIterator[ArqRedis]:  # type: ignore[name-defined]
    redis = create_queue(redis_url)
    yield redis
    await redis.aclose(close_connection_pool=True)


@pytest.mark.parametrize("same_person", ["Olga", "OLGA", "olga ", " olga"])
async def test_a_proposer_cannot_approve_under_another_spelling_of_their_name(
    pool: asyncpg.Pool, queue: ArqRedis, same_person: str
) -> None:
    item = await kes_in_suspense(pool)
    proposal = await review_actions.propose(pool, OLGA, Resolution.WRITE_OFF, review_item_id=item)
    with pytest.raises(ProposalRefused, match="two-person rule"):
        await review_actions.approve(pool, queue, proposal.id, Admin(same_person, "operator"))
    assert await balance(pool, ledger.SUSPENSE_KES) == 1500  # nothing moved on one person's word


async def test_cancelling_a_pending_deposits_query_job_does_not_strand_its_payment(
    pool: asyncpg.Pool, queue: ArqRedis
) -> None:
    [(deposit_id, checkout)] = await pending_deposits(pool, 1)
    job_id = JobName.QUERY_MPESA_DEPOSIT.job_id(deposit_id)
    await record_job(pool, job_id, JobName.QUERY_MPESA_DEPOSIT, deposit_id)
    with pytest.raises(job_actions.CannotCancel, match="how we learn whether the customer paid"):
        await job_actions.cancel_job(pool, queue, job_id, PAT)  # "this query looks stuck"

    await ingest_callback(pool, paid(checkout, 1500, "RCPTLATE01"), None)  # the customer paid after all

    row = await pool.fetchrow("SELECT status, received_kes FROM deposits WHERE id = $1", deposit_id)
    # Were it cancelled: needs_review with received_kes NULL (neither retry nor confirm accepts it), the
    # 1500 KES in suspense:KES, and the review item offering only a write-off.
    assert await balance(pool, ledger.SUSPENSE_KES) == 0, "the customer's payment went to suspense"
    assert (row["status"], row["received_kes"]) == ("processing", 1500)


async def test_a_paused_queue_does_not_pile_up_its_cron_ticks(mpesa_system: MpesaSystem) -> None:
    """arq's worker enqueues each cron into its own queue on every heartbeat, paused or not, and a unique cron's
    id is its time: a chain queue paused for an hour holds 3600 scan ticks, which all run when it resumes."""
    system = mpesa_system
    chain = arq_queue_name(Queue.CHAIN)
    await queues.pause(system.pool, system.queue, "chain", "amina")
    await asyncio.sleep(4.0)
    ticks = [m for m in await system.queue.zrange(chain, 0, -1) if m.decode().startswith("cron:scan_chain_tick")]
    assert len(ticks) <= 1, f"{len(ticks)} scan ticks held after 4 s of pause"


async def test_the_jobs_api_masks_secrets_as_the_dashboard_does(pool: asyncpg.Pool, client: httpx.AsyncClient) -> None:
    """`/admin/jobs/{id}` masks a job's errors and log lines (kiota/masking.py); `GET /api/v1/jobs/{id}`, which
    a viewer reads too, answered them raw: a traceback's Daraja token or a customer's phone number."""
    job_id = "query_mpesa_deposit:leaky"
    await record_job(pool, job_id, JobName.QUERY_MPESA_DEPOSIT, None)
    run = JobHistory(pool, job_id)
    await run.started()
    await run.failed_once("DarajaError: Authorization: Bearer abcDEF123secret for phone 254708374149", 30.0)
    body = (await client.get(f"/api/v1/jobs/{job_id}", auth=ADMIN_AUTH)).json()
    shown = json.dumps(body)
    assert "abcDEF123secret" not in shown and "254708374149" not in shown, shown
    listed = await client.get("/admin/jobs", auth=ADMIN_AUTH)
    assert listed.status_code == 200 and job_id in listed.text
    assert "abcDEF123secret" not in listed.text and "254708374149" not in listed.text


# --- #7: credit only USDC that is on chain ---------------------------------------------------------------


async def gone_again(pool: asyncpg.Pool, transfer_id: int) -> None:
    """A round whose rescanned range (blocks 90..110, the transfer's block 100 among them) lacks the transfer."""
    async with pool.acquire() as conn, conn.transaction():
        changed = await chain_store.check_held_presence(conn, 8453, 90, 110, [], 200)
    assert changed == [(transfer_id, True)]


async def test_a_reversed_transfer_that_never_came_back_is_not_credited(
    pool: asyncpg.Pool, queue: ArqRedis, client: httpx.AsyncClient
) -> None:
    item, _, _ = await reversed_usdc(pool, back=False)
    with pytest.raises(ProposalRefused, match="not on chain now"):
        await review_actions.propose(pool, OLGA, Resolution.CREDIT_USER, review_item_id=item, user_id="amani")
    [entry] = (await money_views.review_page(pool)).entries
    assert entry.actions == (Resolution.WRITE_OFF,)  # the page offers only what the service allows
    html = (await client.get("/admin/review", auth=ADMIN_AUTH)).text
    assert "propose: write off" in html and "propose: credit to user" not in html
    assert await pool.fetchval("SELECT count(*) FROM money_proposals") == 0


async def test_a_credit_proposed_while_the_usdc_was_back_is_refused_once_it_is_gone_again(
    pool: asyncpg.Pool, queue: ArqRedis
) -> None:
    """Proposed while the transfer was on chain again; a later reorg took it away before the approval."""
    item, _, transfer_id = await reversed_usdc(pool)
    proposal = await review_actions.propose(pool, OLGA, Resolution.CREDIT_USER, review_item_id=item, user_id="amani")
    await gone_again(pool, transfer_id)
    with pytest.raises(ProposalRefused, match="not on chain now"):
        await review_actions.approve(pool, queue, proposal.id, PAT)
    assert await balance(pool, ledger.user_account("amani", "USDC")) == 0
    assert await balance(pool, ledger.SUSPENSE_USDC) == 5_000_000


@pytest.mark.no_worker
async def test_a_too_large_transfer_in_review_whose_block_a_reorg_removed_is_not_creditable(
    mpesa_system: MpesaSystem,
) -> None:
    system = mpesa_system
    to = (await address_of(system, "tala")).lower()
    reader = ChainReader(system.settings.base_rpc_url)
    try:
        tx_hash = await mint_unmined(system, to, MAX_CREDIT_MICRO + 1)  # mined at once: automine is on
        await call(system, "anvil_mine", 2)
        assert (await one_round(system, reader)).review == 1
        row = await transfer_row(system, tx_hash)
        assert (row["status"], row["missing_since"]) == ("review", None)
        [entry] = (await money_views.review_page(system.pool)).entries
        assert entry.actions == (Resolution.CREDIT_USER,)  # on chain, confirmed: a person may credit it

        await call(system, "anvil_reorg", 3, [])  # its block replaced; the mint is not mined again
        await one_round(system, reader)
    finally:
        await reader.aclose()
    row = await transfer_row(system, tx_hash)
    assert row["status"] == "review" and row["missing_since"] is not None
    [entry] = (await money_views.review_page(system.pool)).entries
    assert entry.item.kind == "usdc_too_large" and entry.actions == ()
    with pytest.raises(ProposalRefused, match="not on chain now"):
        await review_actions.propose(
            system.pool, OLGA, Resolution.CREDIT_USER, review_item_id=entry.item.id, user_id="tala"
        )


# --- #8: a write-off of USDC that is gone leaves custody ---------------------------------------------


async def test_writing_off_reversed_usdc_that_is_gone_makes_custody_what_the_chain_holds(
    pool: asyncpg.Pool, queue: ArqRedis, anvil: AnvilNode, chain: Web3Client
) -> None:
    item, _, _ = await reversed_usdc(pool, back=False)  # amani's deposit address holds nothing on chain
    reader = ChainReader(anvil.rpc_url)
    try:
        before, _ = await reconcile(pool, reader, BASE_USDC_ADDRESS, None, chain_id=8453)
        assert [(d.who, d.ledger_micro, d.chain_micro) for d in before] == [("custody:USDC", 5_000_000, 0)]
        proposal = await review_actions.propose(pool, OLGA, Resolution.WRITE_OFF, review_item_id=item)
        await review_actions.approve(pool, queue, proposal.id, PAT)
        after, lines = await reconcile(pool, reader, BASE_USDC_ADDRESS, None, chain_id=8453)
    finally:
        await reader.aclose()
    assert after == [], lines
    assert await balance(pool, ledger.CUSTODY_USDC) == 0
    assert await balance(pool, ledger.SUSPENSE_USDC) == 0
    assert await balance(pool, ledger.WRITTEN_OFF["USDC"]) == 0  # nothing arrived, so nothing was lost or kept
    resolution = await pool.fetchval("SELECT resolution FROM review_items WHERE id = $1", item)
    assert "out of custody" in resolution


async def test_writing_off_reversed_usdc_that_is_back_keeps_it_in_custody(pool: asyncpg.Pool, queue: ArqRedis) -> None:
    item, _, _ = await reversed_usdc(pool)  # on chain again: the USDC is at the deposit address
    proposal = await review_actions.propose(pool, OLGA, Resolution.WRITE_OFF, review_item_id=item)
    await review_actions.approve(pool, queue, proposal.id, PAT)
    assert await balance(pool, ledger.CUSTODY_USDC) == 5_000_000
    assert await balance(pool, ledger.SUSPENSE_USDC) == 0
    assert await balance(pool, ledger.WRITTEN_OFF["USDC"]) == 5_000_000


# --- #3: the bootstrap login moves no money once accounts exist ---------------------------------------


async def test_the_bootstrap_login_cannot_be_a_second_person_once_accounts_exist(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    """pat proposes under their account and approves as ADMIN_USERNAME: one person, two names."""
    await operators.add_operator(pool, "pat", "operator", PASSWORD)
    item = await kes_in_suspense(pool)

    said = notice(
        await post(client, settings, ADMIN_AUTH, "/admin/proposals", "/admin/review", action="write_off",
                   review_item_id=str(item))
    )  # fmt: skip
    assert "bootstrap" in said, said
    assert await pool.fetchval("SELECT count(*) FROM money_proposals") == 0

    notice(
        await post(client, settings, PAT_AUTH, "/admin/proposals", "/admin/review", action="write_off",
                   review_item_id=str(item))
    )  # fmt: skip
    proposal_id = await pool.fetchval("SELECT id FROM money_proposals WHERE review_item_id = $1", item)
    said = notice(await post(client, settings, ADMIN_AUTH, f"/admin/proposals/{proposal_id}/approve", "/admin/review"))
    assert "bootstrap" in said, said
    assert await pool.fetchval("SELECT status FROM money_proposals WHERE id = $1", proposal_id) == "proposed"
    assert await balance(pool, ledger.SUSPENSE_KES) == 1500  # nothing moved
    # It still reads, and acts where no money moves.
    assert (await client.get("/admin/review", auth=ADMIN_AUTH)).status_code == 200
    paused = notice(await post(client, settings, ADMIN_AUTH, "/admin/queues/chain/pause", "/admin/queues"))
    assert "paused" in paused, paused


# --- #2: one person, one name, in the database -------------------------------------------------------


async def test_the_database_refuses_alice_approving_alices_proposal(pool: asyncpg.Pool) -> None:
    item = await kes_in_suspense(pool)
    async with pool.acquire() as conn:
        proposal = await proposal_store.insert_proposal(conn, "write_off", item, None, None, "KES", 1500, "", "alice ")
        assert proposal is not None
        with pytest.raises(asyncpg.CheckViolationError, match="money_proposals_two_people"):
            await proposal_store.close_proposal(conn, proposal.id, "approved", "Alice", "", None)


async def test_an_account_is_one_persons_name_whatever_its_case(database_url: str) -> None:
    code, out = await kiota_admin(database_url, "add-user", "alice", "--role", "operator", stdin=PASSWORD)
    assert code == 0, out
    code, out = await kiota_admin(database_url, "add-user", "ALICE", "--role", "operator", stdin=PASSWORD)
    assert code != 0 and "exists already" in out and "alice" in out and "ignoring case" in out, out


async def test_the_migration_keeps_one_account_per_person_and_never_fails_on_existing_rows(
    empty_database_url: str,
) -> None:
    before = [m for m in discover() if m.version < "0018"]
    await migrate(empty_database_url, before)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            "INSERT INTO operators (name, role, password_hash, created_at, disabled_at) VALUES "
            "('bob', 'operator', 'h', now() - interval '2 days', NULL), "
            "('BOB', 'operator', 'h', now() - interval '1 day', NULL), "
            "('Carol', 'operator', 'h', now() - interval '2 days', now()), "
            "('carol', 'viewer', 'h', now() - interval '1 day', NULL)"
        )
        await migrate(empty_database_url)
        rows = await conn.fetch("SELECT name, disabled_at IS NULL AS enabled FROM operators ORDER BY id")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO operators (name, role, password_hash) VALUES ('Bob', 'viewer', 'h')")
    finally:
        await conn.close()
    names = [(r["name"], r["enabled"]) for r in rows]
    assert names[0] == ("bob", True) and names[3] == ("carol", True)  # the enabled one, else the oldest, kept
    assert names[1][0].startswith("BOB.dup") and not names[1][1]
    assert names[2][0].startswith("Carol.dup") and not names[2][1]


# --- nits: a USDC amount as USDC; no notice a link can write -------------------------------------------


async def test_a_proposals_usdc_amount_is_shown_in_usdc(pool: asyncpg.Pool, client: httpx.AsyncClient) -> None:
    item, _, _ = await reversed_usdc(pool)
    await review_actions.propose(pool, OLGA, Resolution.CREDIT_USER, review_item_id=item, user_id="amani")
    html = (await client.get("/admin/review", auth=ADMIN_AUTH)).text
    assert "5.000000 USDC" in html and "5000000 USDC" not in html


async def test_a_forged_notice_is_not_shown_and_a_real_one_is_shown_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    forged = "Your session expired: sign in again at https://evil.example"
    for path in ("/admin/queues", "/admin/review"):
        html = (await client.get(path, params={"notice": forged}, auth=ADMIN_AUTH)).text
        assert "evil.example" not in html, path
    response = await post(client, settings, ADMIN_AUTH, "/admin/queues/chain/pause", "/admin/queues")
    assert "notice" not in response.headers["location"]
    assert "queue chain paused" in (await client.get(response.headers["location"], auth=ADMIN_AUTH)).text
    assert "queue chain paused" not in (await client.get("/admin/queues", auth=ADMIN_AUTH)).text  # once
