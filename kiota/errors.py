"""The error hierarchy: one root, small classes with one meaning each.

HTTP status codes live in `api/`; here an error only says what went wrong.
"""


class KiotaError(Exception):
    """Root of every error Kiota raises on purpose."""


class ConfigError(KiotaError):
    """The process was started with missing or dangerous settings."""


class InvalidInput(KiotaError):
    """Input from a user or a partner failed validation."""


class AuthError(KiotaError):
    """A bearer token is missing, expired, forged or otherwise unacceptable."""


class IdempotencyConflict(KiotaError):
    """An Idempotency-Key was reused with another body, or while its first use is in flight."""


class CallbackNotRecorded(KiotaError):
    """An M-Pesa callback is not surely committed (the database is unreachable, or applying it
    failed): it must not be answered as accepted, so that Daraja may send it again."""


class LedgerError(KiotaError):
    """A journal entry was refused (unbalanced, non-positive, or a replay with other postings)."""


class MigrationError(KiotaError):
    """The migration files and the database's record of them disagree."""


class DarajaError(KiotaError):
    """Daraja (M-Pesa) did not do what we asked; the subclass says whether it may still have acted.

    `message` is Daraja's own text when it sent one (safe to show: it never carries our secrets),
    `code` its errorCode (e.g. "500.001.1001"), `http_status` the status it answered with.
    """

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status


class DarajaRefused(DarajaError):
    """A definite refusal: nothing reached the customer, so the caller may report it and forget it."""


class DarajaUnreachable(DarajaRefused):
    """Daraja could not be reached at all within the time budget: nothing was sent, so also definite."""


class DarajaUncertain(DarajaError):
    """The request may have reached Daraja (and a PIN prompt the customer): never send it again.

    The caller keeps the deposit pending and lets the STK query (or the callback) decide later.
    """


class DarajaTransient(DarajaError):
    """A read-only call (the STK query) failed for a reason that may pass: retry it later with backoff."""


class ChainUnavailable(KiotaError):
    """The chain's RPC failed in a way that may pass (refused, timeout, 429, 5xx): retry with backoff."""


class RateLimited(KiotaError):
    """A request is over one of the abuse limits; `retry_after_seconds` says when there is room again."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class LimiterUnavailable(KiotaError):
    """The abuse limits cannot be checked (Redis is unreachable) for a request that must not go unlimited."""
