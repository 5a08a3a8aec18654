"""What an operator typed in the dashboard's search box, read as the keys it may be (pure).

One box finds a deposit by its id, CheckoutRequestID, M-Pesa receipt or payout tx hash, an intent by its id or
a transfer's tx hash, everything of a user by their id, and deposits by a phone's last digits. Phones are
stored masked (`2547****4149`, kiota/mpesa.py `mask_phone`), so only the last four digits can be matched, and
a whole number narrows the match to its masked form; a phone is never shown unmasked.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from kiota.errors import InvalidInput
from kiota.mpesa import mask_phone, normalise_phone

MIN_PHONE_DIGITS = 4
MAX_QUERY = 200
_PHONE_CHARS = re.compile(r"\+?[0-9 ]+")


@dataclass(frozen=True, slots=True)
class Terms:
    """The text as typed (trimmed), and what else it may be."""

    text: str
    as_uuid: uuid.UUID | None = None
    last_digits: str | None = None  # a phone's last four digits
    phone_masked: str | None = None  # a whole phone, as it is stored


def parse(query: str) -> Terms | None:
    """None for an empty query; InvalidInput for one too long to be any key."""
    text = query.strip()
    if not text:
        return None
    if len(text) > MAX_QUERY:
        raise InvalidInput(f"a search is at most {MAX_QUERY} characters")
    try:
        as_uuid: uuid.UUID | None = uuid.UUID(text)
    except ValueError:
        as_uuid = None
    last_digits = phone_masked = None
    if _PHONE_CHARS.fullmatch(text):
        digits = re.sub(r"\D", "", text)
        if len(digits) >= MIN_PHONE_DIGITS:
            last_digits = digits[-MIN_PHONE_DIGITS:]
            try:
                phone_masked = mask_phone(normalise_phone(text.replace(" ", "")))
            except InvalidInput:
                phone_masked = None
    return Terms(text, as_uuid, last_digits, phone_masked)
