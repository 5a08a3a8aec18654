"""structlog set-up: JSON lines in production, pretty on a terminal.

Context (request_id, job_id, deposit_id …) is bound with contextvars, so every
line of a request or job carries it. Secrets are never passed to a logger; the
callback token is redacted from paths by `redact_path`.
"""

from __future__ import annotations

import logging
import os
import re
import sys

import structlog

_CALLBACK_PATH = re.compile(r"(/mpesa-callback/)[^/?#]+")


def redact_path(path: str) -> str:
    """Hide the secret segment of the M-Pesa callback URL."""
    return _CALLBACK_PATH.sub(r"\1[redacted]", path)


def configure_logging(*, json: bool | None = None, level: int = logging.INFO) -> None:
    if json is None:
        # KIOTA_LOG_FORMAT=console|json overrides the terminal check (`kiota dev` pipes its children).
        chosen = os.environ.get("KIOTA_LOG_FORMAT", "")
        json = chosen == "json" or (chosen != "console" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        # A process configures logging once, at its start: each module's logger is then built
        # once, not at every call (tests that capture logs never call this).
        cache_logger_on_first_use=True,
    )
    # Libraries that log through stdlib (uvicorn, arq) go to stderr at the same level;
    # uvicorn's own access log is off: ours redacts the callback path.
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.access").disabled = True
