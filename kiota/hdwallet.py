"""Deposit addresses from an extended public key (BIP-32 public derivation).

User n's deposit address is child n of `DEPOSIT_XPUB` (the external chain
m/44'/60'/0'/0). Only public derivation is possible here, on purpose: the service
never holds the private key of a deposit address.

The derivation itself (base58check, HMAC-SHA512, point addition) is bip-utils';
this module only turns its failures into the `ConfigError`s that settings
validation reports, and refuses what must never be configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bip_utils import Base58ChecksumError, Base58Decoder, Bip32KeyError, Bip32Secp256k1, EthAddrEncoder
from bip_utils.bip.bip32 import Bip32Const, Bip32KeyNetVersions

from kiota.errors import ConfigError

_NETWORKS: tuple[Bip32KeyNetVersions, ...] = (  # xpub/xprv, tpub/tprv
    Bip32Const.MAIN_NET_KEY_NET_VERSIONS,
    Bip32Const.TEST_NET_KEY_NET_VERSIONS,
)
_HARDENED = 0x80000000


def _version(text: str) -> bytes:
    try:
        payload: bytes = Base58Decoder.CheckDecode(text)
    except Base58ChecksumError as exc:
        raise ConfigError("DEPOSIT_XPUB has a bad checksum") from exc
    except ValueError as exc:
        raise ConfigError("DEPOSIT_XPUB is not base58") from exc
    if len(payload) != 78:
        raise ConfigError("DEPOSIT_XPUB must be a 78-byte BIP-32 extended key")
    return payload[:4]


@dataclass(frozen=True, slots=True)
class ExtendedPublicKey:
    """A parsed xpub: enough to derive non-hardened children."""

    _key: Any  # bip_utils.Bip32Secp256k1, public only (bip-utils ships no type information)

    @classmethod
    def parse(cls, text: str) -> ExtendedPublicKey:
        text = text.strip()
        version = _version(text)
        if any(version == network.Private() for network in _NETWORKS):
            raise ConfigError("DEPOSIT_XPUB is a PRIVATE extended key; configure the xpub only")
        network = next((n for n in _NETWORKS if version == n.Public()), None)
        if network is None:
            raise ConfigError("DEPOSIT_XPUB is not an xpub")
        try:
            key = Bip32Secp256k1.FromExtendedKey(text, network)
        except (Bip32KeyError, ValueError) as exc:
            raise ConfigError("DEPOSIT_XPUB holds an invalid public key") from exc
        return cls(key)

    def child_address(self, index: int) -> str:
        """The EIP-55 checksummed Ethereum address of child `index`.

        A child that BIP-32 calls invalid (probability ~2**-127) raises ValueError
        from the curve arithmetic: we refuse loudly rather than skip to the next index.
        """
        if not 0 <= index < _HARDENED:
            raise ValueError("only non-hardened children (0 <= n < 2**31) derive from an xpub")
        child = self._key.ChildKey(index)
        return str(EthAddrEncoder.EncodeKey(child.PublicKey().KeyObject()))
