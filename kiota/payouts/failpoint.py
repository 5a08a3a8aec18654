"""Test-only crash points: the recovery tests kill a worker at each step of a payout."""

from __future__ import annotations

import os
import signal

import structlog

log = structlog.get_logger(__name__)


def failpoint(name: str) -> None:
    """KIOTA_FAILPOINT=<name> kills this process right there (SIGKILL)."""
    if os.environ.get("KIOTA_FAILPOINT") == name:
        log.warning("failpoint reached: killing the worker", failpoint=name)
        os.kill(os.getpid(), signal.SIGKILL)
