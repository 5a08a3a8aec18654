"""Test-only crash points: the recovery tests kill a worker at each step of a payout."""

from __future__ import annotations

import os
import signal
from collections import Counter

import structlog

log = structlog.get_logger(__name__)

_reached: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """KIOTA_FAILPOINT=<name> kills this process right there (SIGKILL); <name>@<n>, the n-th time it is
    reached (a crash in the middle of the lane's pipeline, with earlier payouts settled and later ones in
    flight)."""
    wanted = os.environ.get("KIOTA_FAILPOINT")
    if wanted is None:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] >= int(nth or 1):
        log.warning("failpoint reached: killing the worker", failpoint=wanted)
        os.kill(os.getpid(), signal.SIGKILL)
