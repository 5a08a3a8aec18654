"""The money views' pure parts: a timeline's order, phones masked in raw bodies, and the search box's keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kiota.errors import InvalidInput
from kiota.mpesa import mask_phones
from kiota.search import Terms, parse
from kiota.timeline import Event, merge

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def ev(seconds: int, source: str, title: str) -> Event:
    return Event(T0 + timedelta(seconds=seconds), source, title)


@pytest.mark.parametrize(
    ("groups", "titles"),
    [
        ([[ev(2, "job", "b")], [ev(1, "callback", "a")]], ["a", "b"]),
        # One instant: the story's order (the deposit, what reached us, our work, money, people) ...
        (
            [
                [ev(0, "action", "e")],
                [ev(0, "entry", "d")],
                [ev(0, "callback", "b")],
                [ev(0, "deposit", "a")],
                [ev(0, "job", "c")],
            ],
            ["a", "b", "c", "d", "e"],
        ),
        # ... then as given, whichever group it came from.
        ([[ev(0, "job", "x1"), ev(0, "job", "x2")], [ev(0, "job", "x3")]], ["x1", "x2", "x3"]),
        (
            [[ev(5, "review", "late")], [], [ev(-5, "intent", "early"), ev(0, "transfer", "mid")]],
            ["early", "mid", "late"],
        ),
        ([], []),
    ],
)
def test_events_merge_in_time_then_story_order(groups: list[list[Event]], titles: list[str]) -> None:
    assert [e.title for e in merge(*groups)] == titles


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ('{"Name":"PhoneNumber","Value":254708374149}', '{"Name":"PhoneNumber","Value":2547****4149}'),
        ("phone 0708374149 and 0110004149", "phone 2547****4149 and 2541****4149"),
        ("amount 12345678901234 receipt NLJ7RT61SV", "amount 12345678901234 receipt NLJ7RT61SV"),  # not a phone
        ("2547083741490", "2547083741490"),  # 13 digits: not a phone
        ("", ""),
    ],
)
def test_raw_bodies_never_show_a_whole_phone(raw: str, shown: str) -> None:
    assert mask_phones(raw) == shown


ID = uuid.UUID("6060b50f-3100-45ba-bbea-de75261112e6")


@pytest.mark.parametrize(
    ("query", "terms"),
    [
        ("", None),
        ("   ", None),
        (str(ID), Terms(str(ID), as_uuid=ID)),
        (f"  {ID}  ", Terms(str(ID), as_uuid=ID)),
        ("ws_CO_07122026061911090778671176", Terms("ws_CO_07122026061911090778671176")),
        ("NLJ7RT61SV", Terms("NLJ7RT61SV")),
        ("4149", Terms("4149", last_digits="4149")),
        ("149", Terms("149")),  # too few digits for a phone: only the other keys
        ("0708374149", Terms("0708374149", last_digits="4149", phone_masked="2547****4149")),
        ("+254 708 374 149", Terms("+254 708 374 149", last_digits="4149", phone_masked="2547****4149")),
        ("12345678", Terms("12345678", last_digits="5678")),  # digits, not a whole phone
        ("0x" + "ab" * 32, Terms("0x" + "ab" * 32)),
        ("'; DROP TABLE deposits; --", Terms("'; DROP TABLE deposits; --")),  # only ever a bound parameter
    ],
)
def test_what_the_search_box_may_be(query: str, terms: Terms | None) -> None:
    assert parse(query) == terms


def test_a_search_too_long_for_any_key_is_refused() -> None:
    with pytest.raises(InvalidInput):
        parse("x" * 201)
