"""What a request to the simulated Daraja must look like: Daraja's checks on push and query bodies.

`Validator` refuses, with Daraja's error answer (`DarajaRefusal`), what Daraja would refuse: field by field
in the order its docs list them, then the merchant (shortcode and Password). The simulator's behaviour
(`kiota.dev.daraja_sim_behaviour`) runs it on every body before anything happens; see `kiota.dev.daraja_sim`
for the decisions taken where Daraja is loose or undocumented.
"""

from __future__ import annotations

import base64
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar
from urllib.parse import urlsplit

from kiota.mpesa import NAIROBI

if TYPE_CHECKING:
    from kiota.dev.daraja_sim_behaviour import SimulatorConfig

T = TypeVar("T")

SANDBOX_SHORTCODE: Final = "174379"
SANDBOX_PASSKEY: Final = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"

# Daraja's own ceiling on one push, kept apart from kiota.mpesa.MAX_KES on purpose: the simulator
# stands in for Safaricom, so if our limit ever moved past Daraja's, tests would meet Daraja's refusal
# here instead of a simulator that moved with it.
MAX_AMOUNT: Final = 250_000

# Words Safaricom's docs tell integrators to keep out of their URLs (stated for C2B URL registration;
# applied to CallBackURL only when SimulatorConfig.reject_reserved_callback_words is set).
RESERVED_CALLBACK_WORDS: Final = ("mpesa", "m-pesa", "safaricom", "exe", "exec", "cmd", "sql", "query")

TRANSACTION_TYPES: Final = frozenset({"CustomerPayBillOnline", "CustomerBuyGoodsOnline"})

JsonObject: TypeAlias = dict[str, Any]


class DarajaRefusal(Exception):
    """A Daraja error answer: `{"requestId", "errorCode", "errorMessage"}` with its HTTP status."""

    def __init__(self, http_status: int, error_code: str, error_message: str) -> None:
        super().__init__(f"{error_code} {error_message}")
        self.http_status = http_status
        self.body: JsonObject = {
            "requestId": request_id(),
            "errorCode": error_code,
            "errorMessage": error_message,
        }

    @classmethod
    def bad_request(cls, field_name: str) -> DarajaRefusal:
        return cls(400, "400.002.02", f"Bad Request - Invalid {field_name}")


def invalid_token() -> DarajaRefusal:
    return DarajaRefusal(404, "404.001.03", "Invalid Access Token")


def timestamp_now() -> str:
    """Daraja's `Timestamp`: YYYYMMDDHHmmss in Nairobi time."""
    return datetime.now(NAIROBI).strftime("%Y%m%d%H%M%S")


def password_for(shortcode: str, passkey: str, timestamp: str) -> str:
    """Daraja's `Password`: base64(Shortcode + Passkey + Timestamp)."""
    return base64.b64encode(f"{shortcode}{passkey}{timestamp}".encode()).decode("ascii")


def random_chars(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def request_id() -> str:
    # Today's Daraja ids look like "2654-4b64-97ff-b827b542881d3130": hex groups plus a digit tail.
    hexdigits = "0123456789abcdef"
    head = "-".join(random_chars(hexdigits, 4) for _ in range(3))
    return f"{head}-{random_chars(hexdigits, 12)}{random_chars(string.digits, 6)}"


def _digits(value: Any, min_len: int, max_len: int) -> str | None:
    """A JSON number or string made of min_len..max_len digits, as text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    if min_len <= len(text) <= max_len and text.isascii() and text.isdigit():
        return text
    return None


def _amount(value: Any) -> int | None:
    # Whole shillings only: a float or a decimal string is refused even when integral, so that a client
    # never depends on how Daraja would round it.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        amount = int(value)
    else:
        return None
    return amount if 1 <= amount <= MAX_AMOUNT else None


_PHONE = re.compile(r"254[17]\d{8}")


def _phone(value: Any) -> str | None:
    text = _digits(value, 12, 12)
    return text if text is not None and _PHONE.fullmatch(text) else None


def _text(value: Any, max_len: int, *, allow_empty: bool = False) -> str | None:
    if not isinstance(value, str) or len(value) > max_len or (not value and not allow_empty):
        return None
    return value


# ---------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidPush:
    amount: int
    phone: str
    callback_url: str


class Validator:
    """Daraja's checks on push and query bodies, in the order its docs list the fields."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config

    def push(self, body: Any) -> ValidPush:
        if not isinstance(body, dict):
            raise DarajaRefusal(400, "400.002.05", "Invalid Request Payload")
        shortcode, password, timestamp = self._credentials(body)
        if body.get("TransactionType") not in TRANSACTION_TYPES:
            raise DarajaRefusal.bad_request("TransactionType")
        amount = _require(body, "Amount", _amount)
        _require(body, "PartyA", _phone)
        _require(body, "PartyB", lambda value: _digits(value, 5, 7))
        phone = _require(body, "PhoneNumber", _phone)
        callback_url = _require(body, "CallBackURL", self._callback_url)
        _require(body, "AccountReference", lambda value: _text(value, 12))
        if "TransactionDesc" in body:  # the only optional field, per the docs
            _require(body, "TransactionDesc", lambda value: _text(value, 13, allow_empty=True))
        self._merchant(shortcode, password, timestamp)
        return ValidPush(amount=amount, phone=phone, callback_url=callback_url)

    def query(self, body: Any) -> str:
        if not isinstance(body, dict):
            raise DarajaRefusal(400, "400.002.05", "Invalid Request Payload")
        shortcode, password, timestamp = self._credentials(body)
        checkout_request_id = _require(body, "CheckoutRequestID", lambda value: _text(value, 64))
        self._merchant(shortcode, password, timestamp)
        return checkout_request_id

    def _credentials(self, body: JsonObject) -> tuple[str, str, str]:
        shortcode = _require(body, "BusinessShortCode", lambda value: _digits(value, 5, 7))
        password = _require(body, "Password", lambda value: _text(value, 512))
        timestamp = _require(body, "Timestamp", self._timestamp)
        return shortcode, password, timestamp

    def _merchant(self, shortcode: str, password: str, timestamp: str) -> None:
        # Both answers and their texts are in Daraja's error table (500.001.1001); the bracketed prefix
        # of "Wrong credentials" is what the live API sends (safaricom/LNMOnlineAndroidSample issue #8).
        if shortcode != self.config.shortcode:
            raise DarajaRefusal(500, "500.001.1001", "Merchant does not exist")
        expected = password_for(shortcode, self.config.passkey, timestamp)
        if not secrets.compare_digest(password.encode(), expected.encode()):
            raise DarajaRefusal(500, "500.001.1001", "[MerchantValidate] - Wrong credentials")

    def _timestamp(self, value: Any) -> str | None:
        text = _digits(value, 14, 14)
        if text is None:
            return None
        try:
            stamped = datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=NAIROBI)
        except ValueError:
            return None
        skew = abs((datetime.now(NAIROBI) - stamped).total_seconds())
        return text if skew <= self.config.timestamp_tolerance_seconds else None

    def _callback_url(self, value: Any) -> str | None:
        if not isinstance(value, str) or any(char.isspace() for char in value):
            return None
        parts = urlsplit(value)
        schemes = {"https"} if self.config.require_https_callback else {"http", "https"}
        if parts.scheme not in schemes or not parts.hostname:
            return None
        lowered = value.lower()
        if self.config.reject_reserved_callback_words and any(w in lowered for w in RESERVED_CALLBACK_WORDS):
            return None
        return value


def _require(body: JsonObject, name: str, parse: Callable[[Any], T | None]) -> T:
    parsed = parse(body.get(name))
    if parsed is None:
        raise DarajaRefusal.bad_request(name)
    return parsed
