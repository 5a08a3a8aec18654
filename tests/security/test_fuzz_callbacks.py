"""Property-based fuzzing of Safaricom's webhook: the parser, `decide`, and the route end to end.

Properties, for every body hypothesis makes (Daraja's shape with fields of other types, dropped,
renamed, repeated, nested, in other encodings; and plain bytes):
- `parse_callback` returns a well-typed StkCallback or raises MalformedCallback: nothing else;
  what it returns agrees with the JSON it read.
- `decide` (and `plan`, which turns it into rows) books money only for a success that matches a
  pending deposit's amount, whose receipt is on no deposit yet; it never raises.
- The route (the real app, PostgreSQL and Redis) answers 200 or 400 (413 over 64 KiB), never 5xx;
  keeps every body it read; moves no deposit to processing and books no shillings received unless
  the body is a success for that deposit's CheckoutRequestID and amount; and credits no user ever.

The number of examples is set by KIOTA_FUZZ_PROFILE / KIOTA_FUZZ_EXAMPLES (tests/security/fuzzing.py):
a few hundred in the test command, 10,000 bodies per test with `KIOTA_FUZZ_PROFILE=deep`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiota.money import kes_to_usdc
from kiota.mpesa import (
    MAX_CALLBACK_AMOUNT,
    MAX_RESULT_CODE,
    Action,
    DepositView,
    MalformedCallback,
    StkCallback,
    decide,
    parse_callback,
)
from kiota.mpesa_answers import Plan, Seen, plan
from kiota.settings import Settings
from kiota.sql import load_queries
from kiota.users import ensure_user
from tests.security.fuzzing import (
    callback_bodies,
    encode,
    expected_success,
    fuzz_settings,
    raw_bodies,
    success_document,
    timeout_seconds,
)
from tests.support import CALLBACK_TOKEN

T = TypeVar("T")
CALLBACK_PATH = f"/api/v1/deposit/mpesa-callback/{CALLBACK_TOKEN}"
ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}
MAX_BODY = 64 * 1024
RATE = Decimal("129.50")

# A pure function is fast: many more examples than the end-to-end tests.
PURE_CI, PURE_DEEP = 1000, 10_000
ROUTE_CI, ROUTE_DEEP = 200, 10_000


# ------------------------------------------------------------------------------------------ parser


def _bodies() -> st.SearchStrategy[tuple[str, int, str, bytes]]:
    """(checkout id, amount, receipt, body) with the body aimed at that deposit."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[str, int, str, bytes]:
        checkout = "ws_CO_" + draw(st.from_regex(r"[0-9]{6,20}", fullmatch=True))
        amount = draw(st.integers(10, 250_000))
        receipt = draw(st.from_regex(r"[A-Z][A-Z0-9]{9}", fullmatch=True))
        body = draw(st.one_of(callback_bodies(checkout, amount, receipt), raw_bodies(checkout, amount, receipt)))
        return checkout, amount, receipt, body

    return build()


def _storable(text: str) -> bool:
    return "\x00" not in text and not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def _check_parsed(parsed: StkCallback, raw: bytes) -> None:
    """A parsed callback is what the columns can hold, and what the JSON says."""
    assert isinstance(parsed.result_code, int) and not isinstance(parsed.result_code, bool)
    assert abs(parsed.result_code) <= MAX_RESULT_CODE
    for text in (parsed.merchant_request_id, parsed.checkout_request_id):
        assert isinstance(text, str) and 0 < len(text) <= 200 and _storable(text)
    assert isinstance(parsed.result_desc, str) and len(parsed.result_desc) <= 500 and _storable(parsed.result_desc)
    stk = json.loads(raw)["Body"]["stkCallback"]
    assert parsed.checkout_request_id == stk["CheckoutRequestID"]
    assert parsed.merchant_request_id == stk["MerchantRequestID"]
    if not parsed.succeeded:
        assert parsed.amount_kes is None and parsed.receipt is None
        return
    assert isinstance(parsed.amount_kes, int) and not isinstance(parsed.amount_kes, bool)
    assert 0 < parsed.amount_kes <= MAX_CALLBACK_AMOUNT
    assert isinstance(parsed.receipt, str) and parsed.receipt.isascii() and parsed.receipt.isalnum()
    assert parsed.transaction_at is None or (
        isinstance(parsed.transaction_at, datetime) and parsed.transaction_at.utcoffset() is not None
    )
    values = {i["Name"]: i["Value"] for i in stk["CallbackMetadata"]["Item"] if "Value" in i}
    assert values["Amount"] == parsed.amount_kes  # 1500.0 == 1500: a whole number, nothing rounded
    assert values["MpesaReceiptNumber"] == parsed.receipt


@pytest.mark.timeout(timeout_seconds(PURE_CI, PURE_DEEP, per_example=0.02))
@fuzz_settings(PURE_CI, PURE_DEEP)
@given(case=_bodies())
def test_parse_callback_returns_a_sound_callback_or_refuses(case: tuple[str, int, str, bytes]) -> None:
    checkout, amount, _, raw = case
    try:
        parsed = parse_callback(raw)
    except MalformedCallback:
        return
    _check_parsed(parsed, raw)
    if parsed.succeeded and parsed.checkout_request_id == checkout and parsed.amount_kes == amount:
        assert expected_success(raw, checkout, amount)


def test_the_body_strategies_reach_every_answer() -> None:
    """The fuzzing is not vacuous: the strategies make Daraja's successes for the deposit, successes
    for another (a near-miss id, another amount), failures and refusals. Derandomized: it cannot flake."""
    seen: dict[str, int] = {}

    @settings(fuzz_settings(400, 400), derandomize=True)
    @given(raw=callback_bodies("ws_CO_191220191020363925", 1500, "NLJ7RT61SV"))
    def sample(raw: bytes) -> None:
        try:
            parsed = parse_callback(raw)
        except MalformedCallback:
            kind = "malformed"
        else:
            if not parsed.succeeded:
                kind = "failure"
            elif expected_success(raw, "ws_CO_191220191020363925", 1500):
                kind = "success for the deposit"
            else:
                kind = "other success"
        seen[kind] = seen.get(kind, 0) + 1

    sample()
    assert set(seen) == {"malformed", "success for the deposit", "other success", "failure"}, seen
    assert min(seen.values()) >= 10, seen


# ---------------------------------------------------------------------------------- decide and plan

AMOUNTS = st.sampled_from([10, 1500, 1501, 250_000])
RECEIPTS = st.sampled_from(["NLJ7RT61SV", "NLJ7RT61SW", "QAB1234567"])
STATUSES = st.one_of(
    st.sampled_from(["pending", "processing", "completed", "failed", "needs_review"]), st.text(max_size=12)
)
deposit_views = st.builds(
    DepositView,
    status=STATUSES,
    amount_kes=AMOUNTS,
    receipt=st.none() | RECEIPTS,
    failure_code=st.none() | st.sampled_from(["0", "1", "1032", "2001", "-1"]) | st.text(max_size=6),
    received_kes=st.none() | AMOUNTS,
)


@st.composite
def stk_callbacks(draw: st.DrawFn) -> StkCallback:
    """As the parser makes them (a success has an amount and a receipt), and now and then not."""
    code = draw(st.one_of(st.just(0), st.sampled_from([1, 1032, 1037, 2001, -1]), st.integers(-(2**31), 2**31 - 1)))
    success = code == 0
    lawless = draw(st.integers(0, 9)) == 0  # a success without amount or receipt, a failure with them
    return StkCallback(
        merchant_request_id=draw(st.text(min_size=1, max_size=20)),
        checkout_request_id=draw(st.sampled_from(["ws_CO_1", "ws_CO_2"])),
        result_code=code,
        result_desc=draw(st.text(max_size=20)),
        amount_kes=draw(AMOUNTS | st.integers(1, 10**9)) if success != lawless else draw(st.none() | AMOUNTS),
        receipt=draw(RECEIPTS) if success != lawless else draw(st.none() | RECEIPTS),
    )


def _decide_and_plan(deposit: DepositView | None, cb: StkCallback, receipt_taken: bool) -> tuple[Action, Plan]:
    decision = decide(deposit, cb, receipt_used_elsewhere=receipt_taken)
    seen = Seen(7, uuid.uuid4() if deposit is not None else None, deposit, receipt_taken)
    return decision.action, plan(cb, seen)


@pytest.mark.timeout(timeout_seconds(PURE_CI, PURE_DEEP, per_example=0.02))
@fuzz_settings(PURE_CI, PURE_DEEP)
@given(deposit=st.none() | deposit_views, cb=stk_callbacks(), receipt_taken=st.booleans())
def test_decide_books_money_only_for_a_matching_pending_success(
    deposit: DepositView | None, cb: StkCallback, receipt_taken: bool
) -> None:
    decision = decide(deposit, cb, receipt_used_elsewhere=receipt_taken)
    action, rows = _decide_and_plan(deposit, cb, receipt_taken)
    assert decision.deposit_status in (None, "processing", "failed", "needs_review")

    matches = (
        deposit is not None
        and cb.succeeded
        and deposit.status == "pending"
        and deposit.receipt is None
        and deposit.received_kes is None
        and cb.amount_kes == deposit.amount_kes
        and not receipt_taken
    )
    if matches:  # the one way money is booked for a user's deposit, and it is never refused
        assert (action, decision.deposit_status) == (Action.SUCCEED, "processing")
    if action is Action.SUCCEED:
        assert deposit is not None and deposit.status == "pending" and deposit.receipt is None
        assert cb.succeeded and cb.amount_kes == deposit.amount_kes and not receipt_taken
        assert decision.deposit_status == "processing"
    if action is Action.ATTACH_RECEIPT:  # the STK query booked this payment already: nothing booked again
        assert deposit is not None and deposit.receipt is None and not receipt_taken
        assert cb.succeeded and deposit.received_kes == cb.amount_kes
        assert decision.deposit_status is None
    if action is Action.FAIL:
        assert deposit is not None and deposit.status == "pending" and not cb.succeeded
        assert decision.deposit_status == "failed"
    if deposit is None:
        assert action in (Action.REVIEW, Action.NOTE_FAILURE) and decision.deposit_status is None
    if not cb.succeeded:
        assert action in (Action.FAIL, Action.DUPLICATE, Action.NOTE_FAILURE)

    # What the plan writes: shillings owed to a customer only on SUCCEED, the rest to suspense.
    entry = rows.entry
    if action is Action.SUCCEED:
        assert entry is not None and entry.kind == "mpesa_received" and rows.job_id is not None
        assert {p.amount for p in entry.postings} == {cb.amount_kes}
    else:
        assert rows.job_id is None
        assert entry is None or entry.kind == "mpesa_suspense"
    if entry is not None:
        assert all(p.amount > 0 and not p.account.startswith("user:") for p in entry.postings)


# --------------------------------------------------------------------------------- the route, end to end


@dataclass
class Target:
    deposit_id: uuid.UUID
    checkout_request_id: str
    amount: int
    receipt: str


@dataclass
class Tally:
    """What the route did over a whole run (checked at the end, so a run cannot pass vacuously)."""

    answers: dict[int, int] = field(default_factory=dict)
    credited: set[uuid.UUID] = field(default_factory=set)  # deposits moved by a matching success

    def count(self, status: int) -> None:
        self.answers[status] = self.answers.get(status, 0) + 1


class Webhook:
    """The webhook of the real app (in process, real PostgreSQL and Redis), driven from hypothesis's thread."""

    def __init__(self, client: httpx.AsyncClient, pool: asyncpg.Pool, user_id: str) -> None:
        self.client, self.pool, self.user_id = client, pool, user_id
        self.loop = asyncio.get_running_loop()
        self.numbers = itertools.count()
        self.tally = Tally()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def pending_deposit(self, amount: int) -> Target:
        """A deposit pushed to Daraja and waiting for its callback, as `initiate` leaves it."""
        n = next(self.numbers)
        target = Target(uuid.uuid4(), f"ws_CO_fuzz_{n:08d}", amount, f"FZ{n:08d}")
        q = load_queries()
        quote = kes_to_usdc(amount, RATE)
        await self.pool.execute(
            q.insert_deposit,
            target.deposit_id,
            self.user_id,
            amount,
            RATE,
            quote.amount_usdc_micro,
            "2547****4149",
            None,
        )
        await self.pool.execute(
            q.deposit_pushed, target.deposit_id, target.checkout_request_id, "29115-34620561-1", 3600.0
        )
        return target

    async def deliver(self, target: Target, raw: bytes) -> None:
        before = await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM mpesa_callbacks")
        answer = await self.client.post(CALLBACK_PATH, content=raw, headers={"Content-Type": "application/json"})
        self.tally.count(answer.status_code)
        kept = await self.pool.fetch(
            "SELECT raw_bytes, disposition FROM mpesa_callbacks WHERE id > $1 ORDER BY id", before
        )
        if len(raw) > MAX_BODY:  # refused before it is read whole: nothing recorded
            assert (answer.status_code, kept) == (413, []), (answer.status_code, answer.text[:300])
            await self.check_money(target, raw)
            return
        assert answer.status_code in (200, 400), (answer.status_code, answer.text[:300], raw[:300])
        assert [bytes(row["raw_bytes"]) for row in kept] == [raw], "every body is kept, byte for byte"
        if answer.status_code == 400:
            assert answer.json()["ResultCode"] == 1 and kept[0]["disposition"] == "malformed"
        else:
            assert answer.json() == ACCEPTED and kept[0]["disposition"] != "malformed"
        await self.check_money(target, raw)

    async def check_money(self, target: Target, raw: bytes) -> None:
        """Deposits move only for a success naming them, with their amount. Usually the deposit is the
        target; a mutated id may name an earlier example's deposit, still pending: that is a success
        for a real pending deposit too, and must then match it."""
        moved = await self.pool.fetch(
            "SELECT id, checkout_request_id, amount_kes, status FROM deposits"
            " WHERE status IN ('processing', 'completed')"
        )
        for row in moved:
            if row["id"] not in self.tally.credited:
                assert expected_success(raw, row["checkout_request_id"], row["amount_kes"]), (dict(row), raw[:500])
                self.tally.credited.add(row["id"])
        assert len(moved) == len(self.tally.credited)
        if target.deposit_id not in self.tally.credited and _pristine(raw, target):
            status = await self.pool.fetchval("SELECT status FROM deposits WHERE id = $1", target.deposit_id)
            raise AssertionError(f"Daraja's own success for a pending deposit was not booked: {status}")
        counts = await self.pool.fetchrow(
            "SELECT (SELECT count(*) FROM journal_entries WHERE kind = 'mpesa_received') AS received,"
            " (SELECT count(*) FROM jobs WHERE queue = 'payouts') AS jobs,"
            " (SELECT count(*) FROM postings p JOIN accounts a ON a.id = p.account_id WHERE a.kind = 'user') AS credits"
        )
        assert counts is not None
        assert counts["received"] == counts["jobs"] == len(self.tally.credited), dict(counts)
        assert counts["credits"] == 0, "no callback credits a user: only the payout does"


def _pristine(raw: bytes, target: Target) -> bool:
    """The body is Daraja's success for the deposit, value for value and type for type (1.0 is not 1:
    a float TransactionDate is refused, and True == 1 in Python)."""
    try:
        document = json.loads(raw)
    except ValueError:
        return False
    expected = success_document(target.checkout_request_id, target.amount, target.receipt)
    return json.dumps(document, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.fixture
async def webhook(client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings) -> Webhook:
    user = await ensure_user(pool, "fuzz-user", settings.deposit_key)
    return Webhook(client, pool, user.id)


async def _in_thread(test: Callable[[], None]) -> None:
    """Run a hypothesis test (sync) in a thread: this loop serves the app meanwhile."""
    await asyncio.to_thread(test)


@pytest.mark.timeout(timeout_seconds(ROUTE_CI, ROUTE_DEEP, per_example=0.1))
async def test_webhook_daraja_shaped_bodies_never_5xx_never_credit(webhook: Webhook) -> None:
    @fuzz_settings(ROUTE_CI, ROUTE_DEEP)
    @given(data=st.data(), amount=st.integers(10, 250_000))
    def fuzz(data: st.DataObject, amount: int) -> None:
        target = webhook.run(webhook.pending_deposit(amount))
        raw = data.draw(callback_bodies(target.checkout_request_id, amount, target.receipt), label="body")
        webhook.run(webhook.deliver(target, raw))

    await _in_thread(fuzz)
    tally = webhook.tally
    assert tally.answers.get(200, 0) > 0 and tally.answers.get(400, 0) > 0, tally.answers
    assert tally.credited, "some bodies were Daraja's own success, and were booked"


@pytest.mark.timeout(timeout_seconds(ROUTE_CI, ROUTE_DEEP, per_example=0.1))
async def test_webhook_raw_bytes_never_5xx_never_credit(webhook: Webhook) -> None:
    @fuzz_settings(ROUTE_CI, ROUTE_DEEP)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        target = webhook.run(webhook.pending_deposit(1500))
        raw = data.draw(raw_bodies(target.checkout_request_id, 1500, target.receipt), label="body")
        webhook.run(webhook.deliver(target, raw))

    await _in_thread(fuzz)
    # The route still works after all that: Daraja's own success is booked.
    target = await webhook.pending_deposit(1500)
    await webhook.deliver(target, encode(success_document(target.checkout_request_id, 1500, target.receipt)).encode())
    assert target.deposit_id in webhook.tally.credited
