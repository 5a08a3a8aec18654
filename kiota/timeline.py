"""One deposit's or one intent's whole story, as a list of events in time order (Stripe's payment timeline).

Pure: the rows come from kiota/store/timeline.py (through kiota/money_views.py); here each row becomes the
events it stands for (a callback one, a job attempt its start and end, a payout its signing, mining and
finality), and the events of every source are merged by time. Events at the same moment keep the order of the
story (what caused comes before what it caused), then the order in which they were given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kiota.masking import mask_text
from kiota.money import format_usdc
from kiota.mpesa import mask_phones
from kiota.records import (
    AdminAction,
    Attempt,
    Callback,
    Deposit,
    Intent,
    JobAttempt,
    JobRun,
    Payout,
    ReviewItem,
    Transfer,
)
from kiota.store.timeline import JournalLine

# Within one instant, the story's order: the thing itself, what reached us, our work, money, people.
SOURCES = ("deposit", "intent", "callback", "query", "transfer", "job", "payout", "entry", "review", "action")
RAW_BODY_SHOWN = 2000


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened: when, from which source, a line for people, details, and a page to open."""

    at: datetime
    source: str
    title: str
    detail: str = ""
    link: str | None = None
    tone: str = ""  # "" | "good" | "bad": how the dashboard colours it


@dataclass(frozen=True, slots=True)
class Story:
    """Every row about one deposit or intent, as read from the store."""

    jobs: Sequence[JobRun] = ()
    attempts: Sequence[JobAttempt] = ()
    entries: Sequence[JournalLine] = ()
    reviews: Sequence[ReviewItem] = ()
    actions: Sequence[AdminAction] = ()
    callbacks: Sequence[Callback] = ()
    payouts: Sequence[Payout] = ()
    payout_attempts: Sequence[Attempt] = ()
    transfers: Sequence[Transfer] = field(default_factory=tuple)


def merge(*groups: Iterable[Event]) -> list[Event]:
    """All events in time order; at one instant, in the story's order of sources, then as given."""
    events = [event for group in groups for event in group]
    order = {event_id: n for n, event_id in enumerate(map(id, events))}
    return sorted(events, key=lambda e: (e.at, SOURCES.index(e.source), order[id(e)]))


def deposit_timeline(deposit: Deposit, story: Story) -> list[Event]:
    return merge(
        _deposit_events(deposit),
        (_callback_event(c) for c in story.callbacks),
        _query_events(deposit),
        _common(story),
        _payout_events(story.payouts, story.payout_attempts),
    )


def intent_timeline(intent: Intent, story: Story) -> list[Event]:
    return merge(_intent_events(intent), _transfer_events(story.transfers), _common(story))


def _common(story: Story) -> list[Event]:
    return [
        *_job_events(story.jobs, story.attempts),
        *(_entry_event(e) for e in story.entries),
        *_review_events(story.reviews),
        *(_action_event(a) for a in story.actions),
    ]


def _deposit_events(d: Deposit) -> list[Event]:
    events = [
        Event(
            d.created_at,
            "deposit",
            f"deposit of KES {d.amount_kes} for user {d.user_id}",
            f"phone {d.phone_masked}; quote {d.kes_per_usd} KES/USD = {format_usdc(d.amount_usdc)} USDC",
        )
    ]
    if d.pushed_at is not None:
        events.append(
            Event(
                d.pushed_at,
                "deposit",
                "STK push accepted by Daraja",
                f"CheckoutRequestID {d.checkout_request_id}, MerchantRequestID {d.merchant_request_id}",
            )
        )
    elif d.failure_code is not None and d.status == "failed" and d.checkout_request_id is None:
        events.append(
            Event(d.updated_at, "deposit", f"STK push refused: {d.failure_code}", d.failure_reason or "", tone="bad")
        )
    if d.completed_at is not None:
        title = f"deposit {d.status}" + (f": paid out in {d.tx_hash}" if d.tx_hash else "")
        events.append(
            Event(
                d.completed_at,
                "deposit",
                title,
                d.failure_reason or "",
                tone="good" if d.status == "completed" else "bad",
            )
        )
    if d.status == "needs_review" and d.review_reason:
        events.append(Event(d.updated_at, "deposit", "deposit needs review", d.review_reason, tone="bad"))
    return events


def _callback_event(c: Callback) -> Event:
    if c.parse_error:
        title = f"callback #{c.id} refused: {c.parse_error}"
    else:
        title = f"callback #{c.id}: ResultCode {c.result_code} {c.result_desc or ''}".rstrip()
    facts = [
        f"{name} {value}"
        for name, value in (
            ("receipt", c.mpesa_receipt),
            ("amount KES", c.amount_kes),
            ("phone", c.phone_masked),
            ("from", c.remote_addr),
        )
        if value is not None
    ]
    detail = f"{c.disposition}; " + ", ".join(facts) + "\n" + mask_phones(c.raw_body[:RAW_BODY_SHOWN])
    return Event(c.received_at, "callback", title, detail, tone="good" if c.result_code == 0 else "")


def _query_events(d: Deposit) -> list[Event]:
    """What the STK query said: the table keeps the last answers and counts, not each question."""
    events = []
    if d.confirm_started_at is not None:
        said = f"asked {d.confirm_attempts} time(s); last answer: {d.confirm_answer or '—'}"
        events.append(Event(d.confirm_started_at, "query", "STK query to confirm the success began", said))
    if d.confirmed_at is not None:
        events.append(
            Event(
                d.confirmed_at, "query", f"success confirmed by {d.confirmed_by}", d.confirm_answer or "", tone="good"
            )
        )
    if d.query_attempts:
        said = f"asked {d.query_attempts} time(s) for a lost callback; last answer: {d.last_query_result or '—'}"
        events.append(Event(d.updated_at, "query", "STK query for a lost callback", said))
    return events


def _job_events(jobs: Sequence[JobRun], attempts: Sequence[JobAttempt]) -> list[Event]:
    events = [
        Event(
            j.enqueued_at,
            "job",
            f"job {j.function} enqueued on {j.queue} ({j.status})",
            mask_text(j.last_error or ""),
            link=f"/admin/jobs/{j.id}",
        )
        for j in jobs
    ]
    for a in attempts:
        link = f"/admin/jobs/{a.job_id}"
        events.append(Event(a.started_at, "job", f"job attempt {a.attempt} started on {a.worker_id or '?'}", link=link))
        if a.finished_at is not None:
            took = f" in {a.duration.total_seconds():.3f}s" if a.duration is not None else ""
            events.append(
                Event(
                    a.finished_at,
                    "job",
                    f"job attempt {a.attempt}: {a.outcome}{took}",
                    mask_text(a.error or ""),
                    link=link,
                    tone="bad" if a.error else "",
                )
            )
    return events


def _payout_events(payouts: Sequence[Payout], attempts: Sequence[Attempt]) -> list[Event]:
    events = []
    for p in payouts:
        what = f"payout #{p.id}: {format_usdc(p.amount_micro)} USDC to {p.to_address}"
        events.append(Event(p.created_at, "payout", what + " created", f"from {p.from_address}, {p.purpose}"))
        if p.signed_at is not None:
            events.append(Event(p.signed_at, "payout", f"payout #{p.id} signed with nonce {p.nonce}"))
        if p.settled_at is not None:
            events.append(
                Event(
                    p.settled_at,
                    "payout",
                    f"payout #{p.id} mined in block {p.block_number}",
                    p.tx_hash or "",
                    tone="good",
                )
            )
        if p.final_at is not None:
            events.append(Event(p.final_at, "payout", f"payout #{p.id} final ({p.status})"))
        if p.cancel_reason:
            events.append(Event(p.updated_at, "payout", f"payout #{p.id} {p.status}", p.cancel_reason, tone="bad"))
    for a in attempts:
        fee_cap = a.max_fee_per_gas * a.gas_limit
        events.append(
            Event(
                a.created_at,
                "payout",
                f"{a.kind} transaction {a.tx_hash} signed (nonce {a.nonce})",
                f"fee cap {fee_cap} wei = {a.gas_limit} gas × {a.max_fee_per_gas} wei "
                f"(tip {a.max_priority_fee_per_gas} wei)",
            )
        )
        if a.broadcast_at is not None:
            events.append(
                Event(a.broadcast_at, "payout", f"transaction {a.tx_hash} broadcast at block {a.broadcast_block}")
            )
    return events


def _entry_event(e: JournalLine) -> Event:
    return Event(e.created_at, "entry", f"journal entry {e.kind}", f"{e.idempotency_key}: {e.postings}")


def _review_events(items: Sequence[ReviewItem]) -> list[Event]:
    events = []
    for r in items:
        events.append(
            Event(
                r.created_at,
                "review",
                f"review item #{r.id} opened: {r.kind}",
                r.reason,
                link="/admin/review",
                tone="bad",
            )
        )
        if r.resolved_at is not None:
            events.append(
                Event(r.resolved_at, "review", f"review item #{r.id} resolved", r.resolution or "", tone="good")
            )
    return events


def _action_event(a: AdminAction) -> Event:
    detail = ", ".join(f"{k}={v}" for k, v in (a.after or {}).items() if v not in (None, ""))
    return Event(a.at, "action", f"{a.actor} ({a.actor_role}): {a.action}", detail)


def _intent_events(i: Intent) -> list[Event]:
    expects = format_usdc(i.expected_amount_usdc) + " USDC" if i.expected_amount_usdc else "any amount"
    events = [
        Event(
            i.created_at,
            "intent",
            f"intent for user {i.user_id}: expects {expects}",
            f"at {i.deposit_address}; expires {i.expires_at:%Y-%m-%d %H:%M:%S}",
        )
    ]
    if i.ended_at is not None:
        got = f"; received {format_usdc(i.received_amount_usdc)} USDC" if i.received_amount_usdc else ""
        flags = f"; flagged {', '.join(i.flags)}" if i.flags else ""
        events.append(
            Event(
                i.ended_at,
                "intent",
                f"intent {i.status} ({i.end_reason})",
                got.lstrip("; ") + flags,
                tone="good" if i.status == "completed" else "bad",
            )
        )
    return events


def _transfer_events(transfers: Sequence[Transfer]) -> list[Event]:
    events = []
    for t in transfers:
        flags = f" [{', '.join(t.flags)}]" if t.flags else ""
        events.append(
            Event(
                t.first_seen_at,
                "transfer",
                f"transfer of {format_usdc(t.amount_micro)} USDC seen{flags}",
                f"tx {t.tx_hash} log {t.log_index} block {t.block_number} from {t.from_address}; {t.kind}, {t.status}",
                link=f"/admin/transfers#t{t.id}",
            )
        )
        if t.credited_at is not None:
            events.append(Event(t.credited_at, "transfer", f"transfer credited to user {t.user_id}", tone="good"))
        if t.reversed_at is not None:
            events.append(Event(t.reversed_at, "transfer", "credit reversed: a reorg removed the log", tone="bad"))
    return events
