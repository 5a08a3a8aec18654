"""Pure reading of Daraja's answers: what an HTTP answer of the STK push, the STK query or OAuth means.

No I/O: `Answer` holds one answer already received, and `push_outcome` / `query_outcome` turn it into
`PushAccepted`, `QueryResult` or one of the typed errors of `kiota.errors`, by the rule told in
`kiota.daraja`'s docstring (a refusal is definite only when Daraja provably sent no prompt).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
import structlog

from kiota.errors import DarajaError, DarajaRefused, DarajaTransient, DarajaUncertain, DarajaUnreachable

log = structlog.get_logger("kiota.daraja")  # the client's logger: these lines are its story

INVALID_TOKEN: Final = "404.001.03"  # noqa: S105 - an error code, not a secret
BUSY: Final = "500.003.02"
# On the push this code means refused (merchant missing, wrong credentials, subscriber locked);
# on the query it means "The transaction is being processed".
MERCHANT_OR_PROCESSING: Final = "500.001.1001"
QUOTA: Final = "500.003.03"
PENDING_RESULT_CODE: Final = "4999"

# Push answers with a 5xx status that are still definite refusals: Daraja's gateway or its merchant check
# turned the request away before any prompt was sent. Any other 5xx (e.g. 500.003.1001 "Internal Server
# Error") may have happened after the prompt went out, so it is uncertain.
PUSH_REFUSED_5XX_CODES: Final = frozenset({MERCHANT_OR_PROCESSING, BUSY, QUOTA})
# Statuses that say "not now" rather than "no" on a read-only call.
TRANSIENT_STATUSES: Final = frozenset({408, 429})
DEFAULT_TOKEN_LIFETIME: Final = 3599  # Daraja's documented expires_in, used if an answer lacks it


@dataclass(frozen=True)
class PushAccepted:
    """Daraja accepted the push: a PIN prompt is on its way; the callback or the query tells the end."""

    merchant_request_id: str
    checkout_request_id: str
    response_description: str
    customer_message: str


@dataclass(frozen=True)
class QueryResult:
    """What the STK query says: still `pending`, or `resolved` with Daraja's ResultCode (0 = paid).

    `result_code` is None exactly when pending. A query result never overrides a callback that already
    reported success: the sandbox has answered FAILED for pushes that were paid.
    """

    status: Literal["pending", "resolved"]
    result_code: int | None
    result_desc: str | None


def parse_expires_in(value: object) -> int | None:
    """OAuth's expires_in, which Daraja has sent both as a number and as a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value.strip())
    return None


def result_code_of(value: object) -> int | None:
    # A string in the query ("1032"), a number in the callback: accept both.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value.strip())
    return None


@dataclass(frozen=True)
class Answer:
    """One HTTP answer from Daraja; `body` is its JSON object, None when it sent anything else."""

    http_status: int
    body: Mapping[str, Any] | None

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        try:
            parsed = response.json()
        except ValueError:  # not JSON (an HTML error page, an empty body, bad encoding)
            parsed = None
        return cls(response.status_code, parsed if isinstance(parsed, dict) else None)

    def text(self, name: str) -> str | None:
        value = None if self.body is None else self.body.get(name)
        return value if isinstance(value, str) else None

    @property
    def error_code(self) -> str | None:
        return self.text("errorCode")

    @property
    def error_message(self) -> str:
        # Newer gateway builds have answered {"resultCode", "resultDesc"} instead of errorCode/errorMessage.
        return self.text("errorMessage") or self.text("resultDesc") or f"Daraja answered HTTP {self.http_status}"


def push_outcome(answer: Answer) -> PushAccepted:
    status, code = answer.http_status, answer.error_code
    if status == 200 and answer.body is not None:
        response_code = answer.body.get("ResponseCode")
        checkout_request_id = answer.text("CheckoutRequestID")
        if str(response_code) == "0" and checkout_request_id:
            return PushAccepted(
                merchant_request_id=answer.text("MerchantRequestID") or "",
                checkout_request_id=checkout_request_id,
                response_description=answer.text("ResponseDescription") or "",
                customer_message=answer.text("CustomerMessage") or "",
            )
        if response_code is not None and str(response_code) != "0":
            # Daraja answered, and said no: nothing was started.
            message = answer.text("ResponseDescription") or "M-Pesa refused the request"
            log.warning("daraja.push.refused", code=str(response_code), http_status=status, message=message)
            raise DarajaRefused(message, code=str(response_code), http_status=status)
    if 400 <= status < 500 or code in PUSH_REFUSED_5XX_CODES:
        log.warning("daraja.push.refused", code=code, http_status=status, message=answer.error_message)
        raise DarajaRefused(answer.error_message, code=code, http_status=status)
    # A 5xx without Daraja's error body, an unknown 5xx code, or a 200 we cannot read: the push may have
    # been accepted, and without its CheckoutRequestID we cannot even ask. Never repeat it.
    log.warning("daraja.push.uncertain", code=code, http_status=status)
    raise DarajaUncertain(
        f"M-Pesa gave an answer that does not say whether the push was sent (HTTP {status})",
        code=code,
        http_status=status,
    )


def query_outcome(answer: Answer) -> QueryResult:
    status, code = answer.http_status, answer.error_code
    if status == 200 and answer.body is not None:
        raw = answer.body.get("ResultCode")
        desc = answer.text("ResultDesc")
        if str(raw) == PENDING_RESULT_CODE:
            return QueryResult("pending", None, desc)
        result_code = result_code_of(raw)
        if result_code is not None:
            return QueryResult("resolved", result_code, desc)
    if code == MERCHANT_OR_PROCESSING:
        if "process" not in answer.error_message.lower():
            # The same code also means "wrong credentials" / "merchant missing"; staying pending is the
            # safe reading (the caller's check limit ends it), but an operator should see it.
            log.warning("daraja.query.odd_pending", code=code, message=answer.error_message)
        return QueryResult("pending", None, answer.error_message)
    if status >= 500 or status in TRANSIENT_STATUSES or status == 200 or code == INVALID_TOKEN:
        # Busy, quota, gateway trouble, a 200 we cannot read, or our fresh token voided again at once
        # (another process refreshed it meanwhile): asking again later is harmless.
        raise DarajaTransient(answer.error_message, code=code, http_status=status)
    raise DarajaRefused(answer.error_message, code=code, http_status=status)


_CODE = re.compile(r"[0-9A-Za-z.]{1,24}")


def error_label(error: DarajaError) -> str:
    """A failure as a bounded metric label: Daraja's own code ("500.001.1001"), else the HTTP status it
    answered with, else what kind of failure it was (nothing answered)."""
    if error.code is not None and _CODE.fullmatch(error.code):
        return error.code
    if error.http_status is not None:
        return f"http_{error.http_status}"
    for kind, label in (
        (DarajaUnreachable, "unreachable"),
        (DarajaUncertain, "uncertain"),
        (DarajaTransient, "transient"),
    ):
        if isinstance(error, kind):
            return label
    return "refused"
