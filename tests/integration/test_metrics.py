"""/metrics from the real API: every contract name present, counters that move with what happens, and the
sums of several processes (two `kiota api` processes here) adding up, as Prometheus would read them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kiota import metrics
from kiota.queue import create_queue
from tests.conftest import MpesaSystem
from tests.support import ADMIN_AUTH, CALLBACK_TOKEN, base_env, free_port, success_body

CONTRACT = (
    "kiota_jobs",  # a counter: its samples are kiota_jobs_total{function,outcome}
    "kiota_job_duration_seconds",
    "kiota_queue_depth",
    "kiota_scan_lag_blocks",
    "kiota_http_request_duration_seconds",
)
ALSO = (
    "kiota_deposits",
    "kiota_mpesa_callbacks_accepted",
    "kiota_mpesa_callbacks_refused",
    "kiota_daraja_errors",
    "kiota_rpc_errors",
    "kiota_payout_fee_wei",
    "kiota_treasury_balance",
    "kiota_review_items_open",
    "kiota_payout_kill_switch",
)
CALLBACK_ROUTE = "/api/v1/deposit/mpesa-callback/{token}"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """The families (name → type) and every sample, as Prometheus' parser reads the text."""
    kinds: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in kinds, f"{family.name} twice"
        kinds[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return kinds, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(http: httpx.AsyncClient) -> tuple[dict[str, str], Samples]:
    response = await http.get("/metrics", auth=ADMIN_AUTH)
    assert response.status_code == 200, response.text
    assert CALLBACK_TOKEN not in response.text  # the callback's route is labelled by its template
    return parse(response.text)


async def until(http: httpx.AsyncClient, unmet: Callable[[Samples], list[str]], seconds: float = 15) -> Samples:
    """Scrape until nothing is `unmet` (events reach Redis within a flush, about a second)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        _, samples = await scrape(http)
        missing = unmet(samples)
        if not missing:
            return samples
        assert asyncio.get_running_loop().time() < deadline, f"these never moved: {missing}"
        await asyncio.sleep(0.2)


async def test_metrics_name_the_contract_and_move_with_callbacks_and_jobs(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    kinds, before = await scrape(system.http)
    for name in (*CONTRACT, *ALSO):
        assert name in kinds, name
    assert kinds["kiota_jobs"] == "counter"
    assert kinds["kiota_job_duration_seconds"] == kinds["kiota_http_request_duration_seconds"] == "histogram"
    for queue in ("payouts", "chain", "maintenance"):
        assert ("kiota_queue_depth", frozenset({("queue", queue)})) in before

    # A deposit end to end: its callback accepted, its completion job run, its payout's fee paid.
    response = await system.initiate("wanjiku", 1300)
    assert response.status_code == 202, response.text
    await system.wait_status("wanjiku", response.json()["deposit_id"], "completed")
    # A callback with a wrong token, and one that is not Daraja's shape.
    wrong = system.callback_url.replace(CALLBACK_TOKEN, "not-the-token")
    assert (await system.http.post(wrong, json=success_body("ws_CO_x", 10))).status_code in (403, 404)
    assert (await system.http.post(system.callback_url, content=b'{"Body": 1}')).status_code == 400

    def unmoved(after: Samples) -> list[str]:
        def grew(name: str, **labels: str) -> str | None:
            return None if value(after, name, **labels) > value(before, name, **labels) else f"{name}{labels}"

        return [
            missing
            for missing in (
                grew("kiota_mpesa_callbacks_accepted_total", disposition="succeeded"),
                grew("kiota_mpesa_callbacks_refused_total", reason="wrong_token"),
                grew("kiota_mpesa_callbacks_refused_total", reason="malformed"),
                grew("kiota_jobs_total", function="complete_mpesa_deposit", outcome="succeeded"),
                grew("kiota_job_duration_seconds_count", function="complete_mpesa_deposit"),
                grew("kiota_payout_fee_wei_count"),
                grew("kiota_http_request_duration_seconds_count", route=CALLBACK_ROUTE, method="POST", status="2xx"),
            )
            if missing is not None
        ]

    after = await until(system.http, unmoved)
    assert value(after, "kiota_payout_fee_wei_sum") > 0
    treasury = system.treasury_address
    assert value(after, "kiota_treasury_balance", asset="USDC", treasury=treasury) > 0
    assert value(after, "kiota_treasury_balance", asset="ETH", treasury=treasury) > 0


@asynccontextmanager
async def kiota_api(env: dict[str, str], cwd: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A `kiota api` process on its own port, stopped (SIGTERM: its last events flushed) even if the test fails."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiota.cli", "api", cwd=cwd, env={**env, "PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(200):
                assert proc.returncode is None, "kiota api exited"
                try:
                    if (await http.get("/health/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            yield http
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)


async def test_two_api_processes_counts_add_up(database_url: str, redis_url: str, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], **base_env(database_url, redis_url)}
    async with kiota_api(env, tmp_path) as first, kiota_api(env, tmp_path) as second:
        _, before = await scrape(first)
        wrong = "/api/v1/deposit/mpesa-callback/not-the-token"
        body = success_body("ws_CO_1", 10)
        await asyncio.gather(*(first.post(wrong, json=body) for _ in range(7)))
        await asyncio.gather(*(second.post(wrong, json=body) for _ in range(5)))
        refused = ("kiota_mpesa_callbacks_refused_total", {"reason": "wrong_token"})
        requests = ("kiota_http_request_duration_seconds_count", {"route": CALLBACK_ROUTE, "method": "POST"})

        def added(samples: Samples, metric: tuple[str, dict[str, str]], extra: dict[str, str]) -> float:
            name, labels = metric
            return value(samples, name, **labels, **extra) - value(before, name, **labels, **extra)

        # Either process answers for both: 7 + 5, as soon as both have flushed.
        for http in (first, second):
            after = await until(http, lambda s: [] if added(s, refused, {}) >= 12 else ["12 refused"])
            assert added(after, refused, {}) == 12
            assert added(after, requests, {"status": "4xx"}) == 12
    # Stopped, each flushed what it had left: the sums stay (they live in Redis, not in a process).
    async with kiota_api(env, tmp_path) as third:
        _, later = await scrape(third)
        assert value(later, refused[0], **refused[1]) - value(before, refused[0], **refused[1]) == 12


async def test_flushes_of_many_tallies_add_up_in_redis_and_a_failed_one_loses_nothing(redis_url: str) -> None:
    """Each tally stands for one process: Redis adds their deltas; while Redis is unreachable a tally keeps them."""
    redis = create_queue(redis_url)
    unreachable = create_queue("redis://127.0.0.1:1/0")
    try:
        tallies = [metrics.Tally() for _ in range(3)]
        for n, tally in enumerate(tallies, start=1):
            tally.count(metrics.DARAJA_ERRORS, "query", "500.003.02", amount=n)
            tally.observe(metrics.PAYOUT_FEE, 2.5e12)
        assert not await metrics.flush(unreachable, tallies[0])
        for tally in tallies:
            assert await metrics.flush(redis, tally)
        families = {f.name: f for f in metrics.render_events(**_hashes(await metrics.read(redis)))}
        (errors,) = families["kiota_daraja_errors"].samples
        assert errors.value == 1 + 2 + 3
        fees = {s.name: s.value for s in families["kiota_payout_fee_wei"].samples}
        assert fees["kiota_payout_fee_wei_count"] == 3 and fees["kiota_payout_fee_wei_sum"] == 7.5e12
    finally:
        await redis.aclose(close_connection_pool=True)
        await unreachable.aclose(close_connection_pool=True)


def _hashes(read: metrics.Read) -> dict[str, dict[bytes, bytes]]:
    return {"sums": read.sums, "last": read.last}
