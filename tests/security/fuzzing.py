"""Hypothesis settings and Daraja-shaped strategies shared by the security tests.

How many examples run is chosen by the environment:
- `KIOTA_FUZZ_PROFILE=ci` (the default, what the test command runs): a few hundred examples, seconds;
- `KIOTA_FUZZ_PROFILE=deep`: 10,000 bodies per fuzz test (minutes), e.g.
  `KIOTA_FUZZ_PROFILE=deep .venv/bin/pytest -p no:cacheprovider tests/security/test_fuzz_callbacks.py`;
- `KIOTA_FUZZ_EXAMPLES=N` overrides the count for every fuzz test.

Hypothesis keeps no example database (`database=None`): nothing is written into the repository, and a
failure prints its falsifying example (and a `@reproduce_failure` blob) instead.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.support import success_body

PROFILES = ("ci", "deep")
PROFILE = os.environ.get("KIOTA_FUZZ_PROFILE", "ci")
if PROFILE not in PROFILES:
    raise RuntimeError(f"KIOTA_FUZZ_PROFILE must be one of {PROFILES}, not {PROFILE!r}")
DEEP_EXAMPLES = 10_000

# No deadline: the webhook tests go through PostgreSQL on a loaded 2-core machine. Fixtures are made
# once per test on purpose (one database, one app for every example), so that health check is off.
_BASE = settings(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def examples(ci: int, deep: int = DEEP_EXAMPLES) -> int:
    override = os.environ.get("KIOTA_FUZZ_EXAMPLES")
    if override:
        return int(override)
    return deep if PROFILE == "deep" else ci


def fuzz_settings(ci: int, deep: int = DEEP_EXAMPLES) -> settings:
    return settings(_BASE, max_examples=examples(ci, deep))


def timeout_seconds(ci: int, deep: int = DEEP_EXAMPLES, per_example: float = 0.1) -> int:
    """A pytest timeout that grows with the number of examples (the deep run takes minutes)."""
    return max(120, math.ceil(examples(ci, deep) * per_example))


# ---------------------------------------------------------------------------- JSON with odd corners


@dataclass(frozen=True)
class Twin:
    """A dict key written as `name`: beside the key `name` itself, it makes the same key appear twice
    in one JSON object (json.loads keeps the last). `n` only tells twins apart."""

    name: str
    n: int


@dataclass(frozen=True)
class Literal:
    """JSON text written as is: numbers Python cannot print (10**5000), bare NaN, a trailing garbage."""

    text: str


def encode(value: Any, *, ascii_only: bool = True) -> str:
    """JSON text of a document that may hold Twin keys, Literal, NaN and Infinity (Python's json extensions)."""
    if isinstance(value, Literal):
        return value.text
    if isinstance(value, Twin):
        return encode(value.name, ascii_only=ascii_only)
    if isinstance(value, dict):
        inner = ",".join(
            f"{encode(k, ascii_only=ascii_only)}:{encode(v, ascii_only=ascii_only)}" for k, v in value.items()
        )
        return "{" + inner + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(v, ascii_only=ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def to_bytes(text: str, encoding: str) -> bytes:
    # surrogatepass: a lone surrogate becomes bytes that are not UTF-8 (the parser must refuse them).
    return text.encode(encoding, "surrogatepass") if encoding == "utf-8" else text.encode(encoding, "replace")


# ------------------------------------------------------------------------------- Daraja's shapes


def success_document(checkout_request_id: str, amount: int | float, receipt: str) -> dict[str, Any]:
    """Daraja's STK success callback (REFERENCE.md's example), with the Balance item without a Value."""
    return success_body(checkout_request_id, amount, receipt)


def failure_document(checkout_request_id: str, code: Any) -> dict[str, Any]:
    return {
        "Body": {
            "stkCallback": {
                "MerchantRequestID": "f1e2-4b95-a71d-b30d3cdbb7a7942864",
                "CheckoutRequestID": checkout_request_id,
                "ResultCode": code,
                "ResultDesc": "Request cancelled by user",
            }
        }
    }


DARAJA_KEYS = (
    "Body", "stkCallback", "MerchantRequestID", "CheckoutRequestID", "ResultCode", "ResultDesc",
    "CallbackMetadata", "Item", "Name", "Value", "Amount", "MpesaReceiptNumber", "TransactionDate", "PhoneNumber",
)  # fmt: skip

texts = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\ud800",
            "\udfff",
            "\u202e",
            "\ufeff",
            "０",
            "٠",
            "𝟎",
            "NaN",
            "Infinity",
            "-0",
            "0x0",
            "1e3",
            "' OR 1=1 --",
            "'); DROP TABLE deposits; --",
            "<script>alert(1)</script>",
            "${jndi:ldap://x}",
            "%s%s%n",
            "\\u0000",
            "A" * 201,
            "B" * 5000,
            *DARAJA_KEYS,
        ]
    ),
)
huge_numbers = st.sampled_from(
    [
        2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400,
        Literal("1" + "0" * 5000), Literal("-" + "9" * 4301), Literal("1e400"), Literal("-1e400"), Literal("1E-400"),
        Literal("0.0000000000000000000001"), Literal("1500.000000000000000000001"), Literal("15e2"), Literal("-0"),
    ]
)  # fmt: skip
odd_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, 5e-324, 0.1 + 0.2]),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**12), 10**12), huge_numbers, odd_floats, texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(texts, st.sampled_from(DARAJA_KEYS)), inner, max_size=4)
    ),
    max_leaves=12,
)


def near_misses(checkout_request_id: str) -> st.SearchStrategy[Any]:
    """Ids that look like a real CheckoutRequestID and must not be taken for it."""
    c = checkout_request_id
    fullwidth = "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in c)
    return st.sampled_from(
        [
            c.upper(), c.lower(), c + " ", " " + c, c + "\n", c + "\x00", c + "\u200b", "\ufeff" + c, c[:-1], c + "0",
            fullwidth, c.replace("_", "-"), c + "%00", [c], {"id": c}, f"{c},{c}", c * 2,
        ]
    )  # fmt: skip


def result_codes() -> st.SearchStrategy[Any]:
    """Success in every spelling the parser accepts, and zero in spellings it must not."""
    return st.one_of(
        st.sampled_from(
            [
                0, "0", " 0 ", "00", "-0", 0.0, -0.0, False, None, "", "٠", "０", "0x0", "+0", "0.0", [0], {"code": 0},
                1032, "1032", 1, 1037, 2001, 4999, -1, 2**31, 10**30, math.nan,
            ]
        ),
        st.integers(),
        texts,
    )  # fmt: skip


def amounts(amount: int) -> st.SearchStrategy[Any]:
    near = st.sampled_from(
        [
            amount, float(amount), amount + 1, amount - 1, amount * 100, -amount, 0, amount + 0.5, amount - 1e-9,
            str(amount), f"{amount}.00", [amount], {"KES": amount}, True, None, math.nan, math.inf,
            Literal(f"{amount}.0000000000000000001"), Literal(f"{amount}e0"), Literal(f"{amount}E+0"),
        ]
    )  # fmt: skip
    return st.one_of(near, near, near, st.integers(), odd_floats, huge_numbers)


def receipts(receipt: str) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(receipt),
        st.sampled_from([receipt.lower(), receipt + " ", "", "A" * 5, "A" * 21, "NLJ7 RT61SV", 12345678, None]),
        st.from_regex(r"[A-Z0-9]{6,20}", fullmatch=True),
        texts,
    )


# --------------------------------------------------------------------------------------- mutations


Path = tuple[Any, ...]


def _paths(value: Any, prefix: Path = ()) -> list[Path]:
    found: list[Path] = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found.extend(_paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(_paths(child, (*prefix, index)))
    return found


def _get(document: Any, path: Path) -> Any:
    for step in path:
        document = document[step]
    return document


def _replace(document: Any, path: Path, make: Callable[[Any], Any]) -> Any:
    """A copy of the document with the value at `path` replaced by make(old value)."""
    if not path:
        return make(document)
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        return {k: (_replace(v, rest, make) if k == head else v) for k, v in document.items()}
    copy = list(document)
    copy[head] = _replace(copy[head], rest, make)
    return copy


_DROP = object()


def _without_drops(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_drops(v) for k, v in value.items() if v is not _DROP}
    if isinstance(value, list):
        return [_without_drops(v) for v in value if v is not _DROP]
    return value


def _rename(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from([key.lower(), key.upper(), key + " ", " " + key, key + "\x00", key[:-1] or "_", key + "s"])


@dataclass(frozen=True)
class _Site:
    """Where a mutation strikes: the document, the path to a value, and that value."""

    document: Any
    path: Path
    old: Any

    @property
    def key(self) -> Any:
        return self.path[-1] if self.path else None

    def put(self, make: Callable[[Any], Any]) -> Any:
        return _replace(self.document, self.path, make)

    def put_parent(self, value: Any) -> Any:
        return _replace(self.document, self.path[:-1], lambda _: value)


Fields = dict[str, st.SearchStrategy[Any]]
Mutation = Callable[[st.DrawFn, _Site, Fields], Any]


def _other_value(draw: st.DrawFn, site: _Site, fields: Fields) -> Any:
    return site.put(lambda _: draw(json_values))


def _targeted_value(draw: st.DrawFn, site: _Site, fields: Fields) -> Any:
    return site.put(lambda _: draw(fields[site.key]))


def _targeted_item(draw: st.DrawFn, site: _Site, fields: Fields) -> Any:
    return site.put(lambda item: {**item, "Value": draw(fields[item["Name"]])})


def _wrap_list(draw: st.DrawFn, site: _Site, fields: Fields) -> Any:
    return site.put(lambda v: [v])


def _wrap_object(draw: st.DrawFn, site: _Site, fields: Fields) -> Any:
    return site.put(lambda v: {draw(st.sampled_from(DARAJA_KEYS)): v})


def _stringify(draw: st.DrawFn, site: _Site, fields: Fields) -> Any:
    return site.put(lambda v: encode(v) if not isinstance(v, str) else v)


def _deep(draw: st.DrawFn, site: _Site, fields: Fields) -> Any:
    return site.put(lambda v: _nest(v, draw(st.integers(1, 40))))


def _drop(draw: st.DrawFn, site: _Site, fields: Fields) -> Any:
    return _without_drops(site.put(lambda _: _DROP))


def _renamed(draw: st.DrawFn, site: _Site, fields: Fields) -> Any:
    new_key = draw(_rename(site.key))
    parent = _get(site.document, site.path[:-1])
    return site.put_parent({(new_key if k == site.key else k): v for k, v in parent.items()})


def _duplicated(draw: st.DrawFn, site: _Site, fields: Fields) -> Any:
    """The key (or list entry) twice, the other copy before or after it: json.loads keeps the last."""
    parent = _get(site.document, site.path[:-1])
    key = site.key
    other = draw(fields[key]) if isinstance(key, str) and key in fields else draw(json_values)
    before = draw(st.booleans())
    if isinstance(parent, list):
        copy = list(parent)
        copy.insert(key if before else key + 1, other)
        return site.put_parent(copy)
    twin = Twin(key.name if isinstance(key, Twin) else str(key), len(parent))
    twins: dict[Any, Any] = {}
    for name, value in parent.items():
        if name == key and before:
            twins[twin] = other
        twins[name] = value
        if name == key and not before:
            twins[twin] = other
    return site.put_parent(twins)


_ANYWHERE: tuple[Mutation, ...] = (_other_value, _wrap_list, _wrap_object, _stringify, _deep)


@st.composite
def mutated(draw: st.DrawFn, document: Any, fields: Fields) -> Any:
    """One change somewhere in the document: a value of another type, a key dropped, renamed or
    repeated with another value, a container wrapped, stringified or nested deep.

    `fields` gives targeted values for Daraja's own keys (ids, ResultCode, Amount, receipt), which
    are drawn more often than anything else."""
    # Daraja's fields most of the time: a change at the root or at Body only makes noise (it is
    # refused as a missing stkCallback), so it gets one draw in sixteen.
    paths = _paths(document)
    fields_deep = [p for p in paths if len(p) >= 3]
    path = draw(st.sampled_from(fields_deep if fields_deep and draw(st.integers(0, 15)) else paths))
    site = _Site(document, path, _get(document, path))
    choices: list[Mutation] = []
    if isinstance(site.key, str) and site.key in fields:
        choices += [_targeted_value] * 4
    name = site.old.get("Name") if isinstance(site.old, dict) else None
    if isinstance(name, str) and name in fields:
        choices += [_targeted_item] * 4
    if path:
        choices += [_duplicated, _drop]
    if isinstance(site.key, str):
        choices.append(_renamed)
    choices += _ANYWHERE
    return draw(st.sampled_from(choices))(draw, site, fields)


def _nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def callback_bodies(draw: st.DrawFn, checkout_request_id: str, amount: int, receipt: str) -> bytes:
    """Daraja-shaped bodies aimed at one deposit: a success or a failure for it (or for an id that
    only looks like it), written with odd encodings now and then, and changed either in one of the
    fields that decide about money (focused), or anywhere, up to 4 times (wild)."""
    target = draw(st.one_of(st.just(checkout_request_id), near_misses(checkout_request_id)))
    success = draw(st.booleans())
    if success:
        document: Any = success_document(target, amount, receipt)
    else:
        code = draw(st.one_of(st.sampled_from([1032, 1, 2001, 1037, "1032"]), result_codes()))
        document = failure_document(target, code)
    fields: dict[str, st.SearchStrategy[Any]] = {
        "CheckoutRequestID": st.one_of(st.just(checkout_request_id), near_misses(checkout_request_id), texts),
        "MerchantRequestID": st.one_of(texts, json_values),
        "ResultCode": result_codes(),
        "ResultDesc": json_values,
        "Amount": amounts(amount),
        "MpesaReceiptNumber": receipts(receipt),
        "TransactionDate": st.one_of(
            st.integers(), st.from_regex(r"20[0-9]{12}", fullmatch=True), texts, st.just(20191219102115.0)
        ),
        "PhoneNumber": st.one_of(st.integers(), texts, st.just("٢٥٤٧٠٨٣٧٤١٤٩")),
        "Name": st.sampled_from(DARAJA_KEYS),
    }
    mode = draw(st.sampled_from(["as sent", "focused", "focused", "focused", "focused", "wild", "wild"]))
    if mode == "focused":
        paths = _FOCUS_SUCCESS if success else _FOCUS_FAILURE
        for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=2)):
            name = path[-1] if isinstance(path[-1], str) and path[-1] != "Value" else _ITEM_NAMES[path[-2]]
            value = draw(fields[name])
            document = _replace(document, path, lambda _, v=value: v)
    elif mode == "wild":
        for _ in range(draw(st.integers(1, 4))):
            document = draw(mutated(document, fields))
    text = encode(document, ascii_only=draw(st.booleans()))
    encoding = draw(st.sampled_from(["utf-8"] * 12 + ["utf-16", "utf-32", "latin-1", "utf-8-sig"]))
    raw = to_bytes(text, encoding)
    tail = draw(st.sampled_from([b""] * 24 + [b"\n", b" \t\r\n", b"\x00", b"{}", b",", b"garbage"]))
    return raw + tail


_STK = ("Body", "stkCallback")
_ITEM_NAMES = {0: "Amount", 1: "MpesaReceiptNumber", 3: "TransactionDate", 4: "PhoneNumber"}  # success_document
# The fields that decide about money, the amount and the id the most often.
_FOCUS_FAILURE: list[Path] = [
    (*_STK, key) for key in ("CheckoutRequestID", "CheckoutRequestID", "ResultCode", "ResultCode", "MerchantRequestID")
]
_FOCUS_SUCCESS: list[Path] = [
    *_FOCUS_FAILURE,
    *[(*_STK, "CallbackMetadata", "Item", index, "Value") for index in (0, 0, 0, 1, 3, 4)],
]


def raw_bodies(checkout_request_id: str, amount: int, receipt: str) -> st.SearchStrategy[bytes]:
    """Bytes with no shape at all, and a real success cut, spliced or corrupted."""
    good = encode(success_document(checkout_request_id, amount, receipt)).encode()

    @st.composite
    def corrupted(draw: st.DrawFn) -> bytes:
        data = bytearray(good)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            how = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
            if how == "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif how == "cut":
                del data[at : at + draw(st.integers(1, 20))]
            elif how == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            else:
                del data[at:]
            if not data:
                break
        return bytes(data)

    return st.one_of(st.binary(max_size=2048), corrupted())


def expected_success(raw: bytes, checkout_request_id: str, amount: int) -> bool:
    """Whether a body is, read as JSON, a success for this deposit's id and amount.

    A necessary condition for moving money, written apart from the parser: the parser may refuse
    more (a bad receipt, a bad date), never less."""
    try:
        document = json.loads(raw)
        callback = document["Body"]["stkCallback"]
        code = callback["ResultCode"]
        items = callback["CallbackMetadata"]["Item"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return False
    if not isinstance(callback, dict) or callback.get("CheckoutRequestID") != checkout_request_id:
        return False
    if not _zero(code) or not isinstance(items, list):
        return False
    values = {
        item["Name"]: item["Value"]
        for item in items
        if isinstance(item, dict) and isinstance(item.get("Name"), str) and "Value" in item
    }
    paid = values.get("Amount")
    return not isinstance(paid, bool) and isinstance(paid, int | float) and paid == amount


def _zero(code: Any) -> bool:
    """ResultCode 0, as a number or a string of zeros (more spellings than the parser takes: this is
    only a necessary condition)."""
    if isinstance(code, bool):
        return False
    if isinstance(code, int):
        return code == 0
    return isinstance(code, str) and code.strip().lstrip("-+") != "" and set(code.strip().lstrip("-+")) == {"0"}
