"""Secrets masked before an operator's page shows a job's arguments, progress or log lines.

The dashboard shows what a job was given and what it said, to people who read but need not see a
phone number or a key. Masking is by name and by shape, so that a secret logged under an unexpected
key is still caught:
- by name: a value under a key that names a secret (password, passkey, secret, token, key, auth,
  credential, signature, private, mnemonic, seed, pin, cookie, session) is replaced whole; one under
  a phone key (phone, msisdn, mobile) keeps its ends (`kiota.mpesa.mask_phone`);
- by shape, in any text: Kenyan phone numbers, JWTs, `Bearer`/`Basic` credentials, `name=value`
  pairs whose name is a secret's, and the M-Pesa callback token in a URL (`kiota.logging.redact_path`);
  a whole value of 64 hex digits (a private key's shape) unless its key names a hash (a tx hash is
  public, and operators need it). Inside longer text 64 hex digits are kept: there they are tx hashes.
Addresses (0x and 40 hex digits) are public and kept. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from kiota.logging import redact_path
from kiota.mpesa import mask_phone

MASK = "[masked]"

_SECRET_PREFIXES = ("pass", "secret", "private", "auth", "cred", "mnemonic", "xprv", "cookie", "signature", "apikey")
_SECRET_SUFFIXES = ("token", "key", "secret", "password")
_SECRET_WORDS = frozenset({"pin", "seed", "session", "bearer", "jwt", "otp"})
_PHONE_PREFIXES = ("phone", "msisdn", "mobile")
_HASH_WORDS = ("hash", "tx", "txid", "block")
_KEY_PARTS = re.compile(r"[^a-z0-9]+")

_PHONE = re.compile(r"(?<![\d\w])\+?(?:254|0)[17]\d{8}(?!\d)")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_AUTH_HEADER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_SECRET_PAIR = re.compile(
    r"\b((?:password|passwd|passkey|secret|token|api_?key|access_token|private_key)\w*)(\s*[=:]\s*)([^\s&,;\"']+)",
    re.IGNORECASE,
)
_PRIVATE_KEY = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")


def _parts(key: str) -> list[str]:
    return [part for part in _KEY_PARTS.split(key.lower()) if part]


def secret_key(key: str) -> bool:
    """Whether a value under `key` is a secret (replaced whole)."""
    return any(
        part.startswith(_SECRET_PREFIXES) or part.endswith(_SECRET_SUFFIXES) or part in _SECRET_WORDS
        for part in _parts(key)
    )


def phone_key(key: str) -> bool:
    return any(part.startswith(_PHONE_PREFIXES) for part in _parts(key))


def _hash_key(key: str) -> bool:
    return any(part.endswith(_HASH_WORDS) or part.startswith(_HASH_WORDS) for part in _parts(key))


def mask_text(text: str) -> str:
    """A free text with the secrets its shape gives away masked."""
    text = redact_path(text)
    text = _JWT.sub(MASK, text)
    text = _AUTH_HEADER.sub(lambda m: f"{m[1]} {MASK}", text)
    text = _SECRET_PAIR.sub(lambda m: f"{m[1]}{m[2]}{MASK}", text)
    return _PHONE.sub(lambda m: mask_phone(m[0].lstrip("+")), text)


def mask_secrets(value: object, key: str = "") -> object:
    """`value` (JSON-like: mappings, lists, text, numbers) with every secret in it masked; `key` is the
    name it was found under."""
    if isinstance(value, Mapping):
        return {name: mask_secrets(item, str(name)) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(item, key) for item in value]
    if value is None or isinstance(value, bool):
        return value
    if key and secret_key(key):
        return MASK
    if key and phone_key(key):
        return mask_phone(str(value).lstrip("+"))
    if isinstance(value, int | float):
        text = str(value)
        return mask_phone(text) if _PHONE.fullmatch(text) else value
    text = str(value)
    if _PRIVATE_KEY.fullmatch(text.strip()) and not _hash_key(key):
        return MASK
    return mask_text(text)
