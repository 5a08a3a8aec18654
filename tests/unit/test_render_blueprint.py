"""render.yaml: valid against Render's schema, and consistent with the code."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from jobs.worker import JOB_COMPLETION_WAIT_SECONDS, JOB_TIMEOUT_SECONDS
from kiota.job_names import Queue
from kiota.netaddr import parse_networks
from kiota.settings import Settings, WorkerSettings, load_settings
from tests.support import TEST_XPUB

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "tests" / "data" / "render.schema.json"  # a copy of shared/data/render.schema.json


def blueprint() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "render.yaml").read_text())
    return data


def test_blueprint_is_valid_against_renders_schema() -> None:
    jsonschema.validate(blueprint(), json.loads(SCHEMA.read_text()))


def _service(kind: str) -> dict[str, Any]:
    (found,) = [s for s in blueprint()["services"] if s["type"] == kind]
    return found


def _named(name: str) -> dict[str, Any]:
    (found,) = [s for s in blueprint()["services"] if s["name"] == name]
    return found


def _workers() -> list[dict[str, Any]]:
    return [s for s in blueprint()["services"] if s["type"] == "worker"]


def _vars(service: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's variables, its groups' included."""
    found: list[dict[str, Any]] = []
    for var in service.get("envVars", []):
        if "fromGroup" in var:
            (group,) = [g for g in blueprint()["envVarGroups"] if g["name"] == var["fromGroup"]]
            found += group["envVars"]
        else:
            found.append(var)
    return found


def _keys(service: dict[str, Any]) -> set[str]:
    return {v["key"] for v in _vars(service)}


def test_references_point_at_things_the_blueprint_defines() -> None:
    doc = blueprint()
    databases = {d["name"] for d in doc["databases"]}
    services = {(s["type"], s["name"]) for s in doc["services"]}
    groups = {g["name"] for g in doc.get("envVarGroups", [])}
    for service in doc["services"]:
        for var in service.get("envVars", []):
            if "fromDatabase" in var:
                assert var["fromDatabase"]["name"] in databases
            if "fromService" in var:
                assert (var["fromService"]["type"], var["fromService"]["name"]) in services
            if "fromGroup" in var:
                assert var["fromGroup"] in groups


def test_every_required_setting_is_provided() -> None:
    def required(cls: type[Settings]) -> set[str]:
        return {name.upper() for name, field in cls.model_fields.items() if field.is_required()}

    assert required(Settings) <= _keys(_service("web"))
    for worker in _workers():
        assert required(WorkerSettings) <= _keys(worker)
    assert "TREASURY_PRIVATE_KEY" not in _keys(_service("web"))  # the key lives with the payouts worker only


def _worker_settings(service: dict[str, Any]) -> WorkerSettings:
    """The settings a worker service would start with: its variables (secrets as valid stand-ins) and its
    start command's --queues, validated as `kiota worker` validates them."""
    stand_ins = {
        "TREASURY_PRIVATE_KEY": "0x" + "11" * 32,
        "TREASURY_ADDRESS": "0x" + "22" * 20,
        "DEPOSIT_XPUB": TEST_XPUB,
        "MPESA_CALLBACK_TOKEN": "t" * 32,
        "KES_PER_USD": "129.50",
        "BASE_RPC_URL": "https://base-sepolia.example",
    }
    values = {}
    for var in _vars(service):
        key = var["key"]
        values[key.lower()] = str(var["value"]) if "value" in var else stand_ins.get(key, "x" * 16)
    command = service["startCommand"].split()
    assert command[:2] == ["kiota", "worker"]
    queues = command[command.index("--queues") + 1] if "--queues" in command else None
    values.pop("python_version")
    return load_settings(WorkerSettings, _env_file=None, **values, **({"worker_queues": queues} if queues else {}))


def test_every_queue_has_a_worker_and_only_the_payouts_worker_holds_the_key() -> None:
    served: list[Queue] = []
    for service in _workers():
        settings = _worker_settings(service)
        served += settings.queues
        holds_key = "TREASURY_PRIVATE_KEY" in _keys(service)
        assert holds_key == (Queue.PAYOUTS in settings.queues), service["name"]
    assert sorted(served) == sorted(Queue)  # each queue served, by one service
    assert _named("kiota-worker-payouts")["startCommand"] == "kiota worker --queues payouts"


def test_queue_store_and_shutdown_are_safe_for_money() -> None:
    keyvalue = _service("keyvalue")
    assert keyvalue["maxmemoryPolicy"] == "noeviction"
    assert keyvalue["ipAllowList"] == []
    for worker in _workers():
        assert worker["maxShutdownDelaySeconds"] > JOB_COMPLETION_WAIT_SECONDS > JOB_TIMEOUT_SECONDS
    web = _service("web")
    assert web["preDeployCommand"] == "kiota migrate"
    assert web["healthCheckPath"] == "/health/ready"
    secrets = {"JWT_SECRET", "MPESA_CONSUMER_SECRET", "MPESA_PASSKEY", "MPESA_CALLBACK_TOKEN", "TREASURY_PRIVATE_KEY"}
    for service in (web, *_workers()):
        for var in _vars(service):
            if var["key"] in secrets:
                assert var == {"key": var["key"], "sync": False}


def test_the_database_is_private() -> None:
    (database,) = blueprint()["databases"]
    assert database["ipAllowList"] == []  # reachable from Render's private network only


def test_the_api_believes_x_forwarded_for_from_renders_private_network_only() -> None:
    # Behind Render's proxies the peer is always a proxy: without trusted proxies the per-address limit
    # would be one limit for every client, and Safaricom's callbacks would fail the allowlist.
    (trusted,) = [var["value"] for var in _vars(_service("web")) if var["key"] == "TRUSTED_PROXY_IPS"]
    networks = parse_networks(trusted)
    assert networks and all(network.is_private for network in networks)


def test_the_jwt_secret_goes_to_the_web_service_only() -> None:
    assert "JWT_SECRET" in _keys(_service("web"))
    for worker in _workers():
        assert "JWT_SECRET" not in _keys(worker)
    assert not WorkerSettings.model_fields["jwt_secret"].is_required()  # the worker starts without it


def test_python_is_a_patch_release_of_the_minor_we_test_on() -> None:
    (version,) = [v["value"] for v in _vars(_service("web")) if v["key"] == "PYTHON_VERSION"]
    for worker in _workers():
        assert [v["value"] for v in _vars(worker) if v["key"] == "PYTHON_VERSION"] == [version]
    major, minor, patch = (int(part) for part in str(version).split("."))  # fully qualified: X.Y.Z
    assert (major, minor) == sys.version_info[:2]
    assert patch >= sys.version_info.micro  # never older than what the tests ran on
