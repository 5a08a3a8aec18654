"""What a deposit's completion job does after one run: the retry and give-up rule, pure.

The job (`jobs/payouts.py`) confirms the deposit with M-Pesa, runs the payout lane, and hands what
that came to here, with the failures counted so far and when the deposit began processing;
it only carries out the step this returns:

- a failure that may pass (the chain's RPC, the database, the network) is tried again after a
  backoff, but not after `MAX_FAILURES` of them, nor once the deposit has been processing longer
  than `MAX_TRYING`: then a person looks (the deposit goes to review);
- a payout not mined yet is looked at again every `WAITING_RETRY_SECONDS` (or when the lane says: one in
  flight in the lane owner's pipeline, after about a block), within the same bound;
- M-Pesa still processing is waited for as the confirmation says (`kiota/confirm.py`);
- a guard blocks the payout (an operator's action, or its recheck, runs it again);
- anything else ends the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from kiota.confirm import Confirmation, Verdict
from kiota.payouts import PayoutOutcome, PayoutResult

MAX_FAILURES = 5
MAX_TRYING = timedelta(minutes=30)
WAITING_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Failed:
    """The run met a failure that may pass; `error` says which."""

    error: str


# What one run came to: a failure, M-Pesa's confirmation that stopped it (wait or review), or the lane's result.
RunResult = Failed | Confirmation | PayoutResult


@dataclass(frozen=True, slots=True)
class Done:
    """The job is over: paid, nothing to do, or the lane put the deposit in review itself."""

    result: str


@dataclass(frozen=True, slots=True)
class WaitAgain:
    """Not a failure: run again in `seconds`."""

    seconds: float


@dataclass(frozen=True, slots=True)
class BackOff:
    """A failure that may pass: run again after the backoff for `failures` failures."""

    failures: int
    error: str


@dataclass(frozen=True, slots=True)
class Blocked:
    """A guard stops the payout; the job looks again in `recheck_in` seconds (None: when released)."""

    reason: str
    recheck_in: float | None


@dataclass(frozen=True, slots=True)
class TooManyFailures:
    """Give up after failures: the deposit goes to review."""

    failures: int
    error: str

    @property
    def reason(self) -> str:
        return f"payout failed {self.failures} times; last error: {self.error}"


@dataclass(frozen=True, slots=True)
class NotSettled:
    """Give up on a payout not settled within `MAX_TRYING` (e.g. never mined): the deposit goes to review."""

    detail: str

    @property
    def reason(self) -> str:
        return f"payout not settled within {MAX_TRYING.seconds // 60} minutes: {self.detail}"


@dataclass(frozen=True, slots=True)
class Unconfirmed:
    """M-Pesa did not confirm the payment: the confirmation has put the deposit in review, unpaid."""

    detail: str


Step = Done | WaitAgain | BackOff | Blocked | TooManyFailures | NotSettled | Unconfirmed


def asks_since(outcome: RunResult) -> bool:
    """Whether `next_step` looks at how long the deposit has been processing: after a failure or
    for a payout not mined yet, and only then is it read from PostgreSQL."""
    return isinstance(outcome, Failed) or (
        isinstance(outcome, PayoutResult) and outcome.outcome is PayoutOutcome.WAITING
    )


def next_step(failures: int, since: datetime | None, outcome: RunResult, *, now: datetime) -> Step:
    """The step after a run that came to `outcome`. `failures`: the real failures counted so far,
    this run's included; `since`: when the deposit began processing (None: not known)."""
    tried_too_long = since is not None and now - since > MAX_TRYING
    if isinstance(outcome, Failed):
        if failures >= MAX_FAILURES or tried_too_long:
            return TooManyFailures(failures, outcome.error)
        return BackOff(failures, outcome.error)
    if isinstance(outcome, Confirmation):
        if outcome.verdict is Verdict.WAIT:  # "still processing", or Daraja unreachable: not a failure
            return WaitAgain(outcome.retry_in)
        if outcome.verdict is Verdict.REVIEW:
            return Unconfirmed(outcome.detail)
        raise ValueError(f"a {outcome.verdict} deposit's run ends with its payout's result")
    if outcome.outcome is PayoutOutcome.WAITING:
        return NotSettled(outcome.detail) if tried_too_long else WaitAgain(outcome.recheck_in or WAITING_RETRY_SECONDS)
    if outcome.outcome is PayoutOutcome.BLOCKED:
        return Blocked(outcome.detail, outcome.recheck_in)
    return Done(outcome.outcome.value)
