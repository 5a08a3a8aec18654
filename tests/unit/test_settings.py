import pytest

from kiota.errors import ConfigError
from kiota.job_names import Queue
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


# --- issue 11, the edge: the JWT secret's length, token claims, the rate's band, the abuse limits ---


@pytest.mark.parametrize(
    ("secret", "refused"),
    [
        ("x" * 31, True),
        ("x" * 32, False),
        ("é" * 16, False),  # 32 bytes in UTF-8: bytes count, not characters
        ("é" * 15 + "x", True),  # 31 bytes
        ("", True),
    ],
)
def test_a_jwt_secret_shorter_than_32_bytes_is_refused(secret: str, refused: bool) -> None:
    if refused:
        with pytest.raises(ConfigError) as caught:
            load_settings(Settings, **kwargs(jwt_secret=secret))
        assert "JWT_SECRET" in str(caught.value) and "32 bytes" in str(caught.value)
        if secret:
            assert secret not in str(caught.value)
    else:
        load_settings(Settings, **kwargs(jwt_secret=secret))


def test_the_worker_needs_no_jwt_secret_but_refuses_a_short_one() -> None:
    worker = load_settings(WorkerSettings, **kwargs(jwt_secret=None, treasury_private_key=TREASURY_KEY))
    assert worker.jwt_secret.get_secret_value() == ""
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load_settings(WorkerSettings, **kwargs(jwt_secret="short", treasury_private_key=TREASURY_KEY))


def test_the_token_claims_are_optional_and_blank_means_unset() -> None:
    settings = load_settings(Settings, **kwargs())
    assert (settings.jwt_issuer, settings.jwt_audience) == (None, None)
    settings = load_settings(Settings, **kwargs(jwt_issuer=" https://id.kiota.example ", jwt_audience="kiota-app"))
    assert (settings.jwt_issuer, settings.jwt_audience) == ("https://id.kiota.example", "kiota-app")
    assert load_settings(Settings, **kwargs(jwt_issuer="  ")).jwt_issuer is None


@pytest.mark.parametrize(
    ("rate", "band", "refused"),
    [
        ("129.50", {}, False),
        ("50", {}, False),  # the band's ends are inside it
        ("500", {}, False),
        ("49.99", {}, True),
        ("500.01", {}, True),
        ("12950", {}, True),  # the decimal point dropped: 100x too many shillings per dollar
        ("1.2950", {}, True),  # moved the other way: 100x too many dollars per shilling
        ("12950", {"kes_per_usd_max": "20000"}, False),  # an operator may widen the band on purpose
        ("129.50", {"kes_per_usd_min": "130"}, True),
        ("129.50", {"kes_per_usd_min": "200", "kes_per_usd_max": "100"}, True),  # an empty band
    ],
)
def test_kes_per_usd_outside_its_sanity_band_is_refused(rate: str, band: dict[str, str], refused: bool) -> None:
    if refused:
        with pytest.raises(ConfigError, match="KES_PER_USD"):
            load_settings(Settings, **kwargs(kes_per_usd=rate, **band))
    else:
        assert str(load_settings(Settings, **kwargs(kes_per_usd=rate, **band)).kes_per_usd) == rate


@pytest.mark.parametrize("bound", ["abc", "-5", "0", 500.0])
def test_a_malformed_band_is_refused(bound: object) -> None:
    with pytest.raises(ConfigError, match="KES_PER_USD_MAX"):
        load_settings(Settings, **kwargs(kes_per_usd_max=bound))


def test_the_abuse_limits_default_to_the_contract() -> None:
    values = {k: v for k, v in kwargs().items() if not k.startswith("limit_")}
    settings = load_settings(Settings, **values)
    assert (
        settings.limit_initiate_per_user,
        settings.limit_initiate_per_phone,
        settings.limit_intents_per_user,
        settings.limit_per_ip,
    ) == ("10/hour", "5/hour", "30/hour", "600/minute")


@pytest.mark.parametrize(
    ("name", "value", "refused"),
    [
        ("limit_initiate_per_user", "5/minute", False),
        ("limit_initiate_per_phone", "10 per hour", False),
        ("limit_intents_per_user", "1/second;30/hour", False),
        ("limit_per_ip", "600/minute", False),
        ("limit_per_ip", "lots", True),
        ("limit_initiate_per_user", "10/fortnight", True),
        ("limit_initiate_per_phone", "0/hour", True),  # would refuse every push: a typo, not a policy
        ("limit_intents_per_user", "", True),
    ],
)
def test_a_limit_must_be_in_the_limits_notation(name: str, value: str, refused: bool) -> None:
    if refused:
        with pytest.raises(ConfigError, match=name.upper()):
            load_settings(Settings, **kwargs(**{name: value}))
    else:
        load_settings(Settings, **kwargs(**{name: value}))


ADDRESS = "0x" + "ab" * 20


@pytest.mark.parametrize(
    ("queues", "key", "address", "error"),
    [
        (None, None, None, "missing required setting TREASURY_PRIVATE_KEY"),  # all queues by default
        ("payouts", None, ADDRESS, "missing required setting TREASURY_PRIVATE_KEY"),
        ("chain,maintenance", None, None, "missing required setting TREASURY_ADDRESS (or TREASURY_PRIVATE_KEY)"),
        ("chain,maintenance", None, ADDRESS, None),
        ("maintenance", None, None, None),
        ("chain", TREASURY_KEY, None, None),
        ("payouts", TREASURY_KEY, None, None),
        ("payouts,nope", TREASURY_KEY, None, "WORKER_QUEUES"),
        ("", TREASURY_KEY, None, "WORKER_QUEUES"),
        ("chain", None, "0x1234", "TREASURY_ADDRESS"),
        # a list of no address is no address: the chain queue would credit a treasury's own transfers
        ("chain", None, " , ", "missing required setting TREASURY_ADDRESS (or TREASURY_PRIVATE_KEY)"),
    ],
)
def test_only_a_worker_that_serves_payouts_needs_the_treasury_key(
    queues: str | None, key: str | None, address: str | None, error: str | None
) -> None:
    values = kwargs(worker_queues=queues, treasury_private_key=key, treasury_address=address)
    if error is None:
        settings = load_settings(WorkerSettings, **values)
        assert ",".join(settings.queues) == (queues or "payouts,chain,maintenance")
    else:
        with pytest.raises(ConfigError) as caught:
            load_settings(WorkerSettings, **values)
        assert error in str(caught.value)


def test_queues_are_parsed_in_one_order_and_each_has_its_concurrency() -> None:
    settings = load_settings(
        WorkerSettings,
        **kwargs(worker_queues=" maintenance,payouts ,payouts", treasury_private_key=TREASURY_KEY),
        queue_concurrency_payouts=7,
    )
    assert settings.queues == [Queue.PAYOUTS, Queue.MAINTENANCE]
    assert [settings.concurrency(q) for q in Queue] == [7, 2, 2]


@pytest.mark.parametrize("bad", ["0x" + "0" * 64, "0x" + "f" * 64])  # zero; not below the curve's order
def test_a_hex_key_that_is_no_secp256k1_key_is_refused_by_the_settings_not_at_signing(bad: str) -> None:
    # 64 hex digits passed the settings; the worker then failed building its treasury, and eth-keys' chained
    # error ("Value <the key as an integer> is not less than or equal to …") printed the key in the traceback.
    with pytest.raises(ConfigError) as caught:
        load_settings(WorkerSettings, **kwargs(treasury_private_key=f"{TREASURY_KEY},{bad}"))
    message = str(caught.value)
    assert "TREASURY_PRIVATE_KEY" in message
    assert str(int(bad, 16)) not in message and bad.removeprefix("0x") not in message
