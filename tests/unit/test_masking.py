"""Secrets masked before a job's arguments, progress and log lines reach an operator's page (kiota/masking.py)."""

from __future__ import annotations

import pytest

from kiota.masking import MASK, mask_secrets, mask_text

PRIVATE_KEY = "0x" + "ab" * 32
TX_HASH = "0x" + "cd" * 32
ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        # by name: replaced whole
        ("password", "hunter2", MASK),
        ("ADMIN_PASSWORD", "hunter2", MASK),
        ("mpesa_passkey", "bfb279f9aa9bdbcf", MASK),
        ("consumer_secret", "s3cr3t", MASK),
        ("access_token", "abc.def", MASK),
        ("Authorization", "Basic b3BzOnB3", MASK),
        ("treasury_private_key", PRIVATE_KEY, MASK),
        ("api-key", "k-123", MASK),
        ("mnemonic", "test test test junk", MASK),
        ("pin", 1234, MASK),
        ("session", "s", MASK),
        # by name: phones keep their ends
        ("phone", "254708374149", "2547****4149"),
        ("PhoneNumber", 254708374149, "2547****4149"),
        ("msisdn", "+254708374149", "2547****4149"),
        # by shape
        ("note", "call 254708374149 back", "call 2547****4149 back"),
        ("note", "or 0712345678.", "or 0712**5678."),
        ("event", f"token {JWT} refused", f"token {MASK} refused"),
        ("error", "sent Authorization: Bearer abc.def-ghi", f"sent Authorization: Bearer {MASK}"),
        (
            "url",
            "https://x/api/v1/deposit/mpesa-callback/cb-secret-token",
            "https://x/api/v1/deposit/mpesa-callback/[redacted]",
        ),
        ("error", "connect failed: password=hunter2&user=x", f"connect failed: password={MASK}&user=x"),
        ("value", PRIVATE_KEY, MASK),  # a private key's shape, under no hash's name
        ("value", 254708374149, "2547****4149"),
        # kept: public, or needed by operators
        ("tx_hash", TX_HASH, TX_HASH),
        ("block_hash", TX_HASH, TX_HASH),
        ("event", f"payout sent {TX_HASH}", f"payout sent {TX_HASH}"),
        ("to", ADDRESS, ADDRESS),
        ("deposit_id", "7d3f0c1e-4b1a-4c55-9a43-2f1d2c3b4a59", "7d3f0c1e-4b1a-4c55-9a43-2f1d2c3b4a59"),
        ("amount_kes", 1500, 1500),
        ("blocks_done", 12, 12),
        ("ok", True, True),
        ("missing", None, None),
        ("event", "payout blocked", "payout blocked"),
    ],
)
def test_a_value_is_masked_by_its_name_or_its_shape(key: str, value: object, shown: object) -> None:
    assert mask_secrets(value, key) == shown


def test_nested_arguments_and_log_lines_are_masked_throughout() -> None:
    logs = [
        {"event": "push sent", "phone": "254708374149", "level": "info"},
        {"event": "token fetched", "headers": {"Authorization": "Bearer xyz"}, "level": "info"},
    ]
    assert mask_secrets({"args": ["7d3f", {"passkey": "p"}], "kwargs": {}, "logs": logs}) == {
        "args": ["7d3f", {"passkey": MASK}],
        "kwargs": {},
        "logs": [
            {"event": "push sent", "phone": "2547****4149", "level": "info"},
            {"event": "token fetched", "headers": {"Authorization": MASK}, "level": "info"},
        ],
    }


def test_a_traceback_keeps_its_shape_but_not_its_secrets() -> None:
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad phone 254711222333\n'
    assert mask_text(trace) == trace.replace("254711222333", "2547****2333")
