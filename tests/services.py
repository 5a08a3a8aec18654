"""Private Redis and PostgreSQL servers that a test may stop and start again.

The shared servers on 6379 and 5432 serve every test run on this machine: a test that takes a
service away starts its own, on a free port, and always stops it (the context managers below).
PostgreSQL's `initdb` refuses root, so as root the cluster is created and run as `postgres`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.support import free_port

PG_BIN_ROOT = Path("/usr/lib/postgresql")
START_SECONDS = 30.0


class PrivateRedis:
    """`redis-server` on its own port that keeps nothing on disk: a restart comes back empty."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self._process: asyncio.subprocess.Process | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    async def start(self) -> None:
        assert self._process is None, "already running"
        with (self.directory / "redis.log").open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        client = Redis.from_url(self.url())
        try:
            async with asyncio.timeout(START_SECONDS):
                while True:
                    assert self._process.returncode is None, (self.directory / "redis.log").read_text()
                    with contextlib.suppress(Exception):  # refused until it listens
                        if await client.ping():
                            return
                    await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)  # with --save '' it exits without writing anything
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb into a temporary directory, trust auth, no fsync)."""

    def __init__(self, directory: Path, bin_dir: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.data = directory / "data"
        self.bin_dir = bin_dir
        self.running = False

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def _run(self, *argv: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        process = await asyncio.create_subprocess_exec(
            *as_postgres, str(self.bin_dir / argv[0]), *argv[1:],
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), START_SECONDS + 10)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({process.returncode}): {out.decode(errors='replace')}")

    async def init(self) -> None:
        await self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync",
            "--no-instructions",
        )  # fmt: skip

    async def start(self) -> None:
        self.running = True  # from here on, stop() must try: pg_ctl may have started it and timed out
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB"
        )
        await self._run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.directory / "postgres.log"), "-w",
            "-t", str(int(START_SECONDS)), "-o", options,
        )  # fmt: skip

    async def stop(self, mode: str = "fast") -> None:
        """`fast`: what a restart or a failover does to clients (their sessions are ended)."""
        if not self.running:
            return
        await self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w")
        self.running = False


def _postgres_bin() -> Path | None:
    versions = sorted((p for p in PG_BIN_ROOT.glob("*/bin") if (p / "initdb").exists()), key=lambda p: p.parent.name)
    return versions[-1] if versions else None


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    directory = Path(tempfile.mkdtemp(prefix="kiota-redis-"))
    server = PrivateRedis(directory)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip(f"no PostgreSQL server binaries under {PG_BIN_ROOT}")
    directory = Path(tempfile.mkdtemp(prefix="kiota-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    server = PrivatePostgres(directory, bin_dir)
    try:
        await server.init()
        await server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            await server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
