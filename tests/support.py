"""Values and helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any

from kiota.auth import issue_token

REPO = Path(__file__).resolve().parents[1]  # the repository's root
ADMIN_DSN = os.environ.get("KIOTA_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("KIOTA_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")

# The public test mnemonic's account xpub (CONTRACT.md's known vector).
TEST_XPUB = (
    "xpub6DyUKdwoLWmUJ4Tn9Bbsdtx7B5Ws18mEN19e5HT52ikE53FiUheSQXrZUNPovqfyKmw4579A1Mm3GXXKM39N64uooBfJ4tNAzFsEbodRTx4"
)
TEST_CHILDREN = (
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
)
JWT_SECRET = "test-jwt-secret-that-is-long-enough-for-hs256"
CALLBACK_TOKEN = "cb-token-0123456789abcdef"
ADMIN_AUTH = ("ops-admin", "test-admin-password-0123456789")
# The abuse limits of the test system: far above what any test sends, so that only the tests of
# the limits (which set their own) ever meet one. The defaults are the contract's.
TEST_LIMITS = {
    "LIMIT_INITIATE_PER_USER": "10000/hour",
    "LIMIT_INITIATE_PER_PHONE": "10000/hour",
    "LIMIT_INTENTS_PER_USER": "10000/hour",
    "LIMIT_PER_IP": "100000/minute",
}
# Not derived from the test mnemonic: the test xpub's children (deposit addresses) include anvil's
# well-known accounts, so a treasury among them would be some user's deposit address.
TREASURY_KEY = "0x" + hashlib.sha256(b"kiota test treasury").hexdigest()


def dsn_for(database: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


async def admin_execute(*statements: str) -> None:
    """Run statements on a fresh admin connection (a slow-tier test restarts PostgreSQL under us)."""
    import asyncpg

    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


def base_env(database_url: str, redis_url: str = REDIS_TEST_URL) -> dict[str, str]:
    """A complete environment for `kiota api` (add TREASURY_PRIVATE_KEY for the worker)."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "JWT_SECRET": JWT_SECRET,
        "MPESA_BASE_URL": "http://127.0.0.1:9",
        "MPESA_CONSUMER_KEY": "test-consumer-key",
        "MPESA_CONSUMER_SECRET": "test-consumer-secret",
        "MPESA_SHORTCODE": "174379",
        "MPESA_PASSKEY": "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919",
        "MPESA_CALLBACK_TOKEN": CALLBACK_TOKEN,
        "KES_PER_USD": "129.50",
        "BASE_RPC_URL": "http://127.0.0.1:8545",
        "DEPOSIT_XPUB": TEST_XPUB,
        "ADMIN_USERNAME": ADMIN_AUTH[0],
        "ADMIN_PASSWORD": ADMIN_AUTH[1],
        **TEST_LIMITS,
    }


def settings_kwargs(database_url: str, redis_url: str = REDIS_TEST_URL) -> dict[str, Any]:
    return {key.lower(): value for key, value in base_env(database_url, redis_url).items()}


def bearer(subject: str, *, ttl: int = 600, secret: str = JWT_SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(subject, secret, ttl, int(time.time()))}"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def success_body(checkout_request_id: str, amount: int | float, receipt: str = "NLJ7RT61SV") -> dict[str, Any]:
    """Daraja's STK success callback (REFERENCE.md's example), the Balance item without a Value included."""
    return {
        "Body": {
            "stkCallback": {
                "MerchantRequestID": "29115-34620561-1",
                "CheckoutRequestID": checkout_request_id,
                "ResultCode": 0,
                "ResultDesc": "The service request is processed successfully.",
                "CallbackMetadata": {
                    "Item": [
                        {"Name": "Amount", "Value": amount},
                        {"Name": "MpesaReceiptNumber", "Value": receipt},
                        {"Name": "Balance"},
                        {"Name": "TransactionDate", "Value": 20191219102115},
                        {"Name": "PhoneNumber", "Value": 254708374149},
                    ]
                },
            }
        }
    }
