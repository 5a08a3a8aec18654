"""Local secrets for `kiota dev`: a fresh mnemonic's deposit xpub, a treasury key, tokens.

Development only. Production never holds a mnemonic: its `DEPOSIT_XPUB` comes
from a key kept offline. Here we derive the account-level extended *public* key
(m/44'/60'/0'/0) from a new local mnemonic so the dev system behaves exactly
like production, and print the mnemonic once so a developer can recover funds
on the local chain.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from coincurve import PrivateKey
from eth_account import Account
from eth_account.hdaccount import generate_mnemonic, seed_from_mnemonic
from eth_account.types import Language

from kiota.hdwallet import b58check_encode

_HARDENED = 0x80000000
_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_XPUB_VERSION = bytes.fromhex("0488b21e")
DEPOSIT_PATH = (44 | _HARDENED, 60 | _HARDENED, 0 | _HARDENED, 0)  # m/44'/60'/0'/0


def _hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def _child_private(key: bytes, chain_code: bytes, index: int) -> tuple[bytes, bytes]:
    if index & _HARDENED:
        data = b"\x00" + key + index.to_bytes(4, "big")
    else:
        data = PrivateKey(key).public_key.format(compressed=True) + index.to_bytes(4, "big")
    digest = hmac.new(chain_code, data, hashlib.sha512).digest()
    child = (int.from_bytes(digest[:32], "big") + int.from_bytes(key, "big")) % _ORDER
    return child.to_bytes(32, "big"), digest[32:]


def xpub_from_mnemonic(mnemonic: str, path: tuple[int, ...] = DEPOSIT_PATH) -> str:
    """The BIP-32 xpub at `path` of a BIP-39 mnemonic (no passphrase)."""
    digest = hmac.new(b"Bitcoin seed", seed_from_mnemonic(mnemonic, ""), hashlib.sha512).digest()
    key, chain_code = digest[:32], digest[32:]
    parent_public = b""
    for index in path:
        parent_public = PrivateKey(key).public_key.format(compressed=True)
        key, chain_code = _child_private(key, chain_code, index)
    payload = (
        _XPUB_VERSION
        + bytes([len(path)])
        + _hash160(parent_public)[:4]
        + path[-1].to_bytes(4, "big")
        + chain_code
        + PrivateKey(key).public_key.format(compressed=True)
    )
    return b58check_encode(payload)


@dataclass(frozen=True, slots=True)
class DevSecrets:
    mnemonic: str
    deposit_xpub: str
    treasury_private_key: str
    treasury_address: str
    jwt_secret: str
    callback_token: str
    consumer_key: str
    consumer_secret: str
    admin_password: str


def generate_dev_secrets() -> DevSecrets:
    mnemonic = generate_mnemonic(12, Language.ENGLISH)
    treasury = Account.create()
    return DevSecrets(
        mnemonic=mnemonic,
        deposit_xpub=xpub_from_mnemonic(mnemonic),
        treasury_private_key="0x" + bytes(treasury.key).hex(),
        treasury_address=treasury.address,
        jwt_secret=secrets.token_urlsafe(32),
        callback_token=secrets.token_urlsafe(24),
        consumer_key=secrets.token_urlsafe(18),
        consumer_secret=secrets.token_urlsafe(18),
        admin_password=secrets.token_urlsafe(12),
    )
