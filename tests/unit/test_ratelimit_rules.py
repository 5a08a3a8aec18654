"""The abuse limits' rules (kiota.ratelimits): which limits apply to which request, by table."""

from __future__ import annotations

import pytest

from kiota.ratelimits import (
    WEBHOOK_PREFIX,
    OnOutage,
    Policy,
    initiate_checks,
    intent_checks,
    parse_limit,
    phone_identity,
    request_checks,
    retry_after_seconds,
)

POLICY = Policy.parse(
    initiate_per_user="10/hour",
    initiate_per_phone="5/hour",
    intents_per_user="30/hour",
    per_ip="600/minute",
    pepper=b"pepper",
)


@pytest.mark.parametrize(
    ("path", "limited"),
    [
        ("/api/v1/deposit/initiate", True),
        ("/api/v1/deposits", True),
        ("/api/v1/portfolio", True),
        ("/health", True),
        ("/metrics", True),
        ("/no/such/route", True),
        (WEBHOOK_PREFIX + "cb-token-0123456789abcdef", False),  # Safaricom's webhook: token and allowlist
        ("/api/v1/deposit/mpesa-callback", True),  # not the webhook itself (no token): counted
    ],
)
def test_every_route_but_the_webhook_counts_per_address(path: str, limited: bool) -> None:
    checks = request_checks(POLICY, path, "203.0.113.7")
    if not limited:
        assert checks == []
        return
    (check,) = checks
    assert check.identity == "ip:203.0.113.7"
    assert [str(item) for item in check.items] == ["600 per 1 minute"]
    assert check.on_outage is OnOutage.ALLOW


def test_an_unknown_address_shares_one_counter() -> None:
    (check,) = request_checks(POLICY, "/health", None)
    assert check.identity == "ip:unknown"


def test_an_stk_push_counts_per_user_and_per_phone_and_fails_closed() -> None:
    by_user, by_phone = initiate_checks(POLICY, "alice", "254708374149")
    assert (by_user.identity, [str(i) for i in by_user.items]) == ("user:alice", ["10 per 1 hour"])
    assert [str(i) for i in by_phone.items] == ["5 per 1 hour"]
    assert "254708374149" not in by_phone.identity  # Redis holds no phone number
    assert by_user.on_outage is by_phone.on_outage is OnOutage.REFUSE
    # Every user pushing one phone shares its counter; another phone has its own.
    assert initiate_checks(POLICY, "bob", "254708374149")[1].identity == by_phone.identity
    assert initiate_checks(POLICY, "alice", "254708374150")[1].identity != by_phone.identity


def test_intents_count_per_user_and_fail_open() -> None:
    (check,) = intent_checks(POLICY, "alice")
    assert (check.identity, check.on_outage) == ("user:alice", OnOutage.ALLOW)
    assert [str(i) for i in check.items] == ["30 per 1 hour"]


def test_a_phone_digest_depends_on_the_pepper() -> None:
    assert phone_identity("254708374149", b"a") != phone_identity("254708374149", b"b")
    assert phone_identity("254708374149", b"a") == phone_identity("254708374149", b"a")


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("10/hour", ["10 per 1 hour"]),
        ("10 per hour", ["10 per 1 hour"]),
        (" 5/minute ", ["5 per 1 minute"]),
        ("1/second;10/hour", ["1 per 1 second", "10 per 1 hour"]),
    ],
)
def test_limits_parse(text: str, items: list[str]) -> None:
    assert [str(item) for item in parse_limit(text)] == items


@pytest.mark.parametrize("text", ["", "  ", "lots", "10/fortnight", "0/hour", "10", "-1/hour"])
def test_malformed_limits_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_limit(text)


@pytest.mark.parametrize(
    ("reset_at", "now", "seconds"),
    [
        (100.0, 40.0, 60),
        (100.0, 99.9, 1),  # a fraction rounds up: never "retry now" while still full
        (100.0, 99.0, 1),
        (100.0, 100.0, 1),  # never 0
        (100.0, 130.0, 1),  # a window already past: still a whole positive number
        (3700.2, 100.0, 3601),
    ],
)
def test_retry_after_is_whole_seconds_and_at_least_one(reset_at: float, now: float, seconds: int) -> None:
    assert retry_after_seconds(reset_at, now) == seconds


def test_a_users_initiates_and_intents_never_share_a_counter_even_at_the_same_rate() -> None:
    same = Policy.parse(
        initiate_per_user="10/hour", initiate_per_phone="5/hour", intents_per_user="10/hour", per_ip="600/minute",
        pepper=b"p",
    )  # fmt: skip
    pushes, intents = initiate_checks(same, "alice", "254708374149")[0], intent_checks(same, "alice")[0]
    assert pushes.identity == intents.identity == "user:alice"
    assert pushes.counter != intents.counter
