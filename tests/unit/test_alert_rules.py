"""ops/alerts.yml: valid Prometheus rules (promtool), its unit tests pass, and it names only metrics we export.

promtool comes from Debian's `prometheus` package, which scripts/setup installs: without it these tests
fail rather than skip, so that CI cannot pass with the rules unchecked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from api.routers.metrics import Scraped, database_families
from kiota.metrics import EVENTS
from kiota.store.metrics import Snapshot

OPS = Path(__file__).resolve().parents[2] / "ops"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    assert found is not None, "promtool is missing: run scripts/setup (it installs Debian's prometheus package)"
    return subprocess.run([found, *args], cwd=OPS, capture_output=True, text=True, timeout=60, check=False)


def test_the_alert_rules_are_valid() -> None:
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_alert_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def exported_names() -> set[str]:
    """Every sample name /metrics can show."""
    names = {"kiota_queue_depth"}
    snapshot = Snapshot({}, {}, 0, False, False, 0, 0, next_block=1)
    for family in database_families(Scraped(snapshot, head=1)):
        names.add(family.name)
    for event in EVENTS:
        if event.kind == "counter":
            names.add(event.name + "_total")
        elif event.kind == "histogram":
            names.update(event.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(event.name)
    return names


def test_the_alert_rules_name_only_exported_metrics() -> None:
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\bkiota_[a-z_]+", expr)}
    assert used <= exported_names(), used - exported_names()
    for wanted in ("QueueStuck", "FailureRate", "ScanLag", "TreasuryEth", "TreasuryUsdc", "ReviewQueue", "KillSwitch"):
        assert any(wanted in alert for alert in alerts), wanted
