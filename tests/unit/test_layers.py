"""The layers' import rules, read from the source: the core never reaches up into its edges.

- `kiota/` is the core and its adapters: it never imports `api` or `jobs`. The CLI
  (`kiota/cli.py`) is the composition root that starts them, and alone may.
- `api/` is HTTP in: it talks to PostgreSQL only through the core's services and store, so it
  never imports asyncpg.
- Only the store (`kiota/store/`) runs named queries: nothing else imports `kiota.sql` (the
  migrator reads the SQL directory from it, not queries).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """Every module `path` imports, at any depth (function-level imports included)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:  # `from kiota import sql` imports kiota.sql
                yield node.lineno, f"{node.module}.{alias.name}"


def offences(package: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith(allowed):
            continue
        for line, module in imports_of(path):
            if any(module == name or module.startswith(f"{name}.") for name in forbidden):
                found.append(f"{relative}:{line} imports {module}")
    return found


def test_the_core_never_imports_its_edges() -> None:
    assert offences("kiota", ("api", "jobs"), allowed=("kiota/cli.py",)) == []


def test_the_api_never_imports_the_driver() -> None:
    assert offences("api", ("asyncpg",)) == []


@pytest.mark.parametrize("package", ["api", "jobs", "kiota"])
def test_only_the_store_runs_named_queries(package: str) -> None:
    assert offences(package, ("kiota.sql",), allowed=("kiota/store/", "kiota/sql.py", "kiota/migrate.py")) == []


def test_the_rules_see_an_offence(tmp_path: Path) -> None:
    """The reader finds top-level, function-level and from-imports alike (a rule that sees nothing is no rule)."""
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from api.app import create_app\n    from kiota import sql\n")
    assert {m for _, m in imports_of(source)} >= {"os", "api.app", "api.app.create_app", "kiota.sql"}


def ctx_reads(path: Path) -> list[int]:
    """Lines where `ctx[...]` or `ctx.get(...)` is read."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            target: ast.expr | None = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            target = node.func.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == "ctx":
            lines.append(node.lineno)
    return lines


def test_jobs_read_ctx_only_through_the_context(tmp_path: Path) -> None:
    """A job takes its dependencies in one line (`WorkerContext.of(ctx)`); arq's dict is read in jobs/context.py."""
    found = [
        f"{path.relative_to(REPO)}:{line}"
        for path in sorted((REPO / "jobs").rglob("*.py"))
        if path.name != "context.py"
        for line in ctx_reads(path)
    ]
    assert found == []
    job = tmp_path / "job.py"
    job.write_text('async def f(ctx):\n    ctx["x"] = 1\n    return ctx["job_id"], ctx.get("redis")\n')
    assert ctx_reads(job) == [3, 3]
