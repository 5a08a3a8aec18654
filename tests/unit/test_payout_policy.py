"""What a deposit's completion job does after a run (kiota/payout_policy.py): the rule, by table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kiota.confirm import Confirmation, Verdict
from kiota.payout_policy import (
    MAX_FAILURES,
    MAX_TRYING,
    WAITING_RETRY_SECONDS,
    BackOff,
    Blocked,
    Done,
    Failed,
    NotSettled,
    RunResult,
    Step,
    TooManyFailures,
    Unconfirmed,
    WaitAgain,
    asks_since,
    next_step,
)
from kiota.payouts import PayoutOutcome, PayoutResult

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
JUST_NOW = NOW - timedelta(seconds=5)
AT_BOUND = NOW - MAX_TRYING  # not yet too long: the bound is "longer than"
PAST_BOUND = NOW - MAX_TRYING - timedelta(seconds=1)
RPC = Failed("ChainUnavailable: RPC failed")
NOT_MINED = PayoutResult(PayoutOutcome.WAITING, "0xabc not mined yet")
IN_FLIGHT = PayoutResult(PayoutOutcome.WAITING, "in flight in the lane owner's pipeline", 3.0)


@pytest.mark.parametrize(
    ("failures", "since", "outcome", "step"),
    [
        # A failure that may pass: backed off, up to the fifth, and not once tried too long.
        (1, JUST_NOW, RPC, BackOff(1, RPC.error)),
        (MAX_FAILURES - 1, JUST_NOW, RPC, BackOff(MAX_FAILURES - 1, RPC.error)),
        (MAX_FAILURES, JUST_NOW, RPC, TooManyFailures(MAX_FAILURES, RPC.error)),
        (MAX_FAILURES + 3, JUST_NOW, RPC, TooManyFailures(MAX_FAILURES + 3, RPC.error)),  # counted twice by a rerun
        (1, None, RPC, BackOff(1, RPC.error)),  # not processing (e.g. paid meanwhile): only the count ends it
        (MAX_FAILURES, None, RPC, TooManyFailures(MAX_FAILURES, RPC.error)),
        (2, AT_BOUND, RPC, BackOff(2, RPC.error)),
        (2, PAST_BOUND, RPC, TooManyFailures(2, RPC.error)),
        # The payout not mined yet: looked at again every second, until tried too long.
        (0, JUST_NOW, NOT_MINED, WaitAgain(WAITING_RETRY_SECONDS)),
        (0, AT_BOUND, NOT_MINED, WaitAgain(WAITING_RETRY_SECONDS)),
        (0, None, NOT_MINED, WaitAgain(WAITING_RETRY_SECONDS)),
        (0, PAST_BOUND, NOT_MINED, NotSettled(NOT_MINED.detail)),
        # In flight in the lane owner's pipeline: looked at again when the lane says (about a block), same bound.
        (0, JUST_NOW, IN_FLIGHT, WaitAgain(3.0)),
        (0, PAST_BOUND, IN_FLIGHT, NotSettled(IN_FLIGHT.detail)),
        (4, PAST_BOUND, NOT_MINED, NotSettled(NOT_MINED.detail)),  # earlier failures change nothing here
        # A guard blocks it: no failure, no bound; it looks again when the guard says.
        (0, PAST_BOUND, PayoutResult(PayoutOutcome.BLOCKED, "hourly cap", 60.0), Blocked("hourly cap", 60.0)),
        (0, JUST_NOW, PayoutResult(PayoutOutcome.BLOCKED, "lane paused"), Blocked("lane paused", None)),
        # The job is over.
        (0, JUST_NOW, PayoutResult(PayoutOutcome.COMPLETED), Done("completed")),
        (3, PAST_BOUND, PayoutResult(PayoutOutcome.COMPLETED), Done("completed")),  # paid late is paid
        (0, None, PayoutResult(PayoutOutcome.NOTHING_TO_DO), Done("nothing_to_do")),
        (0, JUST_NOW, PayoutResult(PayoutOutcome.REVIEW, "reverted"), Done("review")),  # the lane moved it itself
        # M-Pesa's confirmation stopped the run: wait as it says, or it is in review.
        (0, None, Confirmation(Verdict.WAIT, "still processing", 2.5), WaitAgain(2.5)),
        (0, PAST_BOUND, Confirmation(Verdict.WAIT, "unreachable", 7.0), WaitAgain(7.0)),  # confirm has its own bound
        (0, None, Confirmation(Verdict.REVIEW, "ResultCode 1032"), Unconfirmed("ResultCode 1032")),
    ],
)
def test_the_step_after_a_run(failures: int, since: datetime | None, outcome: RunResult, step: Step) -> None:
    assert next_step(failures, since, outcome, now=NOW) == step


def test_what_review_says() -> None:
    assert TooManyFailures(5, "OSError: refused").reason == "payout failed 5 times; last error: OSError: refused"
    assert NotSettled("0xabc").reason == "payout not settled within 30 minutes: 0xabc"
    assert MAX_FAILURES == 5 and MAX_TRYING == timedelta(minutes=30)


@pytest.mark.parametrize("verdict", [Verdict.CONFIRMED, Verdict.NOT_NEEDED])
def test_a_confirmed_deposit_is_judged_by_its_payout(verdict: Verdict) -> None:
    with pytest.raises(ValueError, match="payout's result"):
        next_step(0, None, Confirmation(verdict), now=NOW)


@pytest.mark.parametrize(
    ("outcome", "asks"),
    [
        (RPC, True),
        (NOT_MINED, True),
        (PayoutResult(PayoutOutcome.COMPLETED), False),
        (PayoutResult(PayoutOutcome.BLOCKED, "cap"), False),
        (PayoutResult(PayoutOutcome.REVIEW), False),
        (Confirmation(Verdict.WAIT, retry_in=1.0), False),
    ],
)
def test_how_long_it_was_tried_is_read_only_when_it_matters(outcome: RunResult, asks: bool) -> None:
    assert asks_since(outcome) is asks
    # ...and where it is not read, it changes nothing.
    if not asks:
        assert next_step(1, PAST_BOUND, outcome, now=NOW) == next_step(1, None, outcome, now=NOW)
