import pytest

from kiota.logging import redact_path
from kiota.sql import load_queries, parse_queries


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/deposit/mpesa-callback/abc123", "/api/v1/deposit/mpesa-callback/[redacted]"),
        ("/api/v1/deposit/mpesa-callback/abc123/extra", "/api/v1/deposit/mpesa-callback/[redacted]/extra"),
        ("/api/v1/portfolio", "/api/v1/portfolio"),
    ],
)
def test_the_callback_token_is_redacted_from_paths(path: str, expected: str) -> None:
    assert redact_path(path) == expected


def test_named_queries_parse() -> None:
    parsed = parse_queries("-- name: a\nSELECT 1;\n\n-- name: b\n-- a comment\nSELECT 2;\n")
    assert parsed == {"a": "SELECT 1;", "b": "-- a comment\nSELECT 2;"}
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")


def test_the_shipped_queries_load() -> None:
    queries = load_queries()
    assert "insert_entry" in queries.names()
    assert "INSERT INTO journal_entries" in queries.insert_entry
    with pytest.raises(AttributeError):
        _ = queries.no_such_query
