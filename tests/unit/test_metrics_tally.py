"""kiota.metrics without Redis: what a tally keeps, how the sums render, and the labels it makes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.middleware import _route_template
from api.routers.metrics import Scraped
from kiota import metrics
from kiota.daraja_answers import error_label
from kiota.errors import DarajaRefused, DarajaTransient, DarajaUncertain, DarajaUnreachable
from kiota.metrics import _SEP, Tally, render_events
from kiota.store.metrics import Snapshot

TREASURY = "0x00000000000000000000000000000000000000aa"


def as_redis(values: dict[str, int | float]) -> dict[bytes, bytes]:
    """A tally's deltas as HGETALL would return them once flushed."""
    return {key.encode(): repr(value).encode() for key, value in values.items()}


def rendered(sums: dict[str, int | float], last: dict[str, float] | None = None) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    families = render_events(as_redis(sums), as_redis(dict(last or {})))

    class Fixed:
        def collect(self) -> list[object]:
            return list(families)

    registry.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_histogram_renders_cumulative_buckets_its_count_and_sum() -> None:
    tally = Tally()
    for seconds in (0.003, 0.2, 0.2, 7.0, 500.0):
        tally.observe(metrics.JOB_DURATION, seconds, "complete_mpesa_deposit")
    sums, _ = tally.take()
    out = rendered(sums)
    bucket = "kiota_job_duration_seconds_bucket[('function', 'complete_mpesa_deposit'), ('le', '{}')]"
    assert out[bucket.format("0.005")] == 1
    assert out[bucket.format("0.1")] == 1
    assert out[bucket.format("0.25")] == 3
    assert out[bucket.format("10.0")] == 4
    assert out[bucket.format("60.0")] == 4
    assert out[bucket.format("+Inf")] == 5
    assert out["kiota_job_duration_seconds_count[('function', 'complete_mpesa_deposit')]"] == 5
    assert out["kiota_job_duration_seconds_sum[('function', 'complete_mpesa_deposit')]"] == pytest.approx(507.403)


def test_counters_sum_and_gauges_keep_the_newest_value() -> None:
    tally = Tally()
    tally.count(metrics.CALLBACKS_REFUSED, "wrong_token")
    tally.count(metrics.CALLBACKS_REFUSED, "wrong_token", amount=2)
    tally.set(metrics.TREASURY_BALANCE, 1.5, "ETH", TREASURY)
    tally.set(metrics.TREASURY_BALANCE, 1.25, "ETH", TREASURY)
    sums, last = tally.take()
    assert tally.take() == ({}, {})  # taken once
    out = rendered(sums, last)
    assert out["kiota_mpesa_callbacks_refused_total[('reason', 'wrong_token')]"] == 3
    assert out[f"kiota_treasury_balance[('asset', 'ETH'), ('treasury', '{TREASURY}')]"] == 1.25


def test_a_failed_flush_gives_its_deltas_back_to_the_next() -> None:
    tally = Tally()
    tally.count(metrics.RPC_ERRORS, "transport")
    tally.set(metrics.TREASURY_BALANCE, 1.0, "USDC", TREASURY)
    sums, last = tally.take()
    tally.count(metrics.RPC_ERRORS, "transport")  # counted while the flush failed
    tally.set(metrics.TREASURY_BALANCE, 2.0, "USDC", TREASURY)  # newer than the one given back
    tally.give_back(sums, last)
    assert tally.take() == (
        {f"kiota_rpc_errors{_SEP}transport": 2},
        {f"kiota_treasury_balance{_SEP}USDC{_SEP}{TREASURY}": 2.0},
    )


def test_fields_an_older_or_other_release_wrote_are_left_out() -> None:
    out = rendered({f"kiota_rpc_errors{_SEP}transport{_SEP}extra": 4, f"kiota_gone{_SEP}x": 1})
    assert not [name for name in out if "extra" in name or "gone" in name]


@pytest.mark.parametrize(
    ("error", "label"),
    [
        (DarajaRefused("no", code="500.001.1001", http_status=500), "500.001.1001"),
        (DarajaTransient("busy", code=None, http_status=503), "http_503"),
        (DarajaUnreachable("down"), "unreachable"),
        (DarajaUncertain("lost"), "uncertain"),
        (DarajaTransient("lost"), "transient"),
        (DarajaRefused("no"), "refused"),
        (DarajaRefused("odd", code="<script>" * 10, http_status=400), "http_400"),  # never an unbounded label
    ],
)
def test_daraja_errors_become_bounded_labels(error: DarajaRefused, label: str) -> None:
    assert error_label(error) == label


class _Route:
    pass


@pytest.mark.parametrize(
    ("scope", "template"),
    [
        (
            {"route": _Route(), "path": "/api/v1/deposit/mpesa-callback/s3cret", "path_params": {"token": "s3cret"}},
            "/api/v1/deposit/mpesa-callback/{token}",
        ),
        (
            {"route": _Route(), "path": "/api/v1/jobs/complete:9f", "path_params": {"job_id": "complete:9f"}},
            "/api/v1/jobs/{job_id}",
        ),
        ({"route": _Route(), "path": "/metrics", "path_params": {}}, "/metrics"),
        ({"path": "/wp-admin/install.php"}, "unmatched"),
    ],
)
def test_requests_are_labelled_by_their_route_template(scope: dict[str, object], template: str) -> None:
    assert _route_template(scope) == template


@pytest.mark.parametrize(
    ("head", "next_block", "lag"), [(100, 91, 10), (100, 101, 0), (100, 150, 0), (None, 91, None), (100, None, None)]
)
def test_scan_lag_is_the_head_minus_the_last_scanned_block(
    head: int | None, next_block: int | None, lag: int | None
) -> None:
    snapshot = Snapshot({}, {}, 0, False, False, 0, 0, next_block=next_block)
    assert Scraped(snapshot, head).scan_lag == lag
