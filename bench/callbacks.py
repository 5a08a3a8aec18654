"""Daraja STK success callbacks for benchmark deposits, and the names that tie them together.

Deposit i of a batch has CheckoutRequestID `checkout_id(prefix, i)` and is paid with receipt
`receipt_no(i)`; the load generator rebuilds the same bodies from (prefix, amount, i) alone.
Kept free of heavy imports: the load generator imports it.
"""

from __future__ import annotations

import json

from tests.support import success_body

AMOUNT_KES = 130  # ≈ 1.0039 USDC at 129.50: thousands of payouts stay far below the hourly cap


def checkout_id(prefix: str, index: int) -> str:
    return f"ws_CO_{prefix}_{index:07d}"


def receipt_no(index: int) -> str:
    return f"BR{index:010d}"  # [A-Z0-9]{6,20}, unique within one benchmark database


def success_callback(checkout_request_id: str, amount_kes: int, receipt: str) -> bytes:
    """Daraja's success callback for one deposit, as the tests build it (tests/support.py)."""
    return json.dumps(success_body(checkout_request_id, float(amount_kes), receipt)).encode()


def callback_for(prefix: str, amount_kes: int, index: int) -> bytes:
    return success_callback(checkout_id(prefix, index), amount_kes, receipt_no(index))
