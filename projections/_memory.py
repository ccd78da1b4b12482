"""Rules about memories that both projections follow."""

from __future__ import annotations

from typing import Any, Final

from schemas.events import MemoryRevised

__all__ = ["REVISABLE_TEXT", "revision"]

# The text fields a revision may change, by the kind of memory it revises.
REVISABLE_TEXT: Final = {"knowledge": ("content",), "solutions": ("problem", "solution")}


def revision(e: MemoryRevised, kind: str) -> dict[str, Any]:
    """The fields ``e`` changes in a memory of ``kind``: only those it carries (not None).

    Metadata comes as the event holds it (a dict); tags as a list.
    """
    changes: dict[str, Any] = {
        name: getattr(e, name) for name in REVISABLE_TEXT[kind] if getattr(e, name) is not None
    }
    if e.tags is not None:
        changes["tags"] = list(e.tags)
    if e.metadata is not None:
        changes["metadata"] = e.metadata
    return changes
