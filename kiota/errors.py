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


class LedgerError(KiotaError):
    """A journal entry was refused (unbalanced, non-positive, or a replay with other postings)."""


class MigrationError(KiotaError):
    """The migration files and the database's record of them disagree."""
