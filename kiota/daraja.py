"""Our thin async client of Safaricom's Daraja API: OAuth, STK push ("M-Pesa Express") and STK query.

It is an adapter at the edge: it sends the requests, with the retries below, and hands each answer to
`kiota.daraja_answers`, which turns it into `PushAccepted`, `QueryResult` or one of the typed errors of
`kiota.errors`; it knows nothing about deposits. One `DarajaClient` is built per process
(API lifespan, worker startup) and shared, because Daraja keeps ONE valid token per app: fetching a new
token voids the previous one, so the token is cached, refreshed early, and never fetched twice at once.
Across processes (the API pushes, every worker queries) the token is kept in Redis (`SharedToken`): one
process refreshes it at a time and the others take its token, instead of voiding one another's
(`kiota.daraja_token`).

The retry rule of the push, and why
-----------------------------------
Every push that reaches Daraja may put a PIN prompt on the customer's phone. Sending it twice can mean two
prompts and, if the customer answers both, two debits for one deposit. So a push is repeated ONLY when the
first attempt provably reached no customer:

- the connection could not be opened (connect error, connect timeout, DNS): nothing was sent; retried
  with a short backoff until the time budget runs out (then `DarajaUnreachable`);
- Daraja refused the token (404.001.03, e.g. voided by a refresh elsewhere): refused at the gateway;
  the token is refreshed once and the push repeated once;
- Daraja answered 500.003.02 (busy / spike arrest): refused at the gateway; repeated ONCE.

Everything else is never repeated. A read timeout, a connection broken after the request was written, a 5xx
without Daraja's error body or an unparseable answer become `DarajaUncertain`: Daraja may have accepted the
push, so the caller keeps the deposit pending and lets the STK query or the callback decide. A definite
refusal (a 4xx, 500.001.1001 "merchant missing / wrong credentials / subscriber locked", 500.003.03 quota)
becomes `DarajaRefused` with Daraja's message: the app may try again later, we do not wait it out.
All of it runs inside a total budget (8 s by default) so that the API answers within the contract's 10 s.

The STK query is read-only, so it is safe to repeat: a connect error is retried once here, and any
transient failure becomes `DarajaTransient` for the caller's job backoff.

Secrets (consumer secret, passkey, password, token) are never logged; phone numbers only through
`mask_phone`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Final

import httpx
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from kiota import metrics
from kiota.daraja_answers import (
    BUSY,
    DEFAULT_TOKEN_LIFETIME,
    INVALID_TOKEN,
    TRANSIENT_STATUSES,
    Answer,
    PushAccepted,
    QueryResult,
    error_label,
    parse_expires_in,
    push_outcome,
    query_outcome,
)
from kiota.daraja_token import SharedToken
from kiota.errors import DarajaError, DarajaRefused, DarajaTransient, DarajaUncertain, DarajaUnreachable
from kiota.mpesa import MAX_KES, NAIROBI, mask_phone
from kiota.settings import Settings

__all__ = [
    "DarajaClient",
    "DarajaTimings",
    "PushAccepted",
    "QueryResult",
    "daraja_password",
    "mask_phone",
    "nairobi_timestamp",
]

log = structlog.get_logger(__name__)

OAUTH_PATH: Final = "/oauth/v1/generate"
PUSH_PATH: Final = "/mpesa/stkpush/v1/processrequest"
QUERY_PATH: Final = "/mpesa/stkpushquery/v1/query"

MAX_ACCOUNT_REFERENCE: Final = 12
MAX_DESCRIPTION: Final = 13

_PHONE = re.compile(r"254[17]\d{8}")
_MIN_ATTEMPT_SECONDS: Final = 0.05  # below this, an attempt could not finish: do not start it
_BACKSTOP_GRACE: Final = 0.5  # httpx times each read; this caps a slow trickle of a body
_MAX_CONNECT_BACKOFF: Final = 1.0
_SHARED_TOKEN_POLL: Final = 0.05  # how often a process waiting for another's token refresh looks again
# The refresh lock outlives its holder's fetch (bounded by its deadline plus _BACKSTOP_GRACE) by this much at least.
_SHARED_LOCK_MARGIN: Final = _BACKSTOP_GRACE + 2.0


@dataclass(frozen=True)
class DarajaTimings:
    """Timeouts and budgets (seconds); the defaults fit the API's 10 s answer, tests shrink them."""

    connect_timeout: float = 3.0
    read_timeout: float = 6.0  # per read, for every call; always capped by the call's remaining budget
    push_budget: float = 8.0  # total time of one stk_push, token and retries included
    query_budget: float = 15.0  # total time of one stk_query (nobody is waiting on it)
    token_refresh_margin: float = 60.0  # refresh this long before the token expires
    connect_backoff: float = 0.2  # first pause after a connect error; doubles, capped at 1 s
    busy_retry_delay: float = 1.0  # pause before the one repeat of a push refused as busy


# ---------------------------------------------------------------------------------------- pure helpers


def nairobi_timestamp(moment: datetime) -> str:
    """Daraja's Timestamp, YYYYMMDDHHmmss in Nairobi time, for an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime is ambiguous: give a timezone-aware one")
    return moment.astimezone(NAIROBI).strftime("%Y%m%d%H%M%S")


def daraja_password(shortcode: str, passkey: str, timestamp: str) -> str:
    """Daraja's Password: base64(Shortcode + Passkey + Timestamp)."""
    return base64.b64encode(f"{shortcode}{passkey}{timestamp}".encode()).decode("ascii")


def _check_push_fields(
    amount_kes: int, phone: str, callback_url: str, account_reference: str, description: str
) -> None:
    """Refuse what Daraja would refuse, before anything is sent (the API validated it already)."""
    if isinstance(amount_kes, bool) or not isinstance(amount_kes, int) or not 1 <= amount_kes <= MAX_KES:
        raise ValueError(f"amount_kes must be a whole number of shillings, 1..{MAX_KES}")
    if not _PHONE.fullmatch(phone):
        raise ValueError("phone must be normalised to 2547XXXXXXXX or 2541XXXXXXXX")
    if not callback_url.startswith(("https://", "http://")):
        raise ValueError("callback_url must be an http(s) URL")
    # Daraja refuses longer values; we never cut them silently, since the reference is what the customer
    # sees on the prompt and what reconciliation matches on.
    if not 1 <= len(account_reference) <= MAX_ACCOUNT_REFERENCE:
        raise ValueError(f"account_reference must be 1..{MAX_ACCOUNT_REFERENCE} characters")
    if not 1 <= len(description) <= MAX_DESCRIPTION:
        raise ValueError(f"description must be 1..{MAX_DESCRIPTION} characters")


def _utc_now() -> datetime:
    return datetime.now(UTC)


# ----------------------------------------------------------------------------- internal outcomes


class _NotSent(Exception):
    """No byte of the request left this process (or no time was left to start it)."""


class _MaybeSent(Exception):
    """The request may have been received: its answer was lost or late."""


class _TokenFailure(Exception):
    """No token could be obtained; `definite` when OAuth itself refused us (e.g. wrong credentials)."""

    def __init__(self, message: str, *, code: str | None, http_status: int | None, definite: bool) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status
        self.definite = definite


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float  # time.monotonic()


@dataclass(frozen=True)
class _RetryPolicy:
    connect_retries: int | None  # None: until the budget runs out
    busy_retries: int


_PUSH_POLICY: Final = _RetryPolicy(connect_retries=None, busy_retries=1)
_QUERY_POLICY: Final = _RetryPolicy(connect_retries=1, busy_retries=0)


# ---------------------------------------------------------------------------------------------- client


class DarajaClient:
    """Shared Daraja client of one process; see the module docstring for its retry rule."""

    def __init__(
        self,
        base_url: str,
        consumer_key: str,
        consumer_secret: str,
        shortcode: str,
        passkey: str,
        *,
        http: httpx.AsyncClient | None = None,
        transaction_type: str = "CustomerPayBillOnline",
        party_b: str | None = None,
        now: Callable[[], datetime] = _utc_now,
        timings: DarajaTimings | None = None,
        shared: SharedToken | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._basic = "Basic " + base64.b64encode(f"{consumer_key}:{consumer_secret}".encode()).decode("ascii")
        self._shortcode = shortcode
        self._passkey = passkey
        self._transaction_type = transaction_type
        self._party_b = party_b or shortcode
        self._now = now
        self._timings = timings or DarajaTimings()
        self._owns_http = http is None
        # Timeouts are set per request (each capped by its call's budget); this default only covers misuse.
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(self._timings.read_timeout))
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        self._shared = shared

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        redis: Redis | None = None,
        http: httpx.AsyncClient | None = None,
        timings: DarajaTimings | None = None,
    ) -> DarajaClient:
        """The process's client; with `redis`, its token is shared with the app's other processes."""
        consumer_key = settings.mpesa_consumer_key.get_secret_value()
        return cls(
            settings.mpesa_base_url,
            consumer_key,
            settings.mpesa_consumer_secret.get_secret_value(),
            settings.mpesa_shortcode,
            settings.mpesa_passkey.get_secret_value(),
            http=http,
            timings=timings,
            shared=None if redis is None else SharedToken(redis, consumer_key),
        )

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it (a client passed in belongs to its owner)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> DarajaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ---- STK push

    async def stk_push(
        self, *, amount_kes: int, phone: str, callback_url: str, account_reference: str, description: str
    ) -> PushAccepted:
        """Ask Daraja to prompt `phone` for `amount_kes`; returns once Daraja accepted the push.

        `phone` must already be normalised (2547…/2541…). `account_reference` (≤ 12 characters) and
        `description` (≤ 13) are checked, never truncated: a longer value raises ValueError.
        Raises DarajaRefused (DarajaUnreachable: nothing could be sent) or DarajaUncertain (do not push
        again; the query decides).
        """
        with _errors_counted("push"):
            return await self._stk_push(amount_kes, phone, callback_url, account_reference, description)

    async def _stk_push(
        self, amount_kes: int, phone: str, callback_url: str, account_reference: str, description: str
    ) -> PushAccepted:
        _check_push_fields(amount_kes, phone, callback_url, account_reference, description)
        fields = {
            "TransactionType": self._transaction_type,
            "Amount": amount_kes,
            "PartyA": phone,
            "PartyB": self._party_b,
            "PhoneNumber": phone,
            "CallBackURL": callback_url,
            "AccountReference": account_reference,
            "TransactionDesc": description,
        }
        push_log = log.bind(phone=mask_phone(phone), amount_kes=amount_kes, account_reference=account_reference)
        deadline = time.monotonic() + self._timings.push_budget
        try:
            answer = await self._call(PUSH_PATH, fields, deadline, _PUSH_POLICY)
        except _NotSent as exc:
            push_log.warning("daraja.push.unreachable", reason=str(exc))
            raise DarajaUnreachable(f"M-Pesa could not be reached: {exc}") from exc
        except _MaybeSent as exc:
            push_log.warning("daraja.push.uncertain", reason=str(exc))
            raise DarajaUncertain(f"no answer to the STK push: {exc}") from exc
        except _TokenFailure as exc:
            push_log.warning("daraja.push.no_token", code=exc.code, http_status=exc.http_status, reason=exc.message)
            error = DarajaRefused if exc.definite else DarajaUnreachable
            raise error(exc.message, code=exc.code, http_status=exc.http_status) from exc
        accepted = push_outcome(answer)
        push_log.info("daraja.push.accepted", checkout_request_id=accepted.checkout_request_id)
        return accepted

    # ---- STK query

    async def stk_query(self, checkout_request_id: str) -> QueryResult:
        """Ask Daraja how a push ended. Raises DarajaTransient (retry later) or DarajaRefused."""
        with _errors_counted("query"):
            return await self._stk_query(checkout_request_id)

    async def _stk_query(self, checkout_request_id: str) -> QueryResult:
        query_log = log.bind(checkout_request_id=checkout_request_id)
        deadline = time.monotonic() + self._timings.query_budget
        fields = {"CheckoutRequestID": checkout_request_id}
        try:
            try:
                answer = await self._call(QUERY_PATH, fields, deadline, _QUERY_POLICY)
            except _MaybeSent as exc:
                # A query only reads: unlike a push, it may be repeated once after an answer was lost
                # (e.g. a keep-alive connection the server closed as we sent on it).
                query_log.info("daraja.retry", path=QUERY_PATH, reason=str(exc))
                answer = await self._call(QUERY_PATH, fields, deadline, _QUERY_POLICY)
        except (_NotSent, _MaybeSent) as exc:
            query_log.warning("daraja.query.transient", reason=str(exc))
            raise DarajaTransient(f"STK query failed: {exc}") from exc
        except _TokenFailure as exc:
            query_log.warning("daraja.query.no_token", code=exc.code, http_status=exc.http_status, reason=exc.message)
            error = DarajaRefused if exc.definite else DarajaTransient
            raise error(exc.message, code=exc.code, http_status=exc.http_status) from exc
        result = query_outcome(answer)
        query_log.info("daraja.query.answered", status=result.status, result_code=result.result_code)
        return result

    # ---- one call, with the retries that cannot reach a customer twice

    async def _call(self, path: str, fields: Mapping[str, object], deadline: float, policy: _RetryPolicy) -> Answer:
        connect_failures = 0
        busy_retries = policy.busy_retries
        token_retried = False
        stale: str | None = None
        while True:
            try:
                token = await self._current_token(deadline, stale)
                answer = await self._send(
                    "POST", path, deadline, json=self._signed(fields), headers={"Authorization": f"Bearer {token}"}
                )
            except _NotSent as exc:
                connect_failures += 1
                if policy.connect_retries is not None and connect_failures > policy.connect_retries:
                    raise
                pause = min(self._timings.connect_backoff * 2 ** (connect_failures - 1), _MAX_CONNECT_BACKOFF)
                if not await _pause(pause, deadline):
                    raise
                log.info("daraja.retry", path=path, reason=str(exc), attempt=connect_failures + 1)
                continue
            stale = None
            if answer.error_code == INVALID_TOKEN and not token_retried:
                # Refused at the gateway before the STK service saw it: safe to repeat with a fresh token.
                token_retried, stale = True, token
                log.info("daraja.retry", path=path, reason="invalid token")
                continue
            if (
                answer.error_code == BUSY
                and busy_retries > 0
                and await _pause(self._timings.busy_retry_delay, deadline)
            ):
                busy_retries -= 1
                log.info("daraja.retry", path=path, reason="busy")
                continue
            return answer

    def _signed(self, fields: Mapping[str, object]) -> dict[str, object]:
        # A fresh timestamp per attempt: Daraja refuses stamps too far from its clock.
        timestamp = nairobi_timestamp(self._now())
        return {
            "BusinessShortCode": self._shortcode,
            "Password": daraja_password(self._shortcode, self._passkey, timestamp),
            "Timestamp": timestamp,
            **fields,
        }

    async def _send(
        self,
        method: str,
        path: str,
        deadline: float,
        *,
        headers: Mapping[str, str],
        json: object = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        remaining = deadline - time.monotonic()
        if remaining < _MIN_ATTEMPT_SECONDS:
            raise _NotSent("out of time before sending")
        connect = min(self._timings.connect_timeout, remaining)
        read = min(self._timings.read_timeout, remaining)
        timeout = httpx.Timeout(connect=connect, read=read, write=read, pool=connect)
        try:
            async with asyncio.timeout(remaining + _BACKSTOP_GRACE):
                response = await self._http.request(
                    method, self._base_url + path, json=json, params=params, headers=headers, timeout=timeout
                )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Raised before the request was written: no connection (or no pooled slot) was ever had.
            raise _NotSent(_describe(exc)) from exc
        except (httpx.TransportError, TimeoutError) as exc:
            # Read/write timeouts, resets and protocol errors: the request may have arrived.
            raise _MaybeSent(_describe(exc)) from exc
        return Answer.of(response)

    # ---- the token

    async def _current_token(self, deadline: float, stale: str | None) -> str:
        """The app's shared token when there is one (see `SharedToken`), else this process's own."""
        if self._shared is not None:
            try:
                return await self._shared_token(self._shared, deadline, stale)
            except (RedisError, OSError) as exc:
                log.warning("daraja.token.shared_unavailable", error=type(exc).__name__)
        return await self._own_token(deadline, stale)

    async def _shared_token(self, shared: SharedToken, deadline: float, stale: str | None) -> str:
        """The token in Redis unless it is `stale`; else one process fetches a new one and puts it there
        (this process's lock first, so its concurrent callers make one attempt), the others wait for it.

        The refresh lock outlasts its holder's fetch (the holder's budget and a margin), so no second process
        fetches while one does, however slow Daraja's OAuth is: a second fetch would void the first one's
        token. A fetch that may have reached Daraja and failed (no answer, a cancellation) leaves the lock to
        expire, for the same reason. A waiter takes the lock once it is free (the holder done, or gone and its
        lock expired) and still finds no fresh token; it waits until its own deadline at most."""
        value = await shared.get()
        if value and value != stale:
            return value
        async with self._refreshing(deadline):
            owner, value = await self._lock_or_fresh(shared, deadline, stale)
            return value if value is not None else await self._fetch_shared(shared, owner, deadline)

    async def _lock_or_fresh(self, shared: SharedToken, deadline: float, stale: str | None) -> tuple[str, str | None]:
        """The refresh lock (its owner id, and None), or a fresh token another process put meanwhile ("", it)."""
        while True:
            owner = await shared.lock(max(deadline - time.monotonic(), 0.0) + _SHARED_LOCK_MARGIN)
            try:
                value = await shared.get()  # read after the lock: a holder puts its token before it unlocks
            except BaseException:
                if owner is not None:
                    await _unlock_quietly(shared, owner)
                raise
            if value and value != stale:
                if owner is not None:
                    await _unlock_quietly(shared, owner)
                return "", value
            if owner is not None:
                return owner, None
            if not await _pause(_SHARED_TOKEN_POLL, deadline):
                raise _NotSent("out of time waiting for another process's token refresh")

    async def _fetch_shared(self, shared: SharedToken, owner: str, deadline: float) -> str:
        """A new token, fetched under the refresh lock `owner` and put in Redis for every process."""
        try:
            token = await self._fetch_token(deadline)
        except _TokenFailure as exc:
            # Daraja may still issue the token of a request it did not answer: the lock then expires rather
            # than let another process fetch beside it (the later token would void the other).
            if exc.definite:
                await _unlock_quietly(shared, owner)
            raise
        except _NotSent:  # nothing reached Daraja
            await _unlock_quietly(shared, owner)
            raise
        # Also this process's own: if Redis fails from here on, the fallback uses this token rather than
        # fetching another (which would void the one the other processes are about to read).
        self._token = token
        try:
            await shared.put(token.value, token.refresh_at - time.monotonic())
        except (RedisError, OSError) as exc:
            log.warning("daraja.token.shared_unavailable", error=type(exc).__name__)
        await _unlock_quietly(shared, owner)
        return token.value

    async def _own_token(self, deadline: float, stale: str | None) -> str:
        """This process's cached token, or a new one; `stale` is a token Daraja just refused.

        Under the lock a waiter re-reads the cache, so N concurrent callers (or N callers whose token was
        voided) cause ONE refresh: a second parallel fetch would void the first caller's fresh token.
        """
        cached = self._token
        if cached is not None and cached.value != stale and time.monotonic() < cached.refresh_at:
            return cached.value
        async with self._refreshing(deadline):
            cached = self._token
            if cached is not None and cached.value != stale and time.monotonic() < cached.refresh_at:
                return cached.value
            self._token = await self._fetch_token(deadline)
            return self._token.value

    @asynccontextmanager
    async def _refreshing(self, deadline: float) -> AsyncIterator[None]:
        """This process's token lock, waited for until `deadline` at most: one refresh at a time."""
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                await self._token_lock.acquire()
        except TimeoutError:
            raise _NotSent("out of time waiting for the token refresh") from None
        try:
            yield
        finally:
            self._token_lock.release()

    async def _fetch_token(self, deadline: float) -> _Token:
        try:
            answer = await self._send(
                "GET",
                OAUTH_PATH,
                deadline,
                params={"grant_type": "client_credentials"},
                headers={"Authorization": self._basic},
            )
        except _MaybeSent as exc:
            raise _TokenFailure(
                f"M-Pesa authentication did not answer: {exc}", code=None, http_status=None, definite=False
            ) from exc
        value = answer.text("access_token")
        if answer.http_status == 200 and value:
            expires_in = parse_expires_in(None if answer.body is None else answer.body.get("expires_in"))
            if expires_in is None:
                log.warning("daraja.token.no_expiry", assumed_seconds=DEFAULT_TOKEN_LIFETIME)
                expires_in = DEFAULT_TOKEN_LIFETIME
            log.info("daraja.token.refreshed", expires_in=expires_in)
            refresh_at = time.monotonic() + max(expires_in - self._timings.token_refresh_margin, 0.0)
            return _Token(value, refresh_at)
        status = answer.http_status
        raise _TokenFailure(
            answer.error_message,
            code=answer.error_code,
            http_status=status,
            # A 4xx from OAuth (bad credentials, bad grant) will not change by itself; a 5xx or 429 may.
            definite=400 <= status < 500 and status not in TRANSIENT_STATUSES,
        )


@contextmanager
def _errors_counted(call: str) -> Iterator[None]:
    """Count a failed call in `kiota_daraja_errors_total` by Daraja's code (`error_label`)."""
    try:
        yield
    except DarajaError as exc:
        metrics.tally.count(metrics.DARAJA_ERRORS, call, error_label(exc))
        raise


async def _unlock_quietly(shared: SharedToken, owner: str) -> None:
    """Release the refresh lock; a Redis failure here is no failed call (the lock expires by itself)."""
    with contextlib.suppress(RedisError, OSError):
        await shared.unlock(owner)


async def _pause(seconds: float, deadline: float) -> bool:
    """Sleep before a retry if the retry can still start within the deadline; False if it cannot."""
    if time.monotonic() + seconds + _MIN_ATTEMPT_SECONDS > deadline:
        return False
    await asyncio.sleep(seconds)
    return True


def _describe(exc: Exception) -> str:
    # httpx messages carry at most the URL (never headers), so they are safe to log.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
