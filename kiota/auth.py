"""Bearer tokens of the mobile app: HS256 JWTs whose `sub` is the user's id."""

from __future__ import annotations

import jwt

from kiota.errors import AuthError

MAX_SUBJECT_LENGTH = 255


def verify_token(token: str, secret: str, *, issuer: str | None = None, audience: str | None = None) -> str:
    """Return the token's subject, or raise AuthError.

    Only HS256 is accepted (so `alg: none` and algorithm confusion are refused);
    `exp` and `sub` are required and `exp` is checked. With `issuer` (JWT_ISSUER) the token
    must carry that `iss`; with `audience` (JWT_AUDIENCE) its `aud` must name it. Without an
    audience, a token that names one is refused: it was minted for someone else.
    """
    required = ["exp", "sub"] + (["iss"] if issuer else []) + (["aud"] if audience else [])
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=issuer,
            audience=audience,
            options={"require": required, "verify_exp": True, "verify_signature": True},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError("invalid token") from exc
    subject = claims.get("sub")
    if (
        not isinstance(subject, str)
        or not 1 <= len(subject) <= MAX_SUBJECT_LENGTH
        or not subject.isprintable()  # no NUL, control characters or lone surrogates in a user id
    ):
        raise AuthError("token subject must be a non-empty printable string")
    return subject


def issue_token(
    subject: str,
    secret: str,
    ttl_seconds: int,
    now: int,
    *,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """Mint a token (for `kiota dev` and tests; the app's real tokens come from its identity service)."""
    claims: dict[str, object] = {"sub": subject, "iat": now, "exp": now + ttl_seconds}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
