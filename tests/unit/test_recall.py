"""Recall's bundle: the budget, the strategies, the sources."""

from __future__ import annotations

import pytest

from memstream.projections.recall import Part, compose, memory_part, task_part
from memstream.schemas.queries import TaskResult

TASK = task_part(
    TaskResult(
        task={"task_id": "t1", "title": "ship it", "status": "started", "assignee": "coder"},
        timeline=[],
    )
)
MEMORIES = [
    memory_part("knowledge", f"k{i}", f"fact {i} " * 5, 0.9 - i / 10, i, None) for i in range(4)
]
TURNS = [Part("turn", f"user: turn {i}", "turn", "s1", seq=100 + i) for i in range(4)]


def refs(parts: list[Part]) -> list[str]:
    return [p.ref if p.kind != "turn" else f"turn{(p.seq or 0) - 100}" for p in parts]


@pytest.mark.parametrize("budget", [60, 150, 400, 10_000])
def test_the_bundle_never_exceeds_its_budget(budget: int) -> None:
    """Whatever the budget, the text fits in it, and the task comes first."""
    text, used = compose([*TURNS, *MEMORIES, TASK], budget, "balanced")
    assert len(text) <= budget
    assert "t1" == used[0].ref
    assert text.startswith("## Task\nship it [started], assigned to coder")


def test_strategies_order_what_the_budget_keeps() -> None:
    """relevance keeps the best memories, recency the newest turns, balanced alternates."""
    parts = [*TURNS, *MEMORIES, TASK]
    budget = len(compose([TASK, MEMORIES[0], MEMORIES[1]], 10_000, "relevance")[0]) + 2
    assert ["t1", "k0", "k1"] == refs(compose(parts, budget, "relevance")[1])
    assert ["t1", "turn3", "turn2", "turn1"] == refs(compose(parts, budget, "recency")[1])[:4]
    assert ["t1", "k0", "turn3"] == refs(compose(parts, budget, "balanced")[1])[:3]


def test_turns_read_oldest_first_under_their_section() -> None:
    """Turns are chosen newest first but printed in the order they were said."""
    text, _ = compose([*TURNS, *MEMORIES], 10_000, "recency")
    memory, conversation = text.split("\n\n")
    assert memory.startswith("## Relevant memory\n- (knowledge) fact 3")  # newest first
    assert ["## Conversation", *(f"user: turn {i}" for i in range(4))] == conversation.split("\n")


def test_a_first_part_too_long_is_cut_not_dropped() -> None:
    """With a budget smaller than the first part, that part is cut to fit."""
    long = memory_part("solutions", "s1", "x" * 1000, 0.99, 1, None)
    text, used = compose([long], 100, "relevance")
    assert 100 == len(text)
    assert text.endswith("…")
    assert ["s1"] == [p.ref for p in used]


def test_nothing_to_say_is_an_empty_bundle() -> None:
    """No parts: an empty text and no sources."""
    assert ("", []) == compose([], 4000, "balanced")
