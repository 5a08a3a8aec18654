"""Process configuration: one pydantic-settings class, built at process start.

Every variable of the contract lives here. Required ones have no default, so a
missing one stops the process with one line naming it (`load_settings`). Nothing
here runs at import: the CLI, the FastAPI lifespan and the arq `startup` build it.
The API process uses `Settings`, which has no treasury key at all; the worker
uses `WorkerSettings`, which requires it when the worker serves the `payouts` queue.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kiota.errors import ConfigError, InvalidInput
from kiota.hdwallet import ExtendedPublicKey
from kiota.job_names import Queue
from kiota.money import parse_rate
from kiota.ratelimits import parse_limit

SANDBOX_DARAJA_HOST = "sandbox.safaricom.co.ke"
PRODUCTION_DARAJA_HOST = "api.safaricom.co.ke"
BASE_MAINNET_CHAIN_ID = 8453
MISSING = "missing required setting "
MIN_JWT_SECRET_BYTES = 32
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # a private key is below it
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})  # noqa: S104 - a host name, not a bind
# Where Safaricom's production callbacks come from (integrators' published lists, not an official API):
# the callback allowlist with production Daraja when MPESA_CALLBACK_ALLOWED_IPS is not set. The one
# place this list lives; a refusal by it is logged once per address, so a change at Safaricom shows.
SAFARICOM_CALLBACK_IPS = (
    "196.201.214.200",
    "196.201.214.206",
    "196.201.213.114",
    "196.201.214.207",
    "196.201.214.208",
    "196.201.213.44",
    "196.201.212.127",
    "196.201.212.138",
    "196.201.212.129",
    "196.201.212.136",
    "196.201.212.74",
    "196.201.212.69",
)


class Settings(BaseSettings):
    """Everything `kiota api` needs; `WorkerSettings` adds the treasury key."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/kiota"
    redis_url: str = "redis://127.0.0.1:6379/0"
    port: int = Field(default=8000, ge=1, le=65535)
    public_base_url: str | None = None

    jwt_secret: SecretStr
    admin_username: str | None = None
    admin_password: SecretStr | None = None

    mpesa_base_url: str = f"https://{SANDBOX_DARAJA_HOST}"
    mpesa_consumer_key: SecretStr
    mpesa_consumer_secret: SecretStr
    mpesa_shortcode: str
    mpesa_passkey: SecretStr
    mpesa_callback_token: SecretStr
    # Comma-separated CIDRs allowed to POST callbacks (empty: any, but Safaricom's addresses with
    # production Daraja: `callback_allowlist`), and the proxies whose X-Forwarded-For is believed (Render's).
    mpesa_callback_allowed_ips: str = ""
    trusted_proxy_ips: str = ""
    mpesa_min_kes: int = Field(default=10, ge=1, le=250_000)
    kes_per_usd: Decimal

    base_rpc_url: str = "http://127.0.0.1:8545"
    base_chain_id: int = BASE_MAINNET_CHAIN_ID
    base_usdc_address: str = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    deposit_xpub: str
    deposit_confirmations_required: int = Field(default=2, ge=1)

    intent_poll_seconds: int = Field(default=30, ge=1)
    intent_ttl_seconds: int = Field(default=3600, ge=1)
    intent_max_checks: int = Field(default=120, ge=1)
    sweep_seconds: int = Field(default=120, ge=1)
    mpesa_query_after_seconds: int = Field(default=120, ge=1)

    # A success callback is confirmed by Daraja's STK query before its payout is signed (kiota/confirm.py);
    # `off` is refused with production Daraja (`_confirm_success_with_production`).
    mpesa_confirm_success: Literal["on", "off"] = "on"
    # --- issue 11, the edge: abuse limits, token claims, the rate's sanity band ---
    # Request limits in the `limits` library's notation ("5/minute", "10 per hour", "1/second;10/hour"),
    # counted in Redis so that every API process shares them (kiota.ratelimits says which apply where).
    limit_initiate_per_user: str = "10/hour"
    limit_initiate_per_phone: str = "5/hour"
    limit_intents_per_user: str = "30/hour"
    limit_per_ip: str = "600/minute"
    # Checked when set: a token must then carry this `iss` / `aud`.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # KES_PER_USD must lie in this band: a misplaced decimal point must not pay 100x too much.
    kes_per_usd_min: Decimal = Decimal(50)
    kes_per_usd_max: Decimal = Decimal(500)

    @field_validator("kes_per_usd", mode="before")
    @classmethod
    def _rate_is_a_decimal_string(cls, value: Any) -> Decimal:
        if isinstance(value, Decimal):
            return value
        if isinstance(value, float):
            raise ValueError("must be a decimal string such as 129.50, never a float")
        try:
            return parse_rate(str(value))
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("kes_per_usd_min", "kes_per_usd_max", mode="before")
    @classmethod
    def _band_is_a_decimal_string(cls, value: Any) -> Decimal:
        if isinstance(value, float):
            raise ValueError("must be a decimal string such as 500, never a float")
        try:
            return parse_rate(str(value))
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("jwt_secret")
    @classmethod
    def _secret_is_long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_JWT_SECRET_BYTES} bytes")
        return value

    @field_validator("limit_initiate_per_user", "limit_initiate_per_phone", "limit_intents_per_user", "limit_per_ip")
    @classmethod
    def _limit_parses(cls, value: str) -> str:
        parse_limit(value)
        return value

    @field_validator("jwt_issuer", "jwt_audience")
    @classmethod
    def _claim_or_none(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return value.strip()

    @model_validator(mode="after")
    def _rate_within_band(self) -> Settings:
        if not self.kes_per_usd_min < self.kes_per_usd_max:
            raise ValueError("KES_PER_USD_MIN must be below KES_PER_USD_MAX")
        if not self.kes_per_usd_min <= self.kes_per_usd <= self.kes_per_usd_max:
            raise ValueError(
                f"KES_PER_USD is outside its sanity band {self.kes_per_usd_min}-{self.kes_per_usd_max} "
                "(KES_PER_USD_MIN, KES_PER_USD_MAX): a misplaced decimal point?"
            )
        return self

    @field_validator("deposit_xpub")
    @classmethod
    def _xpub_parses(cls, value: str) -> str:
        ExtendedPublicKey.parse(value)
        return value.strip()

    @field_validator("mpesa_callback_token")
    @classmethod
    def _one_or_two_tokens(cls, value: SecretStr) -> SecretStr:
        tokens = [t.strip() for t in value.get_secret_value().split(",")]
        if not 1 <= len(tokens) <= 2 or any(len(t) < 16 for t in tokens):
            raise ValueError("one or two comma-separated tokens of at least 16 characters")
        return value

    @model_validator(mode="after")
    def _refuse_dangerous_pairings(self) -> Settings:
        daraja_host = urlsplit(self.mpesa_base_url).hostname or ""
        rpc_host = urlsplit(self.base_rpc_url).hostname or ""
        if (
            daraja_host == SANDBOX_DARAJA_HOST
            and self.base_chain_id == BASE_MAINNET_CHAIN_ID
            and rpc_host not in LOCAL_HOSTS
        ):
            raise ValueError(
                "dangerous pairing: the Safaricom sandbox with Base mainnet (chain 8453) at a "
                "non-local RPC would pay real USDC for play money"
            )
        if daraja_host == PRODUCTION_DARAJA_HOST and self.base_chain_id != BASE_MAINNET_CHAIN_ID:
            raise ValueError(
                "dangerous pairing: production Daraja with a chain other than Base mainnet "
                "would take real shillings for test tokens"
            )
        return self

    @field_validator("mpesa_confirm_success", mode="before")
    @classmethod
    def _on_or_off(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _confirm_success_with_production(self) -> Settings:
        if self.mpesa_confirm_success == "off" and urlsplit(self.mpesa_base_url).hostname == PRODUCTION_DARAJA_HOST:
            raise ValueError(
                "MPESA_CONFIRM_SUCCESS=off is refused with production Daraja: a forged success callback "
                "would be paid; every success must be confirmed by the STK query"
            )
        return self

    @property
    def production_daraja(self) -> bool:
        return urlsplit(self.mpesa_base_url).hostname == PRODUCTION_DARAJA_HOST

    @property
    def callback_allowlist(self) -> str:
        """Who may POST callbacks: MPESA_CALLBACK_ALLOWED_IPS when set; with production Daraja and no
        setting, Safaricom's published callback addresses; otherwise empty (anyone: the token is the control)."""
        if self.mpesa_callback_allowed_ips.strip():
            return self.mpesa_callback_allowed_ips
        return ",".join(SAFARICOM_CALLBACK_IPS) if self.production_daraja else ""

    @property
    def callback_tokens(self) -> list[str]:
        """Accepted callback tokens; the first is put in new pushes (rotation)."""
        return [t.strip() for t in self.mpesa_callback_token.get_secret_value().split(",")]

    @property
    def public_url(self) -> str:
        return (self.public_base_url or f"http://127.0.0.1:{self.port}").rstrip("/")

    @property
    def deposit_key(self) -> ExtendedPublicKey:
        return ExtendedPublicKey.parse(self.deposit_xpub)

    @property
    def admin_enabled(self) -> bool:
        return bool(self.admin_username and self.admin_password)


class WorkerSettings(Settings):
    """What `kiota worker` needs. Only a worker that serves the `payouts` queue signs payouts, so only it
    needs the treasury key; one that scans the chain without it is told the treasury's address, so that
    the treasury's own payouts never count as deposits."""

    # The queues this worker consumes (`kiota worker --queues` overrides it); each has its own arq worker
    # and its own number of jobs at once (QUEUE_CONCURRENCY_*): arq has no priorities, queues give them.
    worker_queues: str = "payouts,chain,maintenance"
    queue_concurrency_payouts: int = Field(default=20, ge=1, le=200)
    queue_concurrency_chain: int = Field(default=2, ge=1, le=50)
    queue_concurrency_maintenance: int = Field(default=2, ge=1, le=50)
    # Payouts signed and not yet settled per treasury, at most (the lane's pipeline, kiota/payouts/lane.py).
    # What a node's pool takes from one sender: geth's and op-geth's legacypool guarantee 16 executable
    # transactions per account (AccountSlots) and admit more while the pool's 5,120 global slots have room,
    # with 64 more per account held behind a nonce gap (AccountQueue; core/txpool/legacypool DefaultConfig);
    # reth's pool (Base's newer nodes) defaults to 16 per sender (txpool.max-account-slots). Base publishes no
    # per-sender limit of its own sequencer. 128 keeps a 2-second block fed at 40+ payouts a second (each
    # waits about a block). A node that takes fewer only slows the lane (kiota/payouts/lane.py sends the refused
    # ones again each block and signs nothing new meanwhile); set it to the provider's per-sender limit.
    payout_max_in_flight: int = Field(default=128, ge=1, le=1000)
    treasury_private_key: SecretStr | None = None
    treasury_address: str | None = None
    # The worker verifies no bearer token: JWT_SECRET lives with the web service only (render.yaml).
    # Empty unless given (and then checked like the API's); `api.app` refuses to serve with an empty one.
    jwt_secret: SecretStr = Field(default=SecretStr(""), validate_default=False)

    @field_validator("treasury_private_key")
    @classmethod
    def _are_private_keys(cls, value: SecretStr | None) -> SecretStr | None:
        """One key, or several comma-separated (several treasuries, each with its own lane)."""
        if value is None:
            return None
        keys = _listed(value.get_secret_value())
        for key in keys:
            raw = key.removeprefix("0x")
            if len(raw) != 64 or any(c not in "0123456789abcdefABCDEF" for c in raw):
                raise ValueError("must be 32-byte hex private keys, comma-separated")
            if not 0 < int(raw, 16) < SECP256K1_ORDER:  # else eth-keys' own error would print the key
                raise ValueError("lists a value that is not a secp256k1 private key")
        if not keys:
            raise ValueError("must be 32-byte hex private keys, comma-separated")
        if len({k.removeprefix("0x").lower() for k in keys}) != len(keys):
            raise ValueError("lists one key twice")
        return value

    @field_validator("worker_queues")
    @classmethod
    def _queues_parse(cls, value: str) -> str:
        try:
            return ",".join(Queue.parse(value))
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("treasury_address")
    @classmethod
    def _are_addresses(cls, value: str | None) -> str | None:
        """One address, or several comma-separated (a worker without the keys knows every treasury)."""
        if value is None or not value.strip():
            return None
        addresses = _listed(value)
        if not addresses:  # "," names no treasury: as if not given (the chain queue then refuses to start)
            return None
        for raw in addresses:
            if len(raw) != 42 or not raw.startswith("0x") or any(c not in "0123456789abcdefABCDEF" for c in raw[2:]):
                raise ValueError("must be 20-byte hex addresses (0x...), comma-separated")
        if len({a.lower() for a in addresses}) != len(addresses):
            raise ValueError("lists one address twice")
        return ",".join(addresses)

    @model_validator(mode="after")
    def _treasury_for_the_queues(self) -> WorkerSettings:
        if self.treasury_private_key is not None:
            self._keys_match_addresses()
            return self
        if Queue.PAYOUTS in self.queues:
            raise ValueError(MISSING + "TREASURY_PRIVATE_KEY")  # the payouts queue signs payouts
        if Queue.CHAIN in self.queues and self.treasury_address is None:
            # the chain queue must know the treasury, whose payouts are never deposits
            raise ValueError(MISSING + "TREASURY_ADDRESS (or TREASURY_PRIVATE_KEY)")
        return self

    def _keys_match_addresses(self) -> None:
        """TREASURY_ADDRESS, when given with the keys, names exactly their accounts (in any order)."""
        if self.treasury_address is None:
            return
        from_keys = [a.lower() for a in self.treasury_addresses_of_keys]
        given = [a.lower() for a in _listed(self.treasury_address)]
        if len(given) != len(from_keys):
            raise ValueError(
                f"TREASURY_ADDRESS lists {len(given)} addresses but TREASURY_PRIVATE_KEY has {len(from_keys)} keys"
            )
        strangers = [a for a in given if a not in from_keys]
        if strangers:
            raise ValueError(f"TREASURY_ADDRESS {strangers[0]} is the address of none of TREASURY_PRIVATE_KEY's keys")

    @property
    def treasury_keys(self) -> list[SecretStr]:
        """The treasuries' private keys, one lane each (empty: this worker signs nothing)."""
        if self.treasury_private_key is None:
            return []
        return [SecretStr(k) for k in _listed(self.treasury_private_key.get_secret_value())]

    @property
    def treasury_addresses_of_keys(self) -> list[str]:
        from eth_account import Account  # only a worker with keys pays for the import

        return [str(Account.from_key(key.get_secret_value()).address) for key in self.treasury_keys]

    @property
    def treasury_addresses(self) -> list[str]:
        """Every treasury's address: its keys' accounts, else TREASURY_ADDRESS (a worker without keys)."""
        if self.treasury_private_key is not None:
            return self.treasury_addresses_of_keys
        return _listed(self.treasury_address or "")

    @property
    def queues(self) -> list[Queue]:
        return Queue.parse(self.worker_queues)

    def concurrency(self, queue: Queue) -> int:
        """How many of `queue`'s jobs this worker runs at once."""
        limits = {
            Queue.PAYOUTS: self.queue_concurrency_payouts,
            Queue.CHAIN: self.queue_concurrency_chain,
            Queue.MAINTENANCE: self.queue_concurrency_maintenance,
        }
        return limits[queue]


def _listed(value: str) -> list[str]:
    """A comma-separated setting's values, stripped, empty ones left out."""
    return [part.strip() for part in value.split(",") if part.strip()]


SettingsT = TypeVar("SettingsT", bound=Settings)


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Build settings or raise ConfigError with one line that names what is wrong.

    The message never includes a value: a secret could be the thing that is malformed.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    except ConfigError as exc:  # raised inside a validator (e.g. a bad xpub)
        raise ConfigError(str(exc)) from None


def _one_line(exc: ValidationError) -> str:
    missing: list[str] = []
    invalid: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error["loc"]).upper()
        if error["type"] == "missing":
            missing.append(name)
        elif name:
            invalid.append(f"{name} ({error['msg']})")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            if message.startswith(MISSING):  # a setting required only with others (a model validator's)
                missing.append(message.removeprefix(MISSING))
            else:
                invalid.append(message)
    parts = []
    if missing:
        parts.append(MISSING + ", ".join(missing))
    if invalid:
        parts.append("invalid setting " + "; ".join(invalid))
    return "; ".join(parts)
