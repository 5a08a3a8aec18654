"""Adversarial review of issue 13's money paths: each test proves a bug found in review, now fixed.

- The two-person rule compared operators' names byte for byte: "olga" proposed, "Olga" (a second account, the
  bootstrap ADMIN_USERNAME spelled otherwise, or `kiota ops approve --by Olga`) approved her own proposal.
- Cancelling a pending deposit's STK-query job sent the unpaid deposit to review; the customer's payment that
  arrived afterwards was booked to suspense, whose only resolution is a write-off: the user was never paid.
  A query job is no longer cancelled.
- A paused queue piled up one cron job per tick, all run at the resume: a paused queue's ticks are now skipped.
- The jobs API and the job list showed job errors and log lines unmasked.
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis

from kiota import job_actions, ledger, queues, review_actions
from kiota.callbacks import ingest_callback
from kiota.job_history import JobHistory, record_job
from kiota.job_names import JobName, Queue, arq_queue_name
from kiota.operators import Admin
from kiota.queue import create_queue
from kiota.review_actions import ProposalRefused
from kiota.review_rules import Resolution
from kiota.store.ledger import balance
from tests.conftest import MpesaSystem
from tests.integration.test_callback_groups import paid, pending_deposits
from tests.integration.test_money_proposals import OLGA, kes_in_suspense
from tests.support import ADMIN_AUTH

PAT = Admin("pat", "operator")


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
