"""Recall: one context bundle for an agent's prompt, within a budget of characters.

The parts are the task's state, the session's recent turns, and the knowledge and
solutions most relevant to the query. The task comes first (it is what the agent is
working on); the strategy orders the rest:

- ``relevance``: memories by score, then turns, newest first;
- ``recency``: turns newest first, then memories, newest first;
- ``balanced``: the best memory and the newest turn alternately.

Parts are taken in that order while they fit; a part that does not fit is left out (the
first part is cut to fit instead, so a bundle is never empty while there is something to
say). The bundle is rendered in sections (task, knowledge and solutions, conversation,
turns oldest first) and lists the sources it used.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from itertools import zip_longest
from typing import Final, Literal

import msgspec

from memstream.schemas.queries import TaskResult, Turn

__all__ = ["Part", "compose"]

Section = Literal["task", "memory", "turn"]
_TITLES: Final = {"task": "## Task", "memory": "## Relevant memory", "turn": "## Conversation"}
_ORDER: Final[tuple[Section, ...]] = ("task", "memory", "turn")
_ELLIPSIS = "…"
_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Part:
    section: Section
    text: str
    kind: str  # the source's kind: task, knowledge, solutions, turn
    ref: str
    seq: int | None = None
    score: float | None = None
    ts: dt.datetime | None = None


def task_part(task: TaskResult) -> Part:
    state, output = task.task, task.output
    line = f"{state.get('title') or state['task_id']} [{state.get('status') or 'unknown'}]"
    if state.get("assignee"):
        line += f", assigned to {state['assignee']}"
    if state.get("error"):
        line += f"\nerror: {state['error']}"
    if output is not None:
        line += f"\noutput: {_json.encode(output).decode()}"
    return Part("task", line, "task", state["task_id"], seq=state.get("last_seq"))


def memory_part(
    kind: str, ref: str, text: str, score: float, seq: int, ts: dt.datetime | None
) -> Part:
    label = {"solutions": "solution", "tasks": "task", "turns": "earlier turn"}.get(kind, kind)
    return Part("memory", f"- ({label}) {text}", kind, ref, seq=seq, score=score, ts=ts)


def turn_part(turn: Turn, session_id: str) -> Part:
    return Part(
        "turn", f"{turn.role}: {turn.content}", "turn", session_id, seq=turn.seq, ts=turn.ts
    )


def _ordered(parts: list[Part], strategy: str) -> list[Part]:
    task = [p for p in parts if p.section == "task"]
    by_score = sorted(
        (p for p in parts if p.section == "memory"), key=lambda p: p.score or 0.0, reverse=True
    )
    newest_turns = sorted(
        (p for p in parts if p.section == "turn"), key=lambda p: p.seq or 0, reverse=True
    )
    if strategy == "relevance":
        rest = by_score + newest_turns
    elif strategy == "recency":
        newest_memories = sorted(by_score, key=lambda p: p.seq or 0, reverse=True)
        rest = newest_turns + newest_memories
    else:
        rest = [p for pair in zip_longest(by_score, newest_turns) for p in pair if p]
    return task + rest


def _render(chosen: list[Part]) -> str:
    blocks = []
    for section in _ORDER:
        items = [p for p in chosen if p.section == section]
        if section == "turn":
            items.sort(key=lambda p: p.seq or 0)
        if items:
            blocks.append("\n".join([_TITLES[section], *(p.text for p in items)]))
    return "\n\n".join(blocks)


def _cut(part: Part, room: int) -> Part | None:
    if room <= len(_ELLIPSIS):
        return None
    return Part(
        part.section,
        part.text[: room - len(_ELLIPSIS)] + _ELLIPSIS,
        part.kind,
        part.ref,
        part.seq,
        part.score,
        part.ts,
    )


def compose(parts: list[Part], budget_chars: int, strategy: str) -> tuple[str, list[Part]]:
    """The bundle's text (at most ``budget_chars``) and the parts it used."""
    chosen: list[Part] = []
    for part in _ordered(parts, strategy):
        if len(_render([*chosen, part])) <= budget_chars:
            chosen.append(part)
        elif not chosen:
            # Cut the first part to what is left once its section header is paid for.
            overhead = len(_render([Part(part.section, "", part.kind, part.ref)]))
            cut = _cut(part, budget_chars - overhead)
            if cut is not None:
                chosen.append(cut)
    return _render(chosen), chosen
