"""M-Pesa rules, pure: phone numbers, callback parsing, and what a callback does to a deposit.

No I/O here. The API and the jobs call these functions and carry out the decision.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from kiota.errors import InvalidInput

MAX_KES = 250_000  # M-Pesa's ceiling on one transaction: more is refused here, and by Daraja

# Kenya keeps East Africa Time (UTC+3) all year, without daylight saving: a fixed offset is exact and
# needs no tzdata on the machine. Daraja's timestamps and callback dates are in this zone.
NAIROBI = timezone(timedelta(hours=3), "EAT")

_PHONE_FORMS = (  # used with fullmatch: "$" alone would also match before a trailing newline
    re.compile(r"254([71][0-9]{8})"),
    re.compile(r"\+254([71][0-9]{8})"),
    re.compile(r"0([71][0-9]{8})"),
)
MAX_RESULT_CODE = 2**31 - 1  # the column is an integer
MAX_CALLBACK_AMOUNT = 10**9  # far above any M-Pesa amount; beyond it a body is not Daraja's
MAX_NESTING = 32  # Daraja's callback nests 6 deep

# What Daraja's result codes mean, in words a customer understands.
RESULT_REASONS: dict[int, str] = {
    1: "The M-Pesa balance was insufficient.",
    2: "The amount is below the M-Pesa minimum.",
    3: "The amount is above the M-Pesa maximum.",
    4: "The M-Pesa daily limit was reached.",
    8: "The M-Pesa account would exceed its maximum balance.",
    17: "The same amount was sent to the same customer within 2 minutes; try again later.",
    1019: "The payment request expired before it was completed.",
    1025: "M-Pesa could not send the payment prompt.",
    1031: "The payment was cancelled on the phone.",
    1032: "The payment was cancelled on the phone.",
    1037: "The phone could not be reached.",
    2001: "The M-Pesa PIN was wrong.",
    2028: "The M-Pesa account is not permitted to make this payment.",
    8006: "The M-Pesa PIN is locked.",
}


def normalise_phone(text: object) -> str:
    """One of 2547…, 2541…, 07…, 01… or +254… to the 12-digit 254… form; anything else is refused."""
    if isinstance(text, str):
        for form in _PHONE_FORMS:
            match = form.fullmatch(text)
            if match:
                return "254" + match[1]
    raise InvalidInput("phone must be a Kenyan mobile number: 2547XXXXXXXX, 07XXXXXXXX, 01XXXXXXXX or +254…")


def mask_phone(phone: str | None) -> str:
    """254708374149 → 2547****4149; phone numbers are stored and logged only like this."""
    if not phone:
        return ""
    digits = str(phone)
    if len(digits) < 8:
        return "*" * len(digits)
    return digits[:4] + "*" * (len(digits) - 8) + digits[-4:]


# A Kenyan mobile number as callbacks carry it (2547…, 2541…, or 07…/01…): never shown whole.
_PHONE = re.compile(r"(?<!\d)(?:254[17]\d{8}|0[17]\d{8})(?!\d)")


def mask_phones(text: str) -> str:
    """Every phone number in a raw body masked as stored ones are (kiota/mpesa.py `mask_phone`)."""
    return _PHONE.sub(lambda match: mask_phone(normalise_phone(match[0])), text)


def validate_amount_kes(amount: object, minimum: int) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidInput("amount_kes must be a whole number of shillings")
    if not minimum <= amount <= MAX_KES:
        raise InvalidInput(f"amount_kes must be between {minimum} and {MAX_KES}")
    return amount


def reason_for(code: int, description: str | None) -> str:
    return RESULT_REASONS.get(code) or (description or f"M-Pesa result code {code}")


# What the app shows for a deposit that is not going well. Operators' reasons (RPC errors, key
# warnings, the callback's own text, which anyone holding the URL can write) stay in review_reason
# and failure_reason, read with `kiota ops stuck` and `kiota ops review`.
USER_CHECKING = "We are checking this payment. No action is needed."
USER_PROMPT_NOT_SENT = "M-Pesa could not send the payment prompt. Please try again later."
USER_NOT_PAID = "The M-Pesa payment did not go through."


def user_failure_reason(status: str, failure_code: str | None) -> str | None:
    """`failure_reason` as the app shows it: one of our own sentences, never a stored reason."""
    if status == "needs_review":
        return USER_CHECKING
    if status != "failed":
        return None
    if failure_code and "." in failure_code:  # Daraja refused the push itself (an errorCode: 500.001.1001)
        return USER_PROMPT_NOT_SENT
    try:  # a ResultCode, from a callback or the STK query
        return RESULT_REASONS.get(int(failure_code or ""), USER_NOT_PAID)
    except ValueError:
        return USER_NOT_PAID


class MalformedCallback(InvalidInput):
    """A callback body that is not Daraja's STK callback shape."""


@dataclass(frozen=True, slots=True)
class StkCallback:
    merchant_request_id: str
    checkout_request_id: str
    result_code: int
    result_desc: str
    amount_kes: int | None = None
    receipt: str | None = None
    transaction_at: datetime | None = None
    phone_masked: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.result_code == 0


def _result_code(value: Any) -> int:
    if isinstance(value, bool):
        raise MalformedCallback("ResultCode is not a number")
    if isinstance(value, int) and abs(value) <= MAX_RESULT_CODE:
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,9}", value.strip()):
        return int(value.strip())
    raise MalformedCallback("ResultCode is not a number in range")


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(text: str) -> bool:
    """PostgreSQL text holds no NUL and no lone surrogate."""
    return _UNSTORABLE.search(text) is None


def _text(container: dict[str, Any], name: str, max_length: int = 200) -> str:
    value = container.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_length or not _storable(value):
        raise MalformedCallback(f"{name} is missing or not a plain string")
    return value


def _description(value: Any) -> str:
    text = str(value or "")[:500]
    return text if _storable(text) else text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")


def _whole_amount(value: Any) -> int:
    # Daraja sends 1.00 or 1500 (a JSON number); a fraction of a shilling cannot exist.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedCallback("Amount is not a number")
    if isinstance(value, float) and not value.is_integer():
        raise MalformedCallback("Amount is not a whole number of shillings")
    if not 0 < value <= MAX_CALLBACK_AMOUNT:
        raise MalformedCallback("Amount is out of range")
    amount = int(value)
    return amount


_TRANSACTION_DATE = re.compile(r"(20[0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})")


def _transaction_time(value: Any) -> datetime:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    match = _TRANSACTION_DATE.fullmatch(text)  # exactly 14 digits: strptime alone accepts short forms
    if match is None:
        raise MalformedCallback("TransactionDate is not YYYYMMDDHHmmss")
    try:  # datetime() checks the ranges strptime would (month 13, hour 25, Feb 30, second 60 …)
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        local = datetime(year, month, day, hour, minute, second, tzinfo=NAIROBI)
    except ValueError:
        raise MalformedCallback("TransactionDate is not YYYYMMDDHHmmss") from None
    return local.astimezone(UTC)


def _too_deep(raw: bytes) -> bool:
    """Brackets nest deeper than MAX_NESTING, counted before parsing: a deep body must not reach
    json.loads's recursion."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:  # cannot nest deeper than the brackets there are
        return False
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_NESTING:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def parse_callback(raw: bytes) -> StkCallback:
    """Strictly parse Daraja's STK callback; items are found by Name, never by position."""
    if _too_deep(raw):
        raise MalformedCallback("body nests too deep")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedCallback("body is not JSON") from None
    body = document.get("Body") if isinstance(document, dict) else None
    callback = body.get("stkCallback") if isinstance(body, dict) else None
    if not isinstance(callback, dict):
        raise MalformedCallback("Body.stkCallback is missing")
    code = _result_code(callback.get("ResultCode"))
    parsed = StkCallback(
        merchant_request_id=_text(callback, "MerchantRequestID"),
        checkout_request_id=_text(callback, "CheckoutRequestID"),
        result_code=code,
        result_desc=_description(callback.get("ResultDesc")),
    )
    if code != 0:
        return parsed
    metadata = callback.get("CallbackMetadata")
    items = metadata.get("Item") if isinstance(metadata, dict) else None
    if not isinstance(items, list):
        raise MalformedCallback("a successful callback needs CallbackMetadata.Item")
    values: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("Name"), str):
            raise MalformedCallback("CallbackMetadata.Item entries need a Name")
        if "Value" in item:  # e.g. {"Name": "Balance"} comes without a Value
            values[item["Name"]] = item["Value"]
    if "Amount" not in values or "MpesaReceiptNumber" not in values:
        raise MalformedCallback("a successful callback needs Amount and MpesaReceiptNumber")
    receipt = values["MpesaReceiptNumber"]
    if not isinstance(receipt, str) or not re.fullmatch(r"[A-Z0-9]{6,20}", receipt):
        raise MalformedCallback("MpesaReceiptNumber is malformed")
    phone = values.get("PhoneNumber")
    phone_digits = str(phone) if isinstance(phone, int | str) and str(phone).isdigit() else None
    return StkCallback(
        merchant_request_id=parsed.merchant_request_id,
        checkout_request_id=parsed.checkout_request_id,
        result_code=0,
        result_desc=parsed.result_desc,
        amount_kes=_whole_amount(values["Amount"]),
        receipt=receipt,
        transaction_at=_transaction_time(values["TransactionDate"]) if "TransactionDate" in values else None,
        phone_masked=mask_phone(phone_digits) if phone_digits else None,
    )


class Action(StrEnum):
    """What an accepted callback does."""

    SUCCEED = "succeed"  # pending → processing: book the KES, enqueue the completion
    FAIL = "fail"  # pending → failed with the code's reason
    DUPLICATE = "duplicate"  # the same result again: record only
    ATTACH_RECEIPT = "attach_receipt"  # the success the STK query already booked: keep its receipt, nothing else
    REVIEW = "review"  # money whose owner or amount is unclear: suspense + review, never credited
    NOTE_FAILURE = "note_failure"  # a failure for nothing we know, or after the fact: record only


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str | None = None
    deposit_status: str | None = None  # the deposit's new status, when it changes


@dataclass(frozen=True, slots=True)
class DepositView:
    """What the decision needs to know of the deposit a callback names."""

    status: str
    amount_kes: int
    receipt: str | None
    failure_code: str | None
    received_kes: int | None = None  # set once a success was booked (by a callback or the STK query)


RECEIPT_USED_ELSEWHERE = "this M-Pesa receipt was already used by another deposit"


def decide(deposit: DepositView | None, callback: StkCallback, *, receipt_used_elsewhere: bool = False) -> Decision:
    """The one place that says what a callback does to a deposit.

    `receipt_used_elsewhere`: the callback's receipt is already on a deposit. Booking it
    again (or attaching it) would spend one payment twice: a person looks instead.
    """
    decision = _decide(deposit, callback)
    if receipt_used_elsewhere and decision.action in (Action.SUCCEED, Action.ATTACH_RECEIPT):
        return Decision(Action.REVIEW, RECEIPT_USED_ELSEWHERE, "needs_review")
    return decision


def _decide(deposit: DepositView | None, callback: StkCallback) -> Decision:
    if deposit is None:
        if callback.succeeded:
            return Decision(Action.REVIEW, "a successful callback for an unknown CheckoutRequestID")
        return Decision(Action.NOTE_FAILURE)
    if callback.succeeded:
        return _decide_success(deposit, callback)
    if deposit.status == "pending":
        return Decision(Action.FAIL, reason_for(callback.result_code, callback.result_desc), "failed")
    if deposit.status == "failed" and deposit.failure_code == str(callback.result_code):
        return Decision(Action.DUPLICATE)
    # A failure after a success (or a different failure): the first answer stands; a person looks.
    return Decision(Action.NOTE_FAILURE, f"a later callback with result {callback.result_code} contradicts")


def _decide_success(deposit: DepositView, callback: StkCallback) -> Decision:
    if deposit.receipt is not None:
        if deposit.receipt == callback.receipt:
            return Decision(Action.DUPLICATE)
        return Decision(Action.REVIEW, "a second successful callback with another receipt")
    if deposit.received_kes is not None and callback.amount_kes == deposit.received_kes:
        # The STK query found this payment first (it carries no receipt): the same money, once.
        return Decision(Action.ATTACH_RECEIPT)
    if deposit.status == "pending":
        if callback.amount_kes != deposit.amount_kes:
            return Decision(
                Action.REVIEW,
                f"amount mismatch: pushed {deposit.amount_kes} KES, callback says {callback.amount_kes} KES",
                "needs_review",
            )
        return Decision(Action.SUCCEED, deposit_status="processing")
    if deposit.status == "failed":
        return Decision(Action.REVIEW, "a successful callback after the deposit had failed", "needs_review")
    return Decision(Action.REVIEW, f"a successful callback for a deposit that is {deposit.status}")
