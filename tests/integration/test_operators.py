"""Operators' accounts on the admin surface: made by `kiota admin`, viewers read, operators act, every
state-changing request CSRF- and origin-checked, every action recorded, no password ever printed."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from structlog.testing import capture_logs

from api.csrf import issue_token, token_key
from kiota import operators
from kiota.settings import Settings
from tests.integration.test_ops_cli import kiota_ops
from tests.support import ADMIN_AUTH

PASSWORD = "correct horse battery staple 7"
KILL_SWITCH = "/api/v1/admin/kill-switch"


async def kiota_admin(database_url: str, *args: str, stdin: str = "") -> tuple[int, str]:
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": database_url, "ADMIN_USERNAME": ADMIN_AUTH[0]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiota.cli",
        "admin",
        *args,
        env=env,
        cwd=Path(__file__).parent,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(stdin.encode())
    return proc.returncode or 0, out.decode()


def origin(settings: Settings) -> dict[str, str]:
    return {"Origin": settings.public_url}


async def csrf_token(client: httpx.AsyncClient, auth: tuple[str, str]) -> str:
    response = await client.get("/api/v1/admin/csrf", auth=auth)
    assert response.status_code == 200, response.text
    token: str = response.json()["csrf_token"]
    return token


async def kill_switch(pool: asyncpg.Pool) -> bool:
    on: bool = await pool.fetchval("SELECT kill_switch FROM payout_guards")
    return on


async def test_an_account_added_by_the_cli_signs_in_and_its_password_is_never_printed(
    client: httpx.AsyncClient, pool: asyncpg.Pool, database_url: str
) -> None:
    code, out = await kiota_admin(database_url, "add-user", "wanjiru", "--role", "operator", stdin=PASSWORD + "\n")
    assert (code, out.strip()) == (0, "added wanjiru (operator)")
    stored = await pool.fetchval("SELECT password_hash FROM operators WHERE name = 'wanjiru'")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored

    with capture_logs() as events:
        assert (await client.get("/metrics", auth=("wanjiru", PASSWORD))).status_code == 200
        wrong = await client.get("/metrics", auth=("wanjiru", PASSWORD + "x"))
        unknown = await client.get("/metrics", auth=("nobody", PASSWORD))
    for refused in (wrong, unknown):
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert events and PASSWORD not in repr(events)
    assert any(event["event"] == "admin credentials refused" for event in events)

    code, out = await kiota_admin(database_url, "list-users")
    assert code == 0 and "wanjiru  operator  enabled" in out and "argon2" not in out

    # Taken names, the bootstrap operator's name, short passwords and unknown roles are refused.
    for args, stdin, says in [
        (("add-user", "wanjiru", "--role", "viewer"), PASSWORD, "exists already"),
        (("add-user", ADMIN_AUTH[0], "--role", "viewer"), PASSWORD, "ADMIN_USERNAME"),
        (("add-user", "short", "--role", "viewer"), "tooshort", "at least 12"),
        (("add-user", "bad:name", "--role", "viewer", "--password-stdin"), PASSWORD, "a name is"),
    ]:
        code, out = await kiota_admin(database_url, *args, stdin=stdin + "\n")
        assert code == 2 and says in out and stdin not in out, (args, out)
    code, out = await kiota_admin(database_url, "add-user", "x", "--role", "admin", stdin=PASSWORD)
    assert code == 2 and "invalid choice" in out


async def test_a_disabled_account_is_refused(client: httpx.AsyncClient, pool: asyncpg.Pool, database_url: str) -> None:
    await operators.add_operator(pool, "kamau", "viewer", PASSWORD)
    assert (await client.get("/metrics", auth=("kamau", PASSWORD))).status_code == 200
    code, out = await kiota_admin(database_url, "disable-user", "kamau")
    assert (code, out.strip()) == (0, "disabled kamau")
    assert (await client.get("/metrics", auth=("kamau", PASSWORD))).status_code == 401
    code, out = await kiota_admin(database_url, "disable-user", "kamau")
    assert code == 2 and "no enabled operator" in out


async def test_a_viewer_reads_but_cannot_act(client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings) -> None:
    await operators.add_operator(pool, "viewer1", "viewer", PASSWORD)
    auth = ("viewer1", PASSWORD)
    assert (await client.get("/metrics", auth=auth)).status_code == 200
    token = await csrf_token(client, auth)  # a viewer's page carries a token too: the role is what refuses
    response = await client.post(
        KILL_SWITCH, json={"on": True}, auth=auth, headers={**origin(settings), "X-CSRF-Token": token}
    )
    assert response.status_code == 403 and "operator" in response.json()["detail"]
    assert not await kill_switch(pool)
    assert await pool.fetchval("SELECT count(*) FROM admin_actions") == 0


async def test_an_operator_acts_only_with_the_token_from_our_own_origin_and_it_is_recorded(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    await operators.add_operator(pool, "achieng", "operator", PASSWORD)
    await operators.add_operator(pool, "otieno", "operator", PASSWORD)
    auth = ("achieng", PASSWORD)
    token = await csrf_token(client, auth)
    others = await csrf_token(client, ("otieno", PASSWORD))
    key = token_key(settings)
    stale = issue_token(key, "achieng", time.time() - 13 * 3600)
    ours = settings.public_url
    refused = [
        ({"Origin": ours}, None),  # no token
        ({"Origin": ours, "X-CSRF-Token": "1.forged"}, None),
        ({"Origin": ours, "X-CSRF-Token": token + "x"}, None),
        ({"Origin": ours, "X-CSRF-Token": others}, None),  # another admin's token
        ({"Origin": ours, "X-CSRF-Token": stale}, None),  # expired
        ({"Origin": "https://evil.example", "X-CSRF-Token": token}, None),
        ({"Origin": "null", "X-CSRF-Token": token}, None),
        ({"Referer": "https://evil.example/admin/queues", "X-CSRF-Token": token}, None),
        ({"X-CSRF-Token": token}, None),  # neither Origin nor Referer
        ({"Origin": ours, "Content-Type": "application/x-www-form-urlencoded"}, "on=true&csrf_token=wrong"),
    ]
    for headers, form in refused:
        if form is None:
            response = await client.post(KILL_SWITCH, json={"on": True}, auth=auth, headers=headers)
        else:
            response = await client.post(KILL_SWITCH, content=form, auth=auth, headers=headers)
        assert response.status_code == 403, (headers, response.status_code, response.text)
    assert (await client.post(KILL_SWITCH, json={"on": True}, headers={"Origin": ours})).status_code == 401
    assert not await kill_switch(pool)
    assert await pool.fetchval("SELECT count(*) FROM admin_actions") == 0

    response = await client.post(
        KILL_SWITCH, json={"on": True}, auth=auth, headers={"Origin": ours, "X-CSRF-Token": token}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"kill_switch": True, "released_jobs": 0}
    assert await kill_switch(pool)
    # A Referer from our own pages stands for a missing Origin.
    response = await client.post(
        KILL_SWITCH, json={"on": False}, auth=auth, headers={"Referer": f"{ours}/admin/queues", "X-CSRF-Token": token}
    )
    assert response.status_code == 200, response.text
    assert not await kill_switch(pool)

    actions = await operators.actions_on(pool, "payout_guards")
    assert [(a.actor, a.actor_role, a.action) for a in actions] == [("achieng", "operator", "kill_switch")] * 2
    assert actions[1].before is not None and actions[1].after is not None
    assert (actions[1].before["kill_switch"], actions[1].after["kill_switch"]) == (False, True)
    assert (actions[0].before, actions[0].after) == (actions[1].after, actions[1].before)
    with pytest.raises(asyncpg.CheckViolationError, match="append-only"):
        await pool.execute("UPDATE admin_actions SET actor = 'someone else'")


async def test_the_bootstrap_operator_still_works(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    assert (await client.get("/metrics", auth=ADMIN_AUTH)).status_code == 200
    assert (await client.get("/metrics", auth=(ADMIN_AUTH[0], "wrong"))).status_code == 401
    token = await csrf_token(client, ADMIN_AUTH)
    response = await client.post(
        KILL_SWITCH, json={"on": True}, auth=ADMIN_AUTH, headers={**origin(settings), "X-CSRF-Token": token}
    )
    assert response.status_code == 200, response.text
    actions = await operators.actions_on(pool, "payout_guards")
    assert [(a.actor, a.actor_role) for a in actions] == [(ADMIN_AUTH[0], "operator")]


async def test_an_unknown_name_costs_one_argon2_verification(
    pool: asyncpg.Pool, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that a refusal's timing does not say whether the name exists."""
    await operators.add_operator(pool, "known", "viewer", PASSWORD)
    verified: list[str] = []
    real = operators._verify

    def counting(password_hash: str, password: str) -> bool:
        verified.append(password_hash)
        return real(password_hash, password)

    monkeypatch.setattr(operators, "_verify", counting)
    for name in ("known", "unknown", "bad:name"):
        assert await operators.authenticate(pool, settings, name, "not the password") is None
    assert len(verified) == 3 and all(h.startswith("$argon2id$") for h in verified)
    assert verified[1] == verified[2] != verified[0]  # the dummy hash for the unknown ones


async def test_the_ops_cli_records_its_changes_of_the_guards(
    pool: asyncpg.Pool, database_url: str, redis_url: str
) -> None:
    code, out = await kiota_ops(database_url, redis_url, "kill-switch", "on")
    assert code == 0, out
    code, out = await kiota_ops(database_url, redis_url, "limits", "--hourly", "500")
    assert code == 1, out  # the kill switch is on: exit 1 says so
    actions = await operators.actions_on(pool, "payout_guards")
    assert [(a.actor, a.action) for a in actions] == [("tester", "set_limits"), ("tester", "kill_switch")]
    assert actions[0].after is not None and actions[0].after["hourly_cap_micro"] == 500_000_000
