"""One log stream: every line `kiota api` and `kiota worker` write is a JSON object, libraries' lines too.

A deposit runs end to end through real `kiota api` and `kiota worker` processes (the Daraja simulator
calls the API back; the worker pays on anvil). Every line of both processes' stderr must parse as
JSON; uvicorn's and arq's own lines are among them; the per-request and per-job library lines are
not; and the callback token appears nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiota.process import stop
from tests.conftest import MpesaSystem
from tests.support import CALLBACK_TOKEN, REPO, TREASURY_KEY, bearer, free_port


def json_lines(text: str, process: str) -> list[dict[str, Any]]:
    """Every line as a JSON object; the first that is not one fails the test, shown with its neighbours."""
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            context = "\n".join(lines[max(0, number - 3) : number + 4])
            raise AssertionError(f"{process}: line {number + 1} is not JSON: {line!r}\n{context}") from None
        assert isinstance(record, dict), f"{process}: line {number + 1} is not an object: {line!r}"
        assert {"event", "level", "timestamp"} <= record.keys(), f"{process}: {line!r}"
        records.append(record)
    return records


@contextlib.asynccontextmanager
async def kiota(command: str, env: dict[str, str], logs: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`kiota <command>` with stdout and stderr in files; stopped with SIGTERM (killed if it hangs)."""
    with (logs / f"{command}.out").open("wb") as out, (logs / f"{command}.err").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kiota.cli", command,
            cwd=logs, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
        )  # fmt: skip
    try:
        yield proc
    finally:
        await stop(proc, grace=30)


async def until(
    what: str, check: Callable[[], Awaitable[bool]], processes: list[asyncio.subprocess.Process], seconds: float
) -> None:
    async with asyncio.timeout(seconds):
        while True:
            for proc in processes:
                assert proc.returncode is None, f"a process exited (code {proc.returncode}) while waiting: {what}"
            with contextlib.suppress(httpx.TransportError):
                if await check():
                    return
            await asyncio.sleep(0.1)


@pytest.mark.no_worker
async def test_a_deposit_through_real_processes_writes_only_json_lines(
    mpesa_system: MpesaSystem, tmp_path: Path
) -> None:
    system = mpesa_system
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    worker_env = system.env(KIOTA_LOG_FORMAT="json")
    api_env = {**worker_env, "PORT": str(port), "PUBLIC_BASE_URL": api_url}  # Daraja calls this process back
    del api_env["TREASURY_PRIVATE_KEY"]

    async with (
        kiota("worker", worker_env, tmp_path) as worker,
        kiota("api", api_env, tmp_path) as api,
        httpx.AsyncClient(base_url=api_url, timeout=15) as http,
    ):
        both = [worker, api]

        async def worker_started() -> bool:
            return bool(await system.pool.fetchval("SELECT count(*) FROM worker_heartbeats"))

        async def api_ready() -> bool:
            return (await http.get("/health/ready", timeout=1)).status_code == 200

        await until("the worker's heartbeat", worker_started, both, 30)
        await until("the API ready", api_ready, both, 30)
        response = await http.post(
            "/api/v1/deposit/initiate", json={"amount_kes": 1500, "phone": "254708374149"}, headers=bearer("jo")
        )
        assert response.status_code == 202, response.text
        deposit_id = response.json()["deposit_id"]

        async def completed() -> bool:
            status = await system.pool.fetchval("SELECT status FROM deposits WHERE id = $1::uuid", deposit_id)
            return bool(status == "completed")

        try:
            await until("the deposit completed", completed, both, 60)
        except TimeoutError:
            raise AssertionError((tmp_path / "worker.err").read_text()[-5000:]) from None
    assert worker.returncode == 0
    assert api.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown

    texts = {name: (tmp_path / name).read_text() for name in ("api.err", "worker.err", "api.out", "worker.out")}
    for name, text in texts.items():
        assert CALLBACK_TOKEN not in text, name
        assert TREASURY_KEY.removeprefix("0x") not in text, name
    assert texts["api.out"] == texts["worker.out"] == ""  # one stream: stderr
    api_lines = json_lines(texts["api.err"], "kiota api")
    worker_lines = json_lines(texts["worker.err"], "kiota worker")

    def library(records: list[dict[str, Any]], logger: str, starts: str) -> list[dict[str, Any]]:
        return [r for r in records if r.get("logger") == logger and str(r["event"]).startswith(starts)]

    # The libraries' own lines are in the stream, as JSON.
    assert library(api_lines, "uvicorn.error", "Application startup complete")
    assert library(api_lines, "uvicorn.error", "Application shutdown complete")
    assert library(worker_lines, "arq.worker", "Starting worker for")
    # Per-request and per-job library lines are not: no httpx line per call, no arq line per job.
    loggers = {str(r.get("logger")) for r in api_lines + worker_lines}
    assert not {"httpx", "httpcore"} & loggers, loggers
    assert not [r for r in worker_lines if r.get("logger") == "arq.worker" and ("→" in r["event"] or "←" in r["event"])]
    # The ids are bound: the callback's access line (its path redacted) and the worker's job lines
    # name the deposit, so one grep follows it across both processes.
    (callback,) = [r for r in api_lines if r["event"] == "http request" and "mpesa-callback" in r["path"]]
    assert callback["path"] == "/api/v1/deposit/mpesa-callback/[redacted]"
    assert callback["deposit_id"] == deposit_id and callback["request_id"]
    assert [r for r in worker_lines if r.get("deposit_id") == deposit_id and r.get("job_id")]


PROBE = """
import logging, sys, warnings
import structlog
from kiota.logging import configure_logging

configure_logging()
structlog.contextvars.bind_contextvars(request_id="req-1", deposit_id="dep-1")
structlog.get_logger("kiota.probe").info("ours", n=1)
logging.getLogger("uvicorn.error").warning("POST /api/v1/deposit/mpesa-callback/%s HTTP/1.1 failed", sys.argv[1])
logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1:8545 200 OK")
logging.getLogger("arq.worker").info("%6.2fs → %s(%s)%s", 0.01, "job-1:complete_mpesa_deposit", "'dep-1'", "")
logging.getLogger("arq.worker").info("%6.2fs ← %s ● %s", 0.2, "job-1:complete_mpesa_deposit", "")
logging.getLogger("arq.worker").warning("%6.2fs ! %s max retries %d exceeded", 0.0, "job-2:query_mpesa_deposit", 5)
logging.getLogger("arq.worker").info("Starting worker for %d functions: %s", 2, "a, b")
warnings.warn("a library's warning", UserWarning, stacklevel=1)
try:
    raise ValueError("inside a job")
except ValueError:
    logging.getLogger("asyncio").exception("Task exception was never retrieved")
raise RuntimeError("the process dies")
"""


async def test_library_lines_carry_the_bound_ids_and_never_the_token(tmp_path: Path) -> None:
    """The same rules, line by line, in a process that configures logging as `kiota api`/`worker` do."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE, CALLBACK_TOKEN,
        cwd=REPO, env={"PATH": os.environ["PATH"], "KIOTA_LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and out == b""
    text = err.decode()
    assert CALLBACK_TOKEN not in text
    records = json_lines(text, "probe")
    # The httpx line and arq's two per-job INFO lines are gone; arq's warning about a job stays.
    assert [(r["level"], r.get("logger"), r["event"]) for r in records] == [
        ("info", None, "ours"),
        ("warning", "uvicorn.error", "POST /api/v1/deposit/mpesa-callback/[redacted]/1.1 failed"),
        ("warning", "arq.worker", "  0.00s ! job-2:query_mpesa_deposit max retries 5 exceeded"),
        ("info", "arq.worker", "Starting worker for 2 functions: a, b"),
        ("warning", "py.warnings", records[4]["event"]),
        ("error", "asyncio", "Task exception was never retrieved"),
        ("critical", None, "uncaught exception"),
    ]
    assert "UserWarning: a library's warning" in records[4]["event"]
    for record in records:  # every line of the "request" names it, the libraries' included
        assert (record["request_id"], record["deposit_id"]) == ("req-1", "dep-1"), record
    assert "ValueError: inside a job" in records[-2]["exception"]
    assert "RuntimeError: the process dies" in records[-1]["exception"]
