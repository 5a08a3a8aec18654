"""Local secrets for `kiota dev`: a fresh mnemonic's deposit xpub, a treasury key, tokens.

Development only. Production never holds a mnemonic: its `DEPOSIT_XPUB` comes
from a key kept offline. Here we derive the account-level extended *public* key
(m/44'/60'/0'/0) from a new local mnemonic so the dev system behaves exactly
like production, and print the mnemonic once so a developer can recover funds
on the local chain.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from bip_utils import Bip32Secp256k1
from eth_account import Account
from eth_account.hdaccount import generate_mnemonic, seed_from_mnemonic
from eth_account.types import Language

DEPOSIT_PATH = "m/44'/60'/0'/0"


def xpub_from_mnemonic(mnemonic: str, path: str = DEPOSIT_PATH) -> str:
    """The BIP-32 xpub at `path` of a BIP-39 mnemonic (no passphrase)."""
    key = Bip32Secp256k1.FromSeedAndPath(seed_from_mnemonic(mnemonic, ""), path)
    return str(key.PublicKey().ToExtended())


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
