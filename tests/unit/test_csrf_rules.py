"""The CSRF token and the same-origin rule (`api/csrf.py`), as tables: no server needed."""

from __future__ import annotations

import pytest

from api.csrf import TOKEN_MAX_AGE_SECONDS, issue_token, origin_of, same_origin, token_valid

KEY = b"k" * 32
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("name", "issued_at", "tamper", "valid"),
    [
        ("ana", NOW, None, True),
        ("ana", NOW - TOKEN_MAX_AGE_SECONDS, None, True),
        ("ana", NOW - TOKEN_MAX_AGE_SECONDS - 1, None, False),  # expired
        ("ana", NOW + 30, None, True),  # another process's clock a little ahead
        ("ana", NOW + 3600, None, False),  # from the future
        ("bob", NOW, None, False),  # another admin's token
        ("ana", NOW, "time", False),  # its time changed
        ("ana", NOW, "mac", False),
        ("ana", NOW, "empty", False),
        ("ana", NOW, "no-dot", False),
    ],
)
def test_a_token_is_the_admins_own_and_fresh(name: str, issued_at: float, tamper: str | None, valid: bool) -> None:
    token = issue_token(KEY, name, issued_at)
    stamp, mac = token.split(".")
    token = {
        None: token,
        "time": f"{int(stamp) + 1}.{mac}",
        "mac": f"{stamp}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
        "empty": "",
        "no-dot": stamp + mac,
    }[tamper]
    assert token_valid(KEY, "ana", token, NOW) is valid
    assert not token_valid(b"another key" * 3, "ana", issue_token(KEY, "ana", NOW), NOW)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://pay.example.com", "https://pay.example.com"),
        ("https://Pay.Example.com:443/admin/queues?x=1", "https://pay.example.com"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://[::1]:80/x", "http://[::1]"),
        ("null", None),
        ("javascript:alert(1)", None),
        ("ftp://pay.example.com", None),
        ("https://pay.example.com:99999", None),
        ("", None),
    ],
)
def test_origin_of(url: str, origin: str | None) -> None:
    assert origin_of(url) == origin


@pytest.mark.parametrize(
    ("sent_origin", "referer", "same"),
    [
        ("https://pay.example.com", None, True),
        (None, "https://pay.example.com/admin/queues", True),
        ("https://evil.example", "https://pay.example.com/admin/queues", False),  # Origin decides when sent
        ("https://pay.example.com.evil.example", None, False),
        ("http://pay.example.com", None, False),  # another scheme is another origin
        ("https://pay.example.com:8443", None, False),
        ("null", None, False),
        (None, None, False),  # a browser sends Origin on every POST: neither is refused
    ],
)
def test_same_origin(sent_origin: str | None, referer: str | None, same: bool) -> None:
    assert same_origin("https://pay.example.com/", sent_origin, referer) is same
