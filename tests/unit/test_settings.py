import pytest

from kiota.errors import ConfigError
from kiota.settings import Settings, WorkerSettings, load_settings
from tests.support import TREASURY_KEY, settings_kwargs


def kwargs(**changes: object) -> dict[str, object]:
    values: dict[str, object] = {"_env_file": None, **settings_kwargs("postgresql://x@127.0.0.1/kiota")}
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def test_complete_settings_load() -> None:
    settings = load_settings(Settings, **kwargs())
    assert settings.callback_tokens == ["cb-token-0123456789abcdef"]
    assert settings.public_url == "http://127.0.0.1:8000"
    assert str(settings.kes_per_usd) == "129.50"
    assert settings.deposit_confirmations_required == 2
    assert (settings.intent_poll_seconds, settings.intent_ttl_seconds, settings.intent_max_checks) == (30, 3600, 120)


@pytest.mark.parametrize(
    "name",
    [
        "jwt_secret",
        "mpesa_consumer_key",
        "mpesa_consumer_secret",
        "mpesa_shortcode",
        "mpesa_passkey",
        "mpesa_callback_token",
        "kes_per_usd",
        "deposit_xpub",
    ],
)
def test_a_missing_required_setting_is_named_in_one_line(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(name.upper(), raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings(Settings, **kwargs(**{name: None}))
    message = str(caught.value)
    assert message == f"missing required setting {name.upper()}"
    assert "\n" not in message


def test_the_api_settings_have_no_treasury_key_and_the_worker_requires_one() -> None:
    assert "treasury_private_key" not in Settings.model_fields
    with pytest.raises(ConfigError, match="missing required setting TREASURY_PRIVATE_KEY"):
        load_settings(WorkerSettings, **kwargs())
    worker = load_settings(WorkerSettings, **kwargs(treasury_private_key=TREASURY_KEY))
    assert worker.treasury_private_key.get_secret_value() == TREASURY_KEY


def test_a_malformed_value_is_named_but_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(WorkerSettings, **kwargs(treasury_private_key="0xnot-a-key-secret-value"))
    assert "TREASURY_PRIVATE_KEY" in str(caught.value)
    assert "not-a-key-secret-value" not in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "refused"),
    [
        ({"mpesa_base_url": "https://sandbox.safaricom.co.ke", "base_rpc_url": "https://mainnet.base.org"}, True),
        ({"mpesa_base_url": "https://sandbox.safaricom.co.ke", "base_rpc_url": "http://127.0.0.1:8545"}, False),
        (
            {
                "mpesa_base_url": "https://sandbox.safaricom.co.ke",
                "base_rpc_url": "https://sepolia.base.org",
                "base_chain_id": 84532,
            },
            False,
        ),
        ({"mpesa_base_url": "https://api.safaricom.co.ke", "base_chain_id": 84532}, True),
        ({"mpesa_base_url": "https://api.safaricom.co.ke", "base_chain_id": 31337}, True),
        ({"mpesa_base_url": "https://api.safaricom.co.ke", "base_rpc_url": "https://mainnet.base.org"}, False),
    ],
)
def test_dangerous_pairings_are_refused(changes: dict[str, object], refused: bool) -> None:
    if refused:
        with pytest.raises(ConfigError, match="dangerous pairing"):
            load_settings(Settings, **kwargs(**changes))
    else:
        load_settings(Settings, **kwargs(**changes))


@pytest.mark.parametrize("rate", ["abc", "0", "-1", 129.5])
def test_a_bad_rate_is_refused(rate: object) -> None:
    with pytest.raises(ConfigError, match="KES_PER_USD"):
        load_settings(Settings, **kwargs(kes_per_usd=rate))


def test_two_callback_tokens_rotate_and_short_ones_are_refused() -> None:
    settings = load_settings(Settings, **kwargs(mpesa_callback_token="new-token-0123456789,old-token-0123456789"))
    assert settings.callback_tokens == ["new-token-0123456789", "old-token-0123456789"]
    with pytest.raises(ConfigError, match="MPESA_CALLBACK_TOKEN"):
        load_settings(Settings, **kwargs(mpesa_callback_token="short"))
    with pytest.raises(ConfigError, match="MPESA_CALLBACK_TOKEN"):
        load_settings(Settings, **kwargs(mpesa_callback_token="a" * 20 + "," + "b" * 20 + "," + "c" * 20))


def test_a_private_xpub_is_refused() -> None:
    xprv = (
        "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33"
        "yuGBxrMPHi"
    )
    with pytest.raises(ConfigError, match="PRIVATE"):
        load_settings(Settings, **kwargs(deposit_xpub=xprv))
