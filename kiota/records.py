"""The system of record's rows as typed, frozen values.

One dataclass per table the services pass around. A record's fields are its table's columns,
named as the columns are, so a new column is added here and in its migration, and nowhere else:
`from_row` picks a record's fields out of any row that has them (a query returning a record
selects `*` or `table.*`), converts what the driver returns in a wider type (NUMERIC money to
`int`, arrays to tuples), and refuses a row that lacks one. Only `kiota/store/` builds records
from rows; everything above it reads attributes, never `row["…"]`.
"""

from __future__ import annotations

import dataclasses
import types
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, Self, Union, get_args, get_origin, get_type_hints


class Row(Protocol):
    """What a record is built from: anything whose columns are read by name (a driver's row, a dict)."""

    def __getitem__(self, name: str, /) -> Any: ...


class Record:
    """Base of the records: construction from a row."""

    @classmethod
    def from_row(cls, row: Row) -> Self:
        values: dict[str, Any] = {}
        for name, convert in _converters(cls):
            try:
                value = row[name]
            except KeyError:
                raise KeyError(f"a row for {cls.__name__} lacks the column {name!r}") from None
            values[name] = value if value is None else convert(value)
        return cls(**values)


def _whole(value: Any) -> int:
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise ValueError(f"{value} is not a whole number of units")
        return int(value)
    return int(value)


def _same(value: Any) -> Any:
    return value


_CONVERTERS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _converters(cls: type) -> tuple[tuple[str, Any], ...]:
    if cls in _CONVERTERS:
        return _CONVERTERS[cls]
    hints = get_type_hints(cls)
    out: list[tuple[str, Any]] = []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if get_origin(hint) in (Union, types.UnionType):
            hint = next(arg for arg in get_args(hint) if arg is not type(None))
        if hint is int:
            out.append((field.name, _whole))
        elif get_origin(hint) is tuple:
            out.append((field.name, tuple))
        else:
            out.append((field.name, _same))
    _CONVERTERS[cls] = tuple(out)
    return _CONVERTERS[cls]


@dataclasses.dataclass(frozen=True, slots=True)
class User(Record):
    """A user (`users`), created on first sight of a token's subject, with its own deposit address."""

    id: str
    address_index: int
    deposit_address: str
    created_at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Deposit(Record):
    """An M-Pesa deposit (`deposits`): KES in, USDC paid to the user's address."""

    id: uuid.UUID
    user_id: str
    kind: str
    status: str
    amount_kes: int
    kes_per_usd: Decimal
    amount_usdc: int
    phone_masked: str
    checkout_request_id: str | None
    merchant_request_id: str | None
    mpesa_receipt: str | None
    received_kes: int | None
    paid_at_mpesa: datetime | None
    tx_hash: str | None
    failure_code: str | None
    failure_reason: str | None
    review_reason: str | None
    query_attempts: int
    next_query_at: datetime | None
    processing_since: datetime | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    pushed_at: datetime | None
    last_query_result: str | None
    confirmed_at: datetime | None
    confirmed_by: str | None
    confirm_started_at: datetime | None
    confirm_attempts: int
    confirm_answer: str | None
    request_key: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Callback(Record):
    """One raw callback Safaricom (or anyone) posted (`mpesa_callbacks`), parsed as far as it went."""

    id: int
    received_at: datetime
    remote_addr: str | None
    raw_body: str
    parse_error: str | None
    checkout_request_id: str | None
    merchant_request_id: str | None
    result_code: int | None
    result_desc: str | None
    amount_kes: int | None
    mpesa_receipt: str | None
    transaction_at: datetime | None
    phone_masked: str | None
    deposit_id: uuid.UUID | None
    disposition: str
    raw_bytes: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class Payout(Record):
    """One USDC transfer from the treasury (`payouts`); its nonce once signed."""

    id: int
    deposit_id: uuid.UUID | None
    purpose: str
    chain_id: int
    token_address: str
    from_address: str
    to_address: str
    amount_micro: int
    nonce: int | None
    status: str
    tx_hash: str | None
    block_number: int | None
    created_at: datetime
    updated_at: datetime
    settled_at: datetime | None
    cancel_reason: str | None
    final_at: datetime | None
    out_of_chain_block: int | None
    signed_at: datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt(Record):
    """One signed transaction for a payout's nonce (`payout_attempts`), stored before it is sent."""

    id: int
    payout_id: int
    nonce: int
    tx_hash: str
    raw_tx: str
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    gas_limit: int
    created_at: datetime
    broadcast_at: datetime | None
    broadcast_block: int | None
    kind: str


@dataclasses.dataclass(frozen=True, slots=True)
class Intent(Record):
    """A USDC deposit intent (`deposit_intents`): an address watched until paid, expired or given up."""

    id: uuid.UUID
    user_id: str
    status: str
    deposit_address: str
    expected_amount_usdc: int | None
    received_amount_usdc: int | None
    transfer_id: int | None
    checks: int
    end_reason: str | None
    flags: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class Transfer(Record):
    """A USDC Transfer log seen on chain to one of our addresses (`chain_transfers`)."""

    id: int
    chain_id: int
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    token_address: str
    from_address: str
    to_address: str
    amount_micro: int
    user_id: str
    kind: str
    status: str
    intent_id: uuid.UUID | None
    flags: tuple[str, ...]
    first_seen_at: datetime
    credited_at: datetime | None
    reversed_at: datetime | None
    seq: int
    credit_key: str | None
    gone_rounds: int
    missing_since: datetime | None  # held for a person and not confirmed on chain now (sql/migrations/0018)


@dataclasses.dataclass(frozen=True, slots=True)
class JobRun(Record):
    """A job's history in PostgreSQL (`jobs`): runs, failures, and why it stopped."""

    id: str
    function: str
    deposit_id: uuid.UUID | None
    status: str
    failures: int
    runs: int
    last_error: str | None
    blocked_reason: str | None
    next_run_at: datetime | None
    first_run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    worker_id: str | None
    queue: str
    intent_id: uuid.UUID | None
    enqueued_at: datetime
    started_at: datetime | None
    last_outcome: str | None
    progress: dict[str, object] | None
    logs: list[dict[str, object]]


@dataclasses.dataclass(frozen=True, slots=True)
class JobAttempt(Record):
    """One run of a job (`job_attempts`): when, by which worker, how it ended, and its error with traceback."""

    job_id: str
    attempt: int
    worker_id: str | None
    started_at: datetime
    finished_at: datetime | None
    duration: timedelta | None
    outcome: str | None
    error: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class QueueDepthSample(Record):
    """A queue's depth in one minute (`queue_depth_samples`), as the workers' heartbeat saw it."""

    queue: str
    at: datetime
    waiting: int
    active: int


@dataclasses.dataclass(frozen=True, slots=True)
class Guards(Record):
    """The payout guards (`payout_guards`, one row): the kill switch, the lane's pause, the limits."""

    id: bool
    kill_switch: bool
    lane_paused: bool
    pause_reason: str | None
    per_deposit_max_micro: int
    hourly_cap_micro: int
    daily_cap_micro: int
    updated_at: datetime
    updated_by: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class ReviewItem(Record):
    """Money or an event waiting for a person (`review_items`)."""

    id: int
    kind: str
    dedupe_key: str
    deposit_id: uuid.UUID | None
    callback_id: int | None
    amount_kes: int | None
    reason: str
    status: str
    created_at: datetime
    resolved_at: datetime | None
    resolution: str | None
    chain_transfer_id: int | None
    amount_usdc_micro: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Operator(Record):
    """A person's admin account (`operators`): a viewer reads, an operator acts."""

    id: int
    name: str
    role: str
    password_hash: str = dataclasses.field(repr=False)  # argon2id; never printed or logged
    created_at: datetime
    disabled_at: datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class AdminAction(Record):
    """One thing an admin did (`admin_actions`, append-only): who, what, to which target, before and after."""

    id: int
    actor: str
    actor_role: str
    action: str
    target_kind: str
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class MoneyProposal(Record):
    """A money action one operator proposed and another must approve (`money_proposals`): the two-person rule."""

    id: int
    action: str
    review_item_id: int | None
    deposit_id: uuid.UUID | None
    user_id: str | None
    asset: str | None
    amount: int | None
    note: str
    status: str
    proposed_by: str
    proposed_at: datetime
    approved_by: str | None
    closed_by: str | None
    closed_at: datetime | None
    close_note: str | None
    entry_id: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class QueueState(Record):
    """Whether a named queue is paused, and who changed it last (`queue_states`)."""

    queue: str
    paused: bool
    changed_by: str | None
    changed_at: datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerHeartbeat(Record):
    """A worker process that said it is alive (`worker_heartbeats`), and the queues it consumes."""

    worker_id: str
    hostname: str
    pid: int
    started_at: datetime
    seen_at: datetime
    queues: list[str]
