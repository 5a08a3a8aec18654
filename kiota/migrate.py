"""Forward-only migrations: `sql/migrations/NNNN_name.sql`, applied in order.

Each file runs in its own transaction and is recorded with its checksum in
`schema_migrations`. A session-level advisory lock makes two processes at once
safe: the second waits, then finds nothing left to do. An applied file that was
edited afterwards is refused rather than silently skipped.

Files are written expand-then-contract: during a deploy the previous release's
workers run against the new schema for about a minute, so a migration only adds
(columns with defaults, tables, indexes) and a later one removes what the old
code no longer reads.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
import structlog

from kiota.errors import MigrationError
from kiota.sql import sql_dir

log = structlog.get_logger(__name__)

# Any constant both processes agree on; it names "kiota migrations" in pg_locks.
MIGRATION_LOCK_KEY = 0x6B696F7461_01
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or sql_dir() / "migrations"
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name {path.name!r} is not NNNN_name.sql")
        found.append(Migration(match[1], match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


async def ensure_database(dsn: str) -> bool:
    """Create the DSN's database when it does not exist yet; True when it was created."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    name = unquote(urlsplit(dsn).path.lstrip("/"))
    if not name:
        raise MigrationError("DATABASE_URL names no database")
    admin = await asyncpg.connect(dsn, database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{_quote_ident(name)}"')
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        return False  # another process created it at the same moment
    finally:
        await admin.close()
    return True


def _quote_ident(name: str) -> str:
    return name.replace('"', '""')


async def migrate(dsn: str, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is missing; return the versions applied by this call."""
    migrations = discover() if migrations is None else migrations
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    text PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            done = {
                row["version"]: row["checksum"]
                for row in await conn.fetch("SELECT version, checksum FROM schema_migrations")
            }
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version}_{migration.name} was edited after it "
                            "was applied; write a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                log.info("migration applied", version=migration.version, name=migration.name)
                applied_now.append(migration.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return applied_now
