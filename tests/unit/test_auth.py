import base64
import json
import time

import jwt
import pytest

from kiota.auth import issue_token, verify_token
from kiota.errors import AuthError

# Computed at import; tests may run long after, so "valid" means years ahead.
FAR_FUTURE = int(time.time()) + 10 * 365 * 86400
SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret"


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_valid_token_gives_its_subject() -> None:
    assert verify_token(issue_token("user-1", SECRET, 60, int(time.time())), SECRET) == "user-1"


def test_alg_none_is_refused() -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'u', 'exp': FAR_FUTURE})}."
    with pytest.raises(AuthError):
        verify_token(token, SECRET)


@pytest.mark.parametrize(
    ("claims", "key", "algorithm", "message"),
    [
        ({"sub": "u", "exp": 1}, SECRET, "HS256", "expired"),
        ({"sub": "u", "exp": FAR_FUTURE}, "another-secret-another-secret-xx", "HS256", "invalid"),
        ({"sub": "u"}, SECRET, "HS256", "invalid"),  # exp is required
        ({"exp": FAR_FUTURE}, SECRET, "HS256", "invalid"),  # sub is required
        ({"sub": "", "exp": FAR_FUTURE}, SECRET, "HS256", "subject"),
        ({"sub": "u", "exp": FAR_FUTURE}, SECRET, "HS512", "invalid"),
    ],
)
def test_bad_tokens_are_refused(claims: dict[str, object], key: str, algorithm: str, message: str) -> None:
    token = jwt.encode(claims, key + "x" * 40 if algorithm == "HS512" else key, algorithm=algorithm)
    with pytest.raises(AuthError, match=message):
        verify_token(token, SECRET if algorithm != "HS512" else key + "x" * 40)


def test_garbage_is_refused() -> None:
    with pytest.raises(AuthError):
        verify_token("not.a.jwt", SECRET)


ISSUER = "https://id.kiota.example"
AUDIENCE = "kiota-app"


@pytest.mark.parametrize(
    ("extra", "issuer", "audience", "accepted"),
    [
        ({}, None, None, True),
        ({"iss": "anyone"}, None, None, True),  # no JWT_ISSUER: `iss` is not checked
        ({"aud": "someone-else"}, None, None, False),  # minted for another audience
        ({"iss": ISSUER}, ISSUER, None, True),
        ({}, ISSUER, None, False),  # JWT_ISSUER set: `iss` is required
        ({"iss": "https://evil.example"}, ISSUER, None, False),
        ({"aud": AUDIENCE}, None, AUDIENCE, True),
        ({"aud": ["other", AUDIENCE]}, None, AUDIENCE, True),  # a list that names us
        ({}, None, AUDIENCE, False),  # JWT_AUDIENCE set: `aud` is required
        ({"aud": "someone-else"}, None, AUDIENCE, False),
        ({"iss": ISSUER, "aud": AUDIENCE}, ISSUER, AUDIENCE, True),
        ({"iss": ISSUER, "aud": "someone-else"}, ISSUER, AUDIENCE, False),
    ],
)
def test_issuer_and_audience_are_checked_when_set(
    extra: dict[str, object], issuer: str | None, audience: str | None, accepted: bool
) -> None:
    token = jwt.encode({"sub": "u", "exp": FAR_FUTURE, **extra}, SECRET, algorithm="HS256")
    if accepted:
        assert verify_token(token, SECRET, issuer=issuer, audience=audience) == "u"
    else:
        with pytest.raises(AuthError, match="invalid token"):
            verify_token(token, SECRET, issuer=issuer, audience=audience)


def test_issued_tokens_carry_the_claims_asked_for() -> None:
    token = issue_token("u", SECRET, 60, int(time.time()), issuer=ISSUER, audience=AUDIENCE)
    assert verify_token(token, SECRET, issuer=ISSUER, audience=AUDIENCE) == "u"
