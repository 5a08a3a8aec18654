"""The dashboard's frame: admin-only pages, assets served by the app itself, forms answered by a redirect back."""

from __future__ import annotations

import httpx

from api.dashboard.render import back
from tests.support import ADMIN_AUTH


async def test_the_dashboard_is_closed_without_credentials_and_its_door_leads_to_the_queues(
    client: httpx.AsyncClient,
) -> None:
    refused = await client.get("/admin")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    door = await client.get("/admin", auth=ADMIN_AUTH)
    assert door.status_code == 303 and door.headers["location"] == "/admin/queues"


async def test_its_assets_come_from_the_app_not_a_cdn(client: httpx.AsyncClient) -> None:
    for asset, kind in (("admin.css", "text/css"), ("admin.js", "javascript")):
        response = await client.get(f"/admin/static/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    script = (await client.get("/admin/static/admin.js")).text
    assert "http://" not in script and "https://" not in script


def test_an_action_goes_back_only_to_a_dashboard_page() -> None:
    assert back("/admin/jobs?queue=payouts", "retried 2").headers["location"] == "/admin/jobs?queue=payouts"
    assert back("https://evil.example/", "x").headers["location"] == "/admin/queues"
    assert back("//evil.example/admin", "x").headers["location"] == "/admin/queues"
