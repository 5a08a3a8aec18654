"""Abuse limits as rules (pure): which limits apply to which request, and what a refusal says.

The counting itself is `kiota.limiter` (the `limits` library on Redis, shared by every API process);
the HTTP mapping is `api.ratelimit`. Here nothing does I/O:

- every route but Safaricom's webhook counts against `LIMIT_PER_IP`, keyed by the client's address
  as our trusted proxies report it (`kiota.netaddr.client_address`);
- an STK push counts against `LIMIT_INITIATE_PER_USER` and `LIMIT_INITIATE_PER_PHONE` (so neither one
  user nor many users together can make one phone ring without end);
- an intent request counts against `LIMIT_INTENTS_PER_USER`;
- a user has at most `PENDING_DEPOSITS_PER_USER` deposits `pending` at once (enforced in PostgreSQL,
  `kiota.deposits.initiate`).

When Redis cannot be asked, a check says what to do (`on_outage`): an STK push is refused (it rings
a stranger's phone and costs us a Daraja call, so none goes out unlimited); the rest is allowed.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from enum import Enum

from limits import RateLimitItem, parse_many

WEBHOOK_PREFIX = "/api/v1/deposit/mpesa-callback/"
PENDING_DEPOSITS_PER_USER = 3
# A pending deposit ends with its callback (seconds) or the STK query (MPESA_QUERY_AFTER_SECONDS).
PENDING_RETRY_AFTER_SECONDS = 30


class OnOutage(Enum):
    REFUSE = "refuse"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class Check:
    """One limit to count a request against: `items` (e.g. 5/hour) for one identity."""

    name: str
    items: tuple[RateLimitItem, ...]
    identity: str
    on_outage: OnOutage

    @property
    def counter(self) -> str:
        """The counter's key: the check's name is part of it, so two checks with the same rate and
        identity (a user's initiates and intents both at 10/hour) never share a counter."""
        return f"{self.name}:{self.identity}"


@dataclass(frozen=True, slots=True)
class Policy:
    initiate_per_user: tuple[RateLimitItem, ...]
    initiate_per_phone: tuple[RateLimitItem, ...]
    intents_per_user: tuple[RateLimitItem, ...]
    per_client: tuple[RateLimitItem, ...]
    # Phones are counted under a keyed digest, so Redis holds no phone number.
    phone_pepper: bytes

    @classmethod
    def parse(
        cls, *, initiate_per_user: str, initiate_per_phone: str, intents_per_user: str, per_ip: str, pepper: bytes
    ) -> Policy:
        return cls(
            parse_limit(initiate_per_user),
            parse_limit(initiate_per_phone),
            parse_limit(intents_per_user),
            parse_limit(per_ip),
            pepper,
        )


def parse_limit(text: str) -> tuple[RateLimitItem, ...]:
    """`5/hour`, `10 per hour` or several with `;`; ValueError when it is not that notation."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a limit such as 10/hour")
    try:
        items = tuple(parse_many(text.strip()))
    except ValueError:
        raise ValueError(f"not a limit in the `limits` notation (e.g. 10/hour): {text!r}") from None
    if not items or any(item.amount < 1 for item in items):
        raise ValueError(f"a limit must allow at least one request: {text!r}")
    return items


def phone_identity(phone: str, pepper: bytes) -> str:
    return hmac.new(pepper, b"phone:" + phone.encode(), hashlib.sha256).hexdigest()[:32]


def initiate_checks(policy: Policy, user_id: str, phone: str) -> list[Check]:
    """An STK push: per user and per phone (already normalised to 254…), refused when Redis is down."""
    return [
        Check("initiate_per_user", policy.initiate_per_user, f"user:{user_id}", OnOutage.REFUSE),
        Check(
            "initiate_per_phone", policy.initiate_per_phone, phone_identity(phone, policy.phone_pepper), OnOutage.REFUSE
        ),
    ]


def intent_checks(policy: Policy, user_id: str) -> list[Check]:
    return [Check("intents_per_user", policy.intents_per_user, f"user:{user_id}", OnOutage.ALLOW)]


def request_checks(policy: Policy, path: str, client: str | None) -> list[Check]:
    """Every request but Safaricom's webhook (which has its token and allowlist), by client address."""
    if path.startswith(WEBHOOK_PREFIX):
        return []
    return [Check("per_ip", policy.per_client, f"ip:{client or 'unknown'}", OnOutage.ALLOW)]


def retry_after_seconds(reset_at: float, now: float) -> int:
    """Whole seconds until the window has room again; at least 1 (0 would invite a retry storm)."""
    return max(1, math.ceil(reset_at - now))
