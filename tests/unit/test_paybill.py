"""The M-Pesa statement parser and the receipt matching: tables, hostile files included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from kiota.paybill import NAIROBI, PaidDeposit, StatementRefused, match, parse_cents, parse_statement, parse_time

PREAMBLE = (
    "Account Holder:,KIOTA LIMITED\n"
    "Short Code:,600987\n"
    "Account:,Utility Account\n"
    "Time Period:,From 01-12-2026 00:00:00 To 07-12-2026 23:59:59\n"
    "\n"
)
HEADER = (
    '"Receipt No.","Completion Time","Initiation Time","Details","Transaction Status","Paid In","Withdrawn",'
    '"Balance","Balance Confirmed","Reason Type","Other Party Info","Linked Transaction ID","A/C No."\n'
)
ROWS = (
    '"NLJ7RT61SV","2026-12-07 09:15:02","2026-12-07 09:15:02",'
    '"Pay Bill Online from 254708374149 - JOHN DOE Acc. Kiota","Completed","1,295.00","","25,295.00","true",'
    '"Pay Bill Online","254708374149 - JOHN DOE","","Kiota"\n'
    '"NLJ7RT61SW","2026-12-07 10:00:00","2026-12-07 10:00:00","Pay Bill Online","Completed","1500.00","","26,795.00",'
    '"true","Pay Bill Online","0722000000 - JANE","",""\n'
    '"NLJ7RT61SX","2026-12-07 11:00:00","2026-12-07 11:00:00","Business Charges","Completed","","30.00","26,765.00",'
    '"true","Business Charges","","",""\n'
)


def test_a_realistic_statement_is_read_past_its_preamble() -> None:
    statement = parse_statement((PREAMBLE + HEADER + ROWS).encode())
    assert [line.receipt for line in statement.lines] == ["NLJ7RT61SV", "NLJ7RT61SW", "NLJ7RT61SX"]
    first = statement.lines[0]
    assert first.paid_in_cents == 129_500 and first.line == 7 and first.status == "Completed"
    assert first.completed_at == datetime(2026, 12, 7, 6, 15, 2, tzinfo=UTC)  # EAT is UTC+3
    assert first.other_party == "2547****4149 - JOHN DOE" and "254708374149" not in first.details + first.other_party
    assert statement.lines[2].paid_in_cents is None and statement.problems == []


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "no header row"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary"),
        (b"hello,world\n1,2\n", "no header row"),
        (("\n" * 40 + HEADER + ROWS).encode(), "no header row"),  # the header too far down to be a statement
        ((HEADER + '"not a receipt","2026-12-07 09:15:02",,,,"1.00"\n').encode(), "not an M-Pesa receipt"),
        ((HEADER + '"NLJ7RT61SV","yesterday",,,,"1.00"\n').encode(), "not a completion time"),
        ((HEADER + '"NLJ7RT61SV","2026-12-07 09:15:02",,,,"lots"\n').encode(), "not an amount"),
        ((HEADER + "\n\n").encode(), "no transaction"),
        (b'"Receipt No.","Completion Time","Paid In"\n"unterminated', "no transaction"),
    ],
)
def test_what_is_not_a_statement_is_refused_saying_why(data: bytes, says: str) -> None:
    with pytest.raises(StatementRefused, match=says):
        parse_statement(data)


def test_hostile_cells_are_reported_per_line_and_the_rest_is_read() -> None:
    rows = (
        '"=HYPERLINK(""http://evil"")","2026-12-07 09:15:02",,,"Completed","1.00"\n'
        '"NLJ7RT61SV","2026-12-07 09:15:02",,,"Completed","-5.00"\n'
        '"NLJ7RT61SW","2026-12-07 09:15:02",,,"Completed","NaN"\n'
        '"NLJ7RT61SY","2026-12-07 09:15:02",,,"Completed","1e400"\n'
        '"NLJ7RT61SZ","2026-12-07 09:15:02",,,"Completed","0.001"\n'
        '"nlj7rt61sq","07/12/2026 09:15",,,"Completed","12.50"\n'
        '"NLJ7RT61SR","2026-12-07 09:15:02"\n'  # a short row: no amount column at all
    )
    header = '"Receipt No.","Completion Time","Details","Other","Transaction Status","Paid In"\n'
    statement = parse_statement(("\ufeff" + header + rows).replace("\n", "\r\n").encode())
    assert [(line.receipt, line.paid_in_cents) for line in statement.lines] == [
        ("NLJ7RT61SQ", 1250),
        ("NLJ7RT61SR", None),
    ]
    assert statement.skipped == 5 and all(p.startswith("line ") for p in statement.problems)


def test_a_windows_excel_export_is_read() -> None:
    data = (HEADER + ROWS.replace("JOHN DOE", "JOSÉ")).encode("cp1252")
    assert parse_statement(data).lines[0].details.endswith("JOSÉ Acc. Kiota")


@pytest.mark.parametrize(
    ("text", "cents"),
    [("1,295.00", 129_500), ("1295", 129_500), ("0.50", 50), ("", None), ("0.00", None), ("KES 10.00", 1000)],
)
def test_amounts_become_whole_cents(text: str, cents: int | None) -> None:
    assert parse_cents(text) == cents


@pytest.mark.parametrize("text", ["2026-12-07 09:15:02", "07-12-2026 09:15:02", "07/12/2026 09:15:02"])
def test_times_are_nairobi_time(text: str) -> None:
    assert parse_time(text) == datetime(2026, 12, 7, 9, 15, 2, tzinfo=NAIROBI)


def deposit(receipt: str, kes: int, at: datetime | None = None) -> PaidDeposit:
    return PaidDeposit(uuid.uuid4(), receipt, kes, at, "completed")


def test_receipts_are_matched_and_leftovers_listed_on_both_sides() -> None:
    statement = parse_statement((PREAMBLE + HEADER + ROWS).encode())
    ours = [deposit("NLJ7RT61SV", 1295), deposit("NLJ7RT61SW", 1400)]
    gone = deposit("QQQ1234567", 900, datetime(2026, 12, 7, 7, 0, tzinfo=UTC))
    report = match(statement, ours, [*ours, gone])
    assert [m.line.receipt for m in report.matched] == ["NLJ7RT61SV"]
    assert [(m.line.receipt, m.deposit.received_kes) for m in report.mismatched] == [("NLJ7RT61SW", 1400)]
    assert report.unmatched_lines == []  # the charge took money out: not a deposit
    assert report.missing == [gone]
    alone = match(statement, [], [])
    assert [line.receipt for line in alone.unmatched_lines] == ["NLJ7RT61SV", "NLJ7RT61SW"]
