"""The quota arithmetic: a tenant's ledger of live memories, and its limits."""

from __future__ import annotations

from memstream.projections.quotas import Limits, Quotas, Usage, text_bytes


def test_the_ledger_counts_live_memories_and_drops_the_expired_at_a_time() -> None:
    usage = Usage([("a", 10, None), ("b", 20, 100.0), ("c", 30, 200.0)])
    assert (3, 60) == (usage.count, usage.bytes)
    assert (3, 60) == (usage.at(99.9).count, usage.bytes)
    assert (2, 40) == (usage.at(100.0).count, usage.bytes)  # expired at its instant
    # Stored again with a later expiry, 'c' outlives its first one.
    usage.put("c", 5, 300.0)
    assert (2, 15) == (usage.at(250.0).count, usage.bytes)
    usage.remove("a")
    usage.remove("a")  # twice: nothing more goes
    assert (1, 5) == (usage.count, usage.bytes)
    assert None is usage.size_of("a") and 5 == usage.size_of("c")


def test_a_quota_set_changes_only_the_limits_it_names() -> None:
    quotas = Quotas(Limits(memories=10, storage_bytes=5_000_000))
    assert Limits(10, 5_000_000) == quotas.limits("acme")
    assert Limits(3, 5_000_000) == quotas.set("acme", 3, None)
    assert Limits(3, 1_500_000) == quotas.set("acme", None, 1.5)
    assert Limits(0, 1_500_000) == quotas.set("acme", 0, None)  # 0: no limit
    assert Limits(10, 5_000_000) == quotas.limits("beta")  # others keep the defaults
    quotas.drop("acme")
    assert Limits(10, 5_000_000) == quotas.limits("acme")
    assert not Limits() and Limits(memories=1)


def test_the_soft_limit_warns_past_80_percent_and_the_hard_one_says_so() -> None:
    limits = Limits(memories=100, storage_bytes=1_000_000)
    assert None is limits.warning("acme", 80, 0)
    assert "holds 81 of its 100 memories (past 80%)" in (limits.warning("acme", 81, 0) or "")
    assert "holds 0.9 MB of its 1.0 MB of memory text" in (limits.warning("acme", 1, 900_000) or "")
    assert "is at its quota of 100 memories" in (limits.status("acme", 100, 0) or "")
    assert "at its quota of 1 memory:" in (Limits(memories=1).status("acme", 1, 0) or "")


def test_a_memory_is_the_utf8_bytes_of_its_text() -> None:
    assert 3 + 4 == text_bytes("abc", "\N{EURO SIGN}x")
    assert 0 == text_bytes(None, "")
