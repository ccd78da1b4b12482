"""What the query ops read from the history, on a real DuckDB database."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from memstream.projections import reads
from memstream.projections.history import HistoryProjection
from memstream.schemas import events as ev

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
TOTAL = 60_000


def _event(i: int, tenant: str) -> ev.Event:
    ts = T0 + dt.timedelta(seconds=i)
    if i % 7919 == 0:  # rare: a few per window, most windows none
        return ev.ToolUsed(id=f"{tenant}{i}", tenant=tenant, agent="rare", ts=ts, tool="deploy")
    return ev.ConversationTurn(
        id=f"{tenant}{i}", tenant=tenant, agent="chatty", ts=ts, session_id="s", role="user",
        content=f"turn {i}",
    )  # fmt: skip


@pytest.fixture(scope="module")
def history() -> HistoryProjection:
    """Two tenants interleaved over 60,000 sequence numbers."""
    projection = HistoryProjection(":memory:")
    batch = [(i, _event(i, "acme" if i % 3 else "beta")) for i in range(1, TOTAL + 1)]
    for start in range(0, TOTAL, 5000):
        projection.apply(batch[start : start + 5000])
    return projection


def _pages(history: HistoryProjection, limit: int, **filters: Any) -> list[list[int]]:
    pages, after = [], 0
    while True:
        page = reads.history(history.cursor(), "acme", after_seq=after, limit=limit, **filters)
        pages.append([msgspec.json.decode(e)["seq"] for e in page.events])
        if page.next_after_seq is None:
            return pages
        after = page.next_after_seq


def test_paging_walks_every_event_once_in_order(history: HistoryProjection) -> None:
    """Pages of 7,000 cover the tenant's events exactly, across the seek windows."""
    pages = _pages(history, 7000)
    assert [s for s in range(1, TOTAL + 1) if s % 3] == [s for page in pages for s in page]
    assert [7000] * 5 + [5000] == [len(p) for p in pages]


def test_sparse_matches_are_found_across_widening_windows(history: HistoryProjection) -> None:
    """A filter that matches a few events far apart finds each of them, in order."""
    expected = [s for s in range(7919, TOTAL + 1, 7919) if s % 3]
    assert [expected[:2], expected[2:4], expected[4:]] == _pages(history, 2, agent="rare")
    assert [expected] == _pages(history, 100, types=("tool.used",))
    assert [[]] == _pages(history, 100, agent="nobody")


def test_an_event_comes_back_as_published_with_its_seq(history: HistoryProjection) -> None:
    """The body is the producer's JSON with ``seq`` added last."""
    page = reads.history(history.cursor(), "beta", limit=1)
    event = msgspec.json.decode(page.events[0])
    assert (3, "beta3", "turn 3") == (event["seq"], event["id"], event["content"])
    assert list(event)[-1] == "seq"


def test_time_windows_bound_the_page(history: HistoryProjection) -> None:
    """since is inclusive and until exclusive, in UTC whatever the zone given."""
    since = (T0 + dt.timedelta(seconds=30_000)).astimezone(dt.timezone(dt.timedelta(hours=2)))
    until = T0 + dt.timedelta(seconds=30_010)
    page = reads.history(history.cursor(), "acme", since=since, until=until)
    assert [s for s in range(30_000, 30_010) if s % 3] == [
        msgspec.json.decode(e)["seq"] for e in page.events
    ]
