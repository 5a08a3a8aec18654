"""Who is believed about an M-Pesa success, and what users are told: the rules, by table."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kiota.confirm import CONFIRM_BOUND, Answer, AnswerKind, ConfirmTiming, Verdict, judge
from kiota.errors import ConfigError
from kiota.mpesa import (
    RESULT_REASONS,
    USER_CHECKING,
    USER_NOT_PAID,
    USER_PROMPT_NOT_SENT,
    user_failure_reason,
)
from kiota.netaddr import FirstSeen, allowed, client_address, parse_networks
from kiota.settings import SAFARICOM_CALLBACK_IPS, Settings, load_settings
from tests.support import settings_kwargs

PRODUCTION = "https://api.safaricom.co.ke"
EARLY = timedelta(seconds=5)
LATE = CONFIRM_BOUND + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("answer", "waited", "verdict"),
    [
        (Answer(AnswerKind.RESULT, 0, "The service request is processed successfully."), EARLY, Verdict.CONFIRMED),
        (Answer(AnswerKind.RESULT, 0, "ok"), LATE, Verdict.CONFIRMED),  # a late 0 is still a 0
        (Answer(AnswerKind.RESULT, 1032, "Request cancelled by user"), EARLY, Verdict.REVIEW),
        (Answer(AnswerKind.RESULT, 1, "insufficient"), EARLY, Verdict.REVIEW),
        (Answer(AnswerKind.RESULT, 1037, "unreachable"), EARLY, Verdict.REVIEW),
        (Answer(AnswerKind.PENDING, None, "The transaction is being processed"), EARLY, Verdict.WAIT),
        (Answer(AnswerKind.PENDING, None, "being processed"), CONFIRM_BOUND - timedelta(seconds=1), Verdict.WAIT),
        (Answer(AnswerKind.PENDING, None, "being processed"), CONFIRM_BOUND, Verdict.REVIEW),
        (Answer(AnswerKind.UNREACHABLE, None, "ConnectError"), EARLY, Verdict.WAIT),
        (Answer(AnswerKind.UNREACHABLE, None, "ConnectError"), LATE, Verdict.REVIEW),
        (Answer(AnswerKind.REFUSED, None, "400.002.02 Bad Request - Invalid CheckoutRequestID"), EARLY, Verdict.REVIEW),
    ],
)
def test_only_result_code_0_confirms_and_waiting_ends_at_the_bound(
    answer: Answer, waited: timedelta, verdict: Verdict
) -> None:
    assert judge(answer, waited) is verdict


def test_the_bound_is_a_quarter_of_an_hour() -> None:
    assert CONFIRM_BOUND == timedelta(minutes=15)


def test_the_answer_is_kept_as_operators_read_it() -> None:
    assert Answer(AnswerKind.RESULT, 1032, "Request cancelled by user").text == (
        "ResultCode 1032 (Request cancelled by user)"
    )
    assert Answer(AnswerKind.PENDING, None, "being processed").text == "pending: being processed"
    assert len(Answer(AnswerKind.REFUSED, None, "x" * 2000).text) == 500


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    timing = ConfirmTiming(backoff_base_seconds=2, backoff_max_seconds=60)

    class Fixed:
        def __init__(self, value: float) -> None:
            self.value = value

        def random(self) -> float:
            return self.value

    middle = Fixed(0.5)
    assert [timing.backoff(n, middle) for n in (1, 2, 3, 6, 7, 50)] == [2, 4, 8, 60, 60, 60]  # type: ignore[arg-type]
    assert timing.backoff(1, Fixed(0.0)) == 1  # type: ignore[arg-type]
    assert timing.backoff(1, Fixed(0.999)) < 3  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- what users see


@pytest.mark.parametrize(
    ("status", "failure_code", "shown"),
    [
        ("pending", None, None),
        ("processing", None, None),
        ("completed", None, None),
        ("needs_review", None, USER_CHECKING),
        ("needs_review", "1032", USER_CHECKING),
        ("failed", "1032", RESULT_REASONS[1032]),
        ("failed", "1", RESULT_REASONS[1]),
        ("failed", "9999", USER_NOT_PAID),  # an unknown code: never the callback's own ResultDesc
        ("failed", "-5", USER_NOT_PAID),
        ("failed", "400.002.02", USER_PROMPT_NOT_SENT),  # Daraja refused the push: not its errorMessage
        ("failed", "500.001.1001", USER_PROMPT_NOT_SENT),
        ("failed", None, USER_NOT_PAID),
        ("failed", "<script>", USER_NOT_PAID),
    ],
)
def test_failure_reason_is_one_of_our_sentences(status: str, failure_code: str | None, shown: str | None) -> None:
    assert user_failure_reason(status, failure_code) == shown


# ------------------------------------------------------------------------------------- settings


def kwargs(**changes: object) -> dict[str, object]:
    return {"_env_file": None, **settings_kwargs("postgresql://x@127.0.0.1/kiota"), **changes}


def test_confirmation_is_on_by_default_and_may_be_off_with_the_sandbox() -> None:
    assert load_settings(Settings, **kwargs()).mpesa_confirm_success == "on"
    assert load_settings(Settings, **kwargs(mpesa_confirm_success="OFF")).mpesa_confirm_success == "off"
    with pytest.raises(ConfigError, match="MPESA_CONFIRM_SUCCESS"):
        load_settings(Settings, **kwargs(mpesa_confirm_success="maybe"))


def test_confirmation_off_with_production_daraja_is_refused_in_one_line() -> None:
    assert load_settings(Settings, **kwargs(mpesa_base_url=PRODUCTION)).mpesa_confirm_success == "on"
    with pytest.raises(ConfigError) as caught:
        load_settings(Settings, **kwargs(mpesa_base_url=PRODUCTION, mpesa_confirm_success="off"))
    message = str(caught.value)
    assert "MPESA_CONFIRM_SUCCESS=off is refused with production Daraja" in message
    assert "\n" not in message


def test_the_callback_allowlist_defaults_to_safaricom_with_production_daraja_only() -> None:
    assert load_settings(Settings, **kwargs()).callback_allowlist == ""  # the sandbox: the token is the control
    production = load_settings(Settings, **kwargs(mpesa_base_url=PRODUCTION))
    networks = parse_networks(production.callback_allowlist)
    assert len(networks) == len(SAFARICOM_CALLBACK_IPS) == 12
    assert allowed("196.201.214.200", networks) and allowed("196.201.212.69", networks)
    assert not allowed("6.6.6.6", networks) and not allowed("127.0.0.1", networks)
    overridden = load_settings(Settings, **kwargs(mpesa_base_url=PRODUCTION, mpesa_callback_allowed_ips="10.0.0.0/8"))
    assert overridden.callback_allowlist == "10.0.0.0/8"


# --------------------------------------------------------------------------- who sent the request

RENDER = parse_networks("10.0.0.0/8")


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        # A spoofed leftmost hop (a Safaricom address the client wrote) is never read: our proxy appended
        # the address it saw, and that one is the client.
        ("10.1.2.3", "196.201.214.200, 6.6.6.6", "6.6.6.6"),
        ("10.1.2.3", "196.201.214.200, 6.6.6.6, 10.4.4.4", "6.6.6.6"),
        ("10.1.2.3", "196.201.214.200,6.6.6.6", "6.6.6.6"),
        ("10.1.2.3", "garbage, 6.6.6.6", "6.6.6.6"),
        # Our proxy saw Safaricom: believed, because the hop was written by a proxy we trust.
        ("10.1.2.3", "6.6.6.6, 196.201.214.200", "196.201.214.200"),
        # The peer is not our proxy: the header is the client's own words, not read at all.
        ("6.6.6.6", "196.201.214.200", "6.6.6.6"),
        ("6.6.6.6", "10.1.1.1, 196.201.214.200", "6.6.6.6"),
    ],
)
def test_x_forwarded_for_is_read_only_across_trusted_proxies(peer: str, forwarded_for: str, expected: str) -> None:
    assert client_address(peer, forwarded_for, RENDER) == expected
    assert client_address(peer, forwarded_for, []) == peer  # no trusted proxy: never read


def test_first_seen_says_yes_once_per_key_and_stays_bounded() -> None:
    seen = FirstSeen(limit=2)
    assert [seen.first(k) for k in ("a", "a", "b", "c", "a", "c")] == [True, False, True, False, False, False]
