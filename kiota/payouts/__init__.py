"""The payout lane: pays a processing M-Pesa deposit's USDC from the treasury, exactly once.

Exactly once rests on PostgreSQL, not on the queue:
- one live payout per deposit (a partial unique index), and one ledger entry per deposit;
- one lane owner per treasury at a time, and the turns it takes (`lane.py`);
- the guards and the treasury's balances, checked before anything is signed (`guards.py`);
- the nonce is allocated in PostgreSQL, and every signed transaction is stored before it is
  broadcast, so a crash is always followed by re-sending or recognising the same transaction, never
  by signing a second payment (`attempts.py`);
- a receipt for any attempt settles the payout; a reverted receipt is a failure; a settled payout
  is final only at `LaneConfig.confirmations_required` confirmations, and a reorg that removes it
  sends the same signed bytes again (`settlement.py`);
- a payout given up on keeps its nonce until the lane fills it (`filler.py`);
- only a deposit whose M-Pesa success is confirmed (`kiota.confirm`) is ever signed for.

The names below are what jobs, the CLI and tests use.
"""

from kiota.payouts.lane import fill_abandoned_nonces, pay_deposit, recheck_settled_payouts, settle_stranded_payouts
from kiota.payouts.settlement import abandon, abandon_in
from kiota.payouts.terms import LaneConfig, PayoutOutcome, PayoutResult

__all__ = [
    "LaneConfig",
    "PayoutOutcome",
    "PayoutResult",
    "abandon",
    "abandon_in",
    "fill_abandoned_nonces",
    "pay_deposit",
    "recheck_settled_payouts",
    "settle_stranded_payouts",
]
