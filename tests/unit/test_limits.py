"""The query worker's token buckets: what each query takes, what it is told to wait."""

from __future__ import annotations

import msgspec
import pytest

from memstream.consumers.limits import Bucket, QueryLimits
from memstream.schemas.tenancy import TenantLimits


def test_a_bucket_gives_its_capacity_then_one_token_per_interval() -> None:
    """10 a second with room for 10: ten at once, then the 11th waits 100 ms, half
    that after 50 ms, none after 100 ms."""
    bucket = Bucket(rate=10, capacity=10, now=0.0)
    for _ in range(10):
        assert 0 == bucket.wait_ms(0.0)
        bucket.take(1, 0.0)
    assert 100 == bucket.wait_ms(0.0)
    assert 50 == bucket.wait_ms(0.05)
    assert 0 == bucket.wait_ms(0.1)


def test_a_bucket_refills_only_to_its_capacity() -> None:
    bucket = Bucket(rate=10, capacity=3, now=0.0)
    bucket.take(3, 0.0)
    assert 0 == bucket.wait_ms(60.0)  # a minute idle: full, not 600 tokens
    bucket.take(3, 60.0)
    assert 100 == bucket.wait_ms(60.0)


def test_what_others_took_is_owed_down_to_one_bucket() -> None:
    """Taking more than is there (what another worker admitted) leaves the bucket owing,
    but never more than its capacity: the wait is bounded by two bucket's worth."""
    bucket = Bucket(rate=10, capacity=10, now=0.0)
    bucket.take(1_000, 0.0)
    assert -10 == bucket.tokens
    assert 1_100 == bucket.wait_ms(0.0)


def test_a_tenant_is_admitted_its_burst_then_told_how_long() -> None:
    limits = QueryLimits(TenantLimits(queries_per_second=5))
    assert [0] * 5 == [limits.admit("acme", "acme") for _ in range(5)]
    wait = limits.admit("acme", "acme")
    assert 150 <= wait <= 200  # a fifth of a second, less what refilled meanwhile
    assert 0 == limits.admit("beta", "beta")  # another tenant has its own bucket


def test_a_refused_query_takes_nothing() -> None:
    """Asking again and again while over the rate does not push the wait further out."""
    limits = QueryLimits(TenantLimits(queries_per_second=1, burst=1))
    assert 0 == limits.admit("acme", "a")
    waits = [limits.admit("acme", "a") for _ in range(100)]
    assert all(0 < w <= 1000 for w in waits)


def test_each_user_has_its_own_rate_within_the_tenants() -> None:
    limits = QueryLimits(TenantLimits(queries_per_second=100, user_queries_per_second=2))
    assert [0, 0] == [limits.admit("acme", "alice") for _ in range(2)]
    wait = limits.admit("acme", "alice")
    assert wait > 0
    assert limits.refusal("acme", "alice", wait).startswith(
        "user alice of tenant acme is over its 2 queries a second: ask again in "
    )
    assert 0 == limits.admit("acme", "bob")


def test_an_hours_queries_are_a_bucket_of_that_many() -> None:
    """3 an hour: the 4th waits a third of an hour."""
    limits = QueryLimits(TenantLimits(queries_per_hour=3))
    assert [0, 0, 0] == [limits.admit("acme", "a") for _ in range(3)]
    wait = limits.admit("acme", "a")
    assert 1_199_000 < wait <= 1_200_000
    assert "tenant acme is over its 3 queries an hour: ask again in 20 min" == limits.refusal(
        "acme", "a", wait
    )


def test_a_tenants_own_limits_override_the_defaults_and_start_full() -> None:
    limits = QueryLimits(TenantLimits(queries_per_second=1, burst=1))
    assert 0 == limits.admit("acme", "a")
    assert limits.admit("acme", "a") > 0
    limits.set("acme", TenantLimits(burst=3))
    assert TenantLimits(queries_per_second=1, burst=3) == limits.of("acme")
    assert [0, 0, 0] == [limits.admit("acme", "a") for _ in range(3)]
    limits.set("acme", TenantLimits(queries_per_second=0))  # 0: no limit
    assert [0] * 50 == [limits.admit("acme", "a") for _ in range(50)]
    limits.set("acme", None)
    assert TenantLimits(queries_per_second=1, burst=1) == limits.of("acme")


def test_what_another_worker_admitted_is_taken_here() -> None:
    """Two workers sharing a tenant's 10 a second: what one admitted, the other counts,
    whether or not it had been asked by that tenant yet."""
    one, two = (
        QueryLimits(TenantLimits(queries_per_second=10)),
        QueryLimits(TenantLimits(queries_per_second=10)),
    )
    assert [0] * 8 == [one.admit("acme", "a") for _ in range(8)]
    two.taken_elsewhere({"t:acme": 8})
    assert [0, 0] == [two.admit("acme", "a") for _ in range(2)]
    assert two.admit("acme", "a") > 0


@pytest.mark.parametrize(
    ("given", "message"),
    [({"queries_per_second": -1}, "Expected `float` >= 0"), ({"burst": 0}, "Expected `int` >= 1")],
)
def test_limits_out_of_range_are_refused(given: dict[str, float], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(given, TenantLimits)
