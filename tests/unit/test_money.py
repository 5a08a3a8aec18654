from decimal import Decimal

import pytest

from kiota.errors import InvalidInput
from kiota.money import format_usdc, kes_to_usdc, parse_rate, parse_usdc


@pytest.mark.parametrize(
    ("kes", "rate", "micro"),
    [
        (1500, "129.50", 11_583_011),  # 11.583011583... rounded down
        (1295, "129.50", 10_000_000),  # exact
        (10, "129.50", 77_220),  # 0.077220077...
        (1, "129.50", 7_722),
        (0, "129.50", 0),
        (250_000, "129.50", 1_930_501_930),
        (100, "100", 1_000_000),
        (1, "3", 333_333),  # 0.333333... never rounded up
        (2, "3", 666_666),  # 0.666666... never rounded up to .666667
        (129, "129.499999", 996_139),
        (1000, "0.000001", 1_000_000_000_000_000),
        (7, "128.7654321", 54_362),
    ],
)
def test_kes_to_usdc_rounds_down_exactly(kes: int, rate: str, micro: int) -> None:
    conversion = kes_to_usdc(kes, Decimal(rate))
    assert conversion.amount_usdc_micro == micro
    # Nothing invented: what we pay is worth at most what was received.
    assert Decimal(micro) * Decimal(rate) <= Decimal(kes) * 10**6
    assert (Decimal(micro) + 1) * Decimal(rate) > Decimal(kes) * 10**6
    assert 0 <= conversion.remainder_micro_fraction < 1_000_000


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True, None])
def test_kes_to_usdc_refuses_non_integer_shillings(bad: object) -> None:
    with pytest.raises(InvalidInput):
        kes_to_usdc(bad, Decimal("129.5"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0.000000"),
        (1, "0.000001"),
        (25_500_000, "25.500000"),
        (125_500_000, "125.500000"),
        (1_000_000_000_000, "1000000.000000"),
        (-1, "-0.000001"),
    ],
)
def test_format_usdc_has_exactly_six_decimals(micro: int, text: str) -> None:
    assert format_usdc(micro) == text


@pytest.mark.parametrize(
    ("text", "micro"),
    [("25.50", 25_500_000), ("25", 25_000_000), ("0.000001", 1), ("0", 0), ("10.123456", 10_123_456)],
)
def test_parse_usdc(text: str, micro: int) -> None:
    assert parse_usdc(text) == micro


@pytest.mark.parametrize("bad", ["25.1234567", "-1", "1e3", " 1", "01", "", ".5", "5.", "NaN", "Infinity", 25.5, 25])
def test_parse_usdc_refuses(bad: object) -> None:
    with pytest.raises(InvalidInput):
        parse_usdc(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", ["129.50", "1", "0.5", " 129.5 "])
def test_parse_rate(good: str) -> None:
    assert parse_rate(good) == Decimal(good.strip())


@pytest.mark.parametrize("bad", ["0", "0.0", "-129.5", "1e2", "abc", "", "NaN"])
def test_parse_rate_refuses(bad: str) -> None:
    with pytest.raises(InvalidInput):
        parse_rate(bad)
