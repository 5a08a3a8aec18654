import pytest
from bip_utils import Base58Decoder, Base58Encoder

from kiota.errors import ConfigError
from kiota.hdwallet import ExtendedPublicKey
from tests.support import TEST_CHILDREN, TEST_XPUB


@pytest.mark.parametrize(("index", "address"), list(enumerate(TEST_CHILDREN)))
def test_known_vector(index: int, address: str) -> None:
    assert ExtendedPublicKey.parse(TEST_XPUB).child_address(index) == address


def test_children_are_distinct() -> None:
    key = ExtendedPublicKey.parse(TEST_XPUB)
    addresses = {key.child_address(i) for i in range(200)}
    assert len(addresses) == 200


def test_a_private_extended_key_is_refused() -> None:
    # BIP-32 test vector 1's master xprv.
    xprv = (
        "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33"
        "yuGBxrMPHi"
    )
    with pytest.raises(ConfigError, match="PRIVATE"):
        ExtendedPublicKey.parse(xprv)


@pytest.mark.parametrize("bad", [TEST_XPUB[:-1] + "5", "xpub", "0OIl", TEST_XPUB + "1"])
def test_malformed_xpub_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        ExtendedPublicKey.parse(bad)


def test_an_xpub_whose_key_is_off_the_curve_is_refused() -> None:
    payload = Base58Decoder.CheckDecode(TEST_XPUB)
    off_curve = Base58Encoder.CheckEncode(payload[:45] + b"\x02" + b"\xff" * 32)
    with pytest.raises(ConfigError, match="invalid public key"):
        ExtendedPublicKey.parse(off_curve)


def test_a_tpub_derives_the_same_children() -> None:
    tpub = Base58Encoder.CheckEncode(bytes.fromhex("043587cf") + Base58Decoder.CheckDecode(TEST_XPUB)[4:])
    assert tpub.startswith("tpub")
    assert ExtendedPublicKey.parse(tpub).child_address(1) == TEST_CHILDREN[1]


def test_hardened_children_cannot_be_derived() -> None:
    with pytest.raises(ValueError, match="non-hardened"):
        ExtendedPublicKey.parse(TEST_XPUB).child_address(2**31)


def test_dev_xpub_from_the_test_mnemonic_is_the_contract_vector() -> None:
    from kiota.dev.keys import xpub_from_mnemonic

    assert xpub_from_mnemonic("test test test test test test test test test test test junk") == TEST_XPUB


def test_generated_dev_secrets_are_fresh_and_usable() -> None:
    from kiota.dev.keys import generate_dev_secrets

    first, second = generate_dev_secrets(), generate_dev_secrets()
    assert first.mnemonic != second.mnemonic and first.deposit_xpub != second.deposit_xpub
    assert ExtendedPublicKey.parse(first.deposit_xpub).child_address(0).startswith("0x")
    assert len(first.treasury_private_key) == 66
