"""structlog set-up: one stream of JSON lines in production, pretty on a terminal.

Context (request_id, job_id, deposit_id …) is bound with contextvars, so every
line of a request or job carries it, the lines of libraries that log through
stdlib `logging` (uvicorn, arq, httpx …) included: they are rendered by the same
processors. Secrets are never passed to a logger; the callback token is redacted
from paths by `redact_path`, and from every library line. A job's own lines (info and above)
are also kept for its job history (`JobLogs`), after that redaction.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections import deque
from types import TracebackType
from typing import Any

import structlog
from structlog.types import EventDict

_CALLBACK_PATH = re.compile(r"(/mpesa-callback/)[^/?#]+")

# Libraries' per-request INFO lines: one per RPC call or Daraja request (thousands a minute);
# their warnings and errors still come through.
_QUIET_BELOW_WARNING = ("httpx", "httpcore")


def redact_path(path: str) -> str:
    """Hide the secret segment of the M-Pesa callback URL."""
    return _CALLBACK_PATH.sub(r"\1[redacted]", path)


def _redact_library_line(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """A library may echo a request line or URL (an error, a traceback): no callback token in it."""
    for key in ("event", "exception"):
        value = event_dict.get(key)
        if isinstance(value, str) and "/mpesa-callback/" in value:
            event_dict[key] = redact_path(value)
    return event_dict


# What a job keeps of its own lines: info and above, the newest JOB_LOG_LINES (the database keeps
# as many, `job_logs_append`), each value at most JOB_LOG_VALUE_CHARS long.
JOB_LOG_LINES = 200
JOB_LOG_VALUE_CHARS = 4000
_JOB_LOG_LEVELS = frozenset({"info", "warning", "error", "critical", "exception"})
_NOT_KEPT = frozenset({"job_id", "job_try"})


class JobLogs:
    """The log lines of the jobs running in this process, by job id, until their history takes them
    (`kiota.job_history.JobHistory` stores them with the attempt's end). A structlog processor:
    a line is kept when a job id is bound (jobs/worker.py `on_job_start`), after the redaction."""

    def __init__(self, per_job: int = JOB_LOG_LINES, jobs: int = 1000) -> None:
        self._per_job = per_job
        self._jobs = jobs  # a job that never ends (its worker cancelled) must not keep its lines forever
        self._lines: dict[str, deque[dict[str, object]]] = {}

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        job_id = event_dict.get("job_id")
        if isinstance(job_id, str) and event_dict.get("level") in _JOB_LOG_LEVELS:
            lines = self._lines.get(job_id)
            if lines is None:
                if len(self._lines) >= self._jobs:
                    del self._lines[next(iter(self._lines))]
                lines = self._lines[job_id] = deque(maxlen=self._per_job)
            lines.append({key: _plain(value) for key, value in event_dict.items() if key not in _NOT_KEPT})
        return event_dict

    def take(self, job_id: str) -> list[dict[str, object]]:
        """The job's lines since the last take, oldest first."""
        return list(self._lines.pop(job_id, ()))


def _plain(value: object) -> object:
    """A value as JSON keeps it: numbers, booleans and None as they are, anything else as text, shortened,
    and a callback token never (a library may echo a URL)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    return redact_path(text[:JOB_LOG_VALUE_CHARS])


# This process's jobs' lines: logging is configured once per process, and the job history reads them.
job_logs = JobLogs()


def _not_an_arq_job_line(record: logging.LogRecord) -> bool:
    """arq's INFO line as each job starts, ends, is retried or aborted (its templates begin with
    the job's time, "%6.2fs"): the job history (`job_runs`) and the jobs' own lines say it, with
    ids, and the cron ticks alone would write several a second. arq's start-up and shutdown lines,
    and every warning and error (a job's failure, retries exhausted), are kept."""
    return not (record.levelno == logging.INFO and isinstance(record.msg, str) and record.msg.startswith("%6.2fs"))


def configure_logging(*, json: bool | None = None, level: int = logging.INFO) -> None:
    if json is None:
        # KIOTA_LOG_FORMAT=console|json overrides the terminal check (`kiota dev` pipes its children).
        chosen = os.environ.get("KIOTA_LOG_FORMAT", "")
        json = chosen == "json" or (chosen != "console" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    # What both kinds of line get before they are rendered: the bound ids, the level, the time.
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            job_logs,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write() per line, as the stdlib handler below does: lines of the two never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        # A process configures logging once, at its start: each module's logger is then built
        # once, not at every call (tests that capture logs never call this).
        cache_logger_on_first_use=True,
    )
    # Libraries log through stdlib: their records are rendered by the same processors into the
    # same stream (our own lines do not take this slower path: they stay on structlog's).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.StackInfoRenderer(),
                structlog.processors.format_exc_info,
                _redact_library_line,
                job_logs,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_BELOW_WARNING:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.getLogger("arq.worker").addFilter(_not_an_arq_job_line)
    # uvicorn's own access log is off (ours redacts the callback path); uvicorn.run is given
    # log_config=None, so its other lines reach this handler.
    logging.getLogger("uvicorn.access").disabled = True
    # Python's warnings and a crash's traceback would be plain text in the stream: lines too.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    structlog.get_logger("kiota").critical("uncaught exception", exc_info=(kind, error, traceback))
