"""Money maths: integers in the smallest unit, Decimal only for rates and display.

KES move as whole shillings (M-Pesa has no cents); USDC as micro-units (6 decimals).
The one rounding rule for conversion is written here and nowhere else: round DOWN,
so we never promise more USDC than the shillings received buy; the remainder
stays with the FX account.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from kiota.errors import InvalidInput

USDC_DECIMALS = 6
MICRO_PER_USDC = 10**USDC_DECIMALS

_USDC_TEXT = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]{1,6})?$")
_RATE_TEXT = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")


def parse_rate(text: str) -> Decimal:
    """Parse a KES-per-USD rate such as "129.50"; it must be a positive plain decimal."""
    if not isinstance(text, str) or not _RATE_TEXT.match(text.strip()):
        raise InvalidInput(f"rate must be a positive decimal string, got {text!r}")
    rate = Decimal(text.strip())
    if rate <= 0:
        raise InvalidInput("rate must be positive")
    return rate


def parse_usdc(text: str) -> int:
    """Parse a request's USDC decimal string (at most 6 decimals) into micro-units."""
    if not isinstance(text, str) or not _USDC_TEXT.match(text):
        raise InvalidInput('USDC amounts are decimal strings with at most 6 decimals, e.g. "25.50"')
    try:
        value = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise InvalidInput(f"not a decimal: {text!r}") from exc
    return int(value.scaleb(USDC_DECIMALS))


def format_usdc(micro: int) -> str:
    """Micro-units to the answer form: exactly 6 decimals, e.g. 25500000 -> "25.500000"."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_USDC)
    return f"{sign}{whole}.{frac:06d}"


def format_rate(rate: Decimal) -> str:
    """A rate as a plain decimal string, never in exponent form."""
    return format(rate, "f")


@dataclass(frozen=True, slots=True)
class Conversion:
    """KES converted to USDC at a fixed rate.

    `remainder_micro_fraction` is what rounding down kept back, in millionths of a
    micro-unit, so tests can prove that nothing was invented (0 <= it < 1,000,000).
    """

    amount_kes: int
    kes_per_usd: Decimal
    amount_usdc_micro: int
    remainder_micro_fraction: int


def kes_to_usdc(amount_kes: int, kes_per_usd: Decimal) -> Conversion:
    """Convert whole shillings to USDC micro-units, rounding down, in exact integer maths."""
    if not isinstance(amount_kes, int) or isinstance(amount_kes, bool) or amount_kes < 0:
        raise InvalidInput("amount_kes must be a non-negative integer")
    if kes_per_usd <= 0:
        raise InvalidInput("kes_per_usd must be positive")
    numerator, denominator = kes_per_usd.as_integer_ratio()
    # micro = amount_kes * 10**6 / (numerator / denominator), floored.
    scaled = amount_kes * MICRO_PER_USDC * denominator
    micro, rest = divmod(scaled, numerator)
    return Conversion(
        amount_kes=amount_kes,
        kes_per_usd=kes_per_usd,
        amount_usdc_micro=micro,
        remainder_micro_fraction=(rest * 1_000_000) // numerator,
    )
