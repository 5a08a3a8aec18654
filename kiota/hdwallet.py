"""Deposit addresses from an extended public key (BIP-32 public derivation).

User n's deposit address is child n of `DEPOSIT_XPUB` (the external chain
m/44'/60'/0'/0). Only public derivation is possible here, on purpose: the service
never holds the private key of a deposit address.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from coincurve import PublicKey
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from kiota.errors import ConfigError

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_XPUB_VERSIONS = {bytes.fromhex("0488b21e"), bytes.fromhex("043587cf")}  # xpub, tpub
_XPRV_VERSIONS = {bytes.fromhex("0488ade4"), bytes.fromhex("04358394")}  # xprv, tprv
_HARDENED = 0x80000000
_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _b58check_decode(text: str) -> bytes:
    number = 0
    for char in text:
        digit = _B58_ALPHABET.find(char)
        if digit < 0:
            raise ConfigError("DEPOSIT_XPUB is not base58")
        number = number * 58 + digit
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    raw = b"\x00" * (len(text) - len(text.lstrip("1"))) + raw
    payload, checksum = raw[:-4], raw[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        raise ConfigError("DEPOSIT_XPUB has a bad checksum")
    return payload


def b58check_encode(payload: bytes) -> str:
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    number = int.from_bytes(data, "big")
    text = ""
    while number:
        number, digit = divmod(number, 58)
        text = _B58_ALPHABET[digit] + text
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + text


@dataclass(frozen=True, slots=True)
class ExtendedPublicKey:
    """A parsed xpub: enough to derive non-hardened children."""

    chain_code: bytes
    public_key: bytes  # 33-byte compressed point

    @classmethod
    def parse(cls, text: str) -> ExtendedPublicKey:
        payload = _b58check_decode(text.strip())
        if len(payload) != 78:
            raise ConfigError("DEPOSIT_XPUB must be a 78-byte BIP-32 extended key")
        version = payload[:4]
        if version in _XPRV_VERSIONS:
            raise ConfigError("DEPOSIT_XPUB is a PRIVATE extended key; configure the xpub only")
        if version not in _XPUB_VERSIONS:
            raise ConfigError("DEPOSIT_XPUB is not an xpub")
        key = payload[45:]
        try:
            PublicKey(key)
        except ValueError as exc:
            raise ConfigError("DEPOSIT_XPUB holds an invalid public key") from exc
        return cls(chain_code=payload[13:45], public_key=key)

    def child_public_key(self, index: int) -> PublicKey:
        if not 0 <= index < _HARDENED:
            raise ValueError("only non-hardened children (0 <= n < 2**31) derive from an xpub")
        digest = hmac.new(self.chain_code, self.public_key + index.to_bytes(4, "big"), hashlib.sha512).digest()
        tweak = digest[:32]
        if int.from_bytes(tweak, "big") >= _SECP256K1_ORDER:
            # Probability ~2**-127; BIP-32 says skip to the next index. We refuse loudly.
            raise ValueError(f"child {index} is invalid under BIP-32")
        return PublicKey(self.public_key).add(tweak)

    def child_address(self, index: int) -> str:
        """The EIP-55 checksummed Ethereum address of child `index`."""
        uncompressed = self.child_public_key(index).format(compressed=False)
        return to_checksum_address(keccak(uncompressed[1:])[-20:])
