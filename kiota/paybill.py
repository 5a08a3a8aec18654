"""Paybill reconciliation, pure: an M-Pesa statement (the organisation portal's CSV export) read, and its
receipts matched to our deposits.

The portal's export starts with a few lines about the account (its name, short code, the period) before the
header row, whose columns include "Receipt No.", "Completion Time", "Details", "Transaction Status",
"Paid In", "Withdrawn", "Balance" and "Other Party Info"; other columns come and go. So the header row is
found by its names, whatever precedes it, and only the columns used are required. Times are Nairobi time
(EAT, UTC+3, no daylight saving); amounts are shillings written with cents and thousands separators
("1,295.00"), kept here as whole cents. A statement is input from outside: a line that cannot be read is
reported with its number, never guessed at, and a file with no readable header or line is refused.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from kiota.errors import InvalidInput
from kiota.mpesa import mask_phones
from kiota.records import Record

NAIROBI = timezone(timedelta(hours=3), "EAT")
MAX_LINES = 100_000
MAX_AMOUNT = Decimal(10**9)  # shillings: far above any paybill line
MAX_REPORTED_PROBLEMS = 50
HEADER_SEARCH_ROWS = 30
_RECEIPT = re.compile(r"[A-Z0-9]{10}")
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%d-%m-%Y %H:%M:%S", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%Y-%m-%dT%H:%M:%S")
# Our name for each column used, and the header names it goes by.
_COLUMNS = {
    "receipt": ("receipt no", "receipt no.", "receipt number", "receipt"),
    "completed": ("completion time", "completion date"),
    "details": ("details", "description"),
    "status": ("transaction status", "status"),
    "paid_in": ("paid in", "paid in (kes)"),
    "withdrawn": ("withdrawn", "withdrawn (kes)"),
    "other_party": ("other party info", "other party"),
}
_REQUIRED = ("receipt", "completed", "paid_in")


class StatementRefused(InvalidInput):
    """The file is not an M-Pesa statement this can read."""


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One transaction on the statement; `paid_in_cents` is money received (None for a withdrawal)."""

    line: int  # its line in the file, for people
    receipt: str
    completed_at: datetime
    status: str
    paid_in_cents: int | None
    details: str
    other_party: str  # phone numbers masked


@dataclass(frozen=True, slots=True)
class Statement:
    lines: list[StatementLine]
    problems: list[str]  # "line N: why", the lines that could not be read (at most MAX_REPORTED_PROBLEMS)
    skipped: int  # how many lines could not be read


def parse_statement(data: bytes) -> Statement:
    """The statement's transactions, or StatementRefused saying why the file cannot be read."""
    if b"\x00" in data:
        raise StatementRefused("this is not a CSV file (it has binary content): upload the statement's CSV export")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")  # Excel's "CSV" on Windows
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise StatementRefused(f"this CSV cannot be read: {exc}") from None
    header_at, columns = _header(rows)
    lines: list[StatementLine] = []
    problems: list[str] = []
    skipped = 0
    for number, row in enumerate(rows[header_at + 1 :], start=header_at + 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(lines) + skipped >= MAX_LINES:
            raise StatementRefused(f"a statement of more than {MAX_LINES} lines: upload a shorter period")
        try:
            lines.append(_line(number, row, columns))
        except ValueError as exc:
            skipped += 1
            if len(problems) < MAX_REPORTED_PROBLEMS:
                problems.append(f"line {number}: {exc}")
    if not lines:
        raise StatementRefused(
            "no transaction could be read below the header" + (f" ({problems[0]})" if problems else "")
        )
    return Statement(lines, problems, skipped)


def _name(cell: str) -> str:
    return " ".join(cell.strip().lower().split())


def _header(rows: list[list[str]]) -> tuple[int, dict[str, int]]:
    """The header row's index and where each column used is in it."""
    for index, row in enumerate(rows[:HEADER_SEARCH_ROWS]):
        names = [_name(cell) for cell in row]
        columns = {ours: names.index(n) for ours, aliases in _COLUMNS.items() for n in aliases if n in names}
        if all(name in columns for name in _REQUIRED):
            return index, columns
    raise StatementRefused(
        'no header row with "Receipt No.", "Completion Time" and "Paid In" in the first '
        f"{HEADER_SEARCH_ROWS} lines: upload the M-Pesa organisation portal's statement CSV"
    )


def _cell(row: list[str], columns: dict[str, int], name: str) -> str:
    index = columns.get(name)
    return row[index].strip() if index is not None and index < len(row) else ""


def _line(number: int, row: list[str], columns: dict[str, int]) -> StatementLine:
    receipt = _cell(row, columns, "receipt").upper()
    if not _RECEIPT.fullmatch(receipt):
        raise ValueError(f"not an M-Pesa receipt: {receipt[:20]!r}")
    return StatementLine(
        line=number,
        receipt=receipt,
        completed_at=parse_time(_cell(row, columns, "completed")),
        status=_cell(row, columns, "status")[:40] or "Completed",
        paid_in_cents=parse_cents(_cell(row, columns, "paid_in")),
        details=mask_phones(_cell(row, columns, "details")[:200]),
        other_party=mask_phones(_cell(row, columns, "other_party")[:200]),
    )


def parse_time(text: str) -> datetime:
    """A statement's time (Nairobi) as an aware datetime."""
    for form in _TIME_FORMATS:
        try:
            return datetime.strptime(text, form).replace(tzinfo=NAIROBI)
        except ValueError:
            continue
    raise ValueError(f"not a completion time: {text[:30]!r}")


def parse_cents(text: str) -> int | None:
    """ "1,295.00" → 129500; empty → None (nothing paid in on that line). Never negative, never a fraction of a cent."""
    cleaned = text.replace(",", "").replace("KES", "").replace("Ksh", "").strip()
    if not cleaned:
        return None
    try:
        amount = Decimal(cleaned)
        whole_cents = amount.is_finite() and 0 <= amount <= MAX_AMOUNT and amount == amount.quantize(Decimal("0.01"))
    except InvalidOperation:
        whole_cents = False
    if not whole_cents:
        raise ValueError(f"not an amount: {text[:30]!r}")
    return int(amount * 100) or None


@dataclass(frozen=True, slots=True)
class PaidDeposit(Record):
    """A deposit M-Pesa paid, as the matching needs it (a row of kiota/store/timeline.py's receipts queries)."""

    id: uuid.UUID
    receipt: str
    received_kes: int
    paid_at: datetime | None
    status: str


@dataclass(frozen=True, slots=True)
class Match:
    line: StatementLine
    deposit: PaidDeposit

    @property
    def amount_differs(self) -> bool:
        return self.line.paid_in_cents != self.deposit.received_kes * 100


@dataclass(frozen=True, slots=True)
class Report:
    matched: list[Match]
    mismatched: list[Match]  # receipt found, amount not the one we received
    unmatched_lines: list[StatementLine]  # money in on the statement with no deposit of ours
    missing: list[PaidDeposit]  # our paid deposits in the statement's period that it does not show
    start: datetime
    end: datetime


def received(statement: Statement) -> list[StatementLine]:
    """The completed lines that brought money in: what deposits are."""
    return [line for line in statement.lines if line.paid_in_cents and line.status.lower() == "completed"]


def period(lines: Sequence[StatementLine]) -> tuple[datetime, datetime]:
    times = [line.completed_at for line in lines]
    return min(times), max(times)


def match(statement: Statement, by_receipt: Iterable[PaidDeposit], in_period: Iterable[PaidDeposit]) -> Report:
    """Each receipt paid in matched to our deposit with it; what is left over on either side listed."""
    ours = {deposit.receipt: deposit for deposit in by_receipt}
    lines = received(statement)
    start, end = period(statement.lines)
    pairs = [Match(line, ours[line.receipt]) for line in lines if line.receipt in ours]
    on_statement = {line.receipt for line in statement.lines}
    return Report(
        matched=[m for m in pairs if not m.amount_differs],
        mismatched=[m for m in pairs if m.amount_differs],
        unmatched_lines=[line for line in lines if line.receipt not in ours],
        missing=sorted((d for d in in_period if d.receipt not in on_statement), key=lambda d: d.paid_at or start),
        start=start,
        end=end,
    )
