import pytest

from kiota import ledger
from kiota.errors import LedgerError
from kiota.ledger import Direction, Posting

D, C = Direction.DEBIT, Direction.CREDIT


@pytest.mark.parametrize(
    ("postings", "error"),
    [
        ((), "at least two"),
        ((Posting("a", "KES", D, 5),), "at least two"),
        ((Posting("a", "KES", D, 5), Posting("b", "KES", C, 4)), "does not balance in KES"),
        ((Posting("a", "KES", D, 5), Posting("b", "USDC", C, 5)), "does not balance in KES, USDC"),
        ((Posting("a", "KES", D, 0), Posting("b", "KES", C, 0)), "positive integers"),
        ((Posting("a", "KES", D, -5), Posting("b", "KES", C, -5)), "positive integers"),
        ((Posting("a", "KES", D, 1.5), Posting("b", "KES", C, 1.5)), "positive integers"),  # type: ignore[arg-type]
        ((Posting("a", "KES", D, True), Posting("b", "KES", C, True)), "positive integers"),
        ((Posting("a", "EUR", D, 5), Posting("b", "EUR", C, 5)), "unknown asset"),
        (
            (
                Posting("a", "KES", D, 5),
                Posting("b", "KES", C, 5),
                Posting("c", "USDC", D, 7),
                Posting("d", "USDC", C, 6),
            ),
            "does not balance in USDC",
        ),
    ],
)
def test_unbalanced_or_bad_entries_are_refused(postings: tuple[Posting, ...], error: str) -> None:
    with pytest.raises(LedgerError, match=error):
        ledger.Entry(key="k", kind="test", postings=postings)


def _per_asset(entry: ledger.Entry) -> dict[str, tuple[int, int]]:
    sums: dict[str, tuple[int, int]] = {}
    for p in entry.postings:
        debit, credit = sums.get(p.asset, (0, 0))
        sums[p.asset] = (debit + p.amount, credit) if p.direction is D else (debit, credit + p.amount)
    return sums


@pytest.mark.parametrize(
    ("entry", "key", "moves"),
    [
        (
            ledger.mpesa_received("dep1", 1500),
            "mpesa:dep1:received",
            {("mpesa_float:KES", "D", 1500), ("customer_pending:KES", "C", 1500)},
        ),
        (
            ledger.mpesa_converted_and_paid("dep1", "u1", 1500, 11_583_011),
            "mpesa:dep1:completed",
            {
                ("customer_pending:KES", "D", 1500),
                ("fx:KES", "C", 1500),
                ("fx:USDC", "D", 11_583_011),
                ("user:u1:USDC", "C", 11_583_011),
                ("custody:USDC", "D", 11_583_011),
                ("treasury:USDC", "C", 11_583_011),
            },
        ),
        (
            ledger.usdc_received(8453, "0xABC", 3, "u1", 25_500_000),
            "usdc:8453:0xabc:3",
            {("custody:USDC", "D", 25_500_000), ("user:u1:USDC", "C", 25_500_000)},
        ),
        (
            ledger.mpesa_unmatched("ws_CO_1", 99),
            "mpesa:ws_CO_1:suspense",
            {("mpesa_float:KES", "D", 99), ("suspense:KES", "C", 99)},
        ),
    ],
)
def test_business_entries(entry: ledger.Entry, key: str, moves: set[tuple[str, str, int]]) -> None:
    assert entry.key == key
    assert {(p.account, p.direction.value, p.amount) for p in entry.postings} == moves
    assert all(debit == credit for debit, credit in _per_asset(entry).values())


@pytest.mark.parametrize(
    ("last", "fresh"),
    [((100, 10), (50, 5)), ((100, 10), (400, 40)), ((10**9, 10**6), (1, 1)), ((199 * 10**9, 10**9), (1, 1))],
)
def test_fee_bumps_are_at_least_an_eighth_and_capped(last: tuple[int, int], fresh: tuple[int, int]) -> None:
    from kiota.treasury import MAX_FEE_CAP_WEI, Fees

    old, new = Fees(*last), Fees(*last).bumped(Fees(*fresh))
    assert new.max_fee_per_gas <= MAX_FEE_CAP_WEI and new.max_priority_fee_per_gas <= MAX_FEE_CAP_WEI
    assert new.max_priority_fee_per_gas <= new.max_fee_per_gas
    if new.max_fee_per_gas < MAX_FEE_CAP_WEI:
        assert new.max_fee_per_gas * 1000 >= old.max_fee_per_gas * 1125
        assert new.max_fee_per_gas >= fresh[0]
    capped = Fees(MAX_FEE_CAP_WEI, MAX_FEE_CAP_WEI)
    assert capped.bumped(Fees(*fresh)) == capped  # at the cap nothing changes: the lane re-sends, not re-signs
