"""Which projection serves which query op: the one place this is decided. A request's
min_seq waits on each projection an op reads; a worker answers an op where the first
projection it reads is held."""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

__all__ = ["PROJECTIONS", "SERVED_BY", "ProjectionName", "ops_served"]

ProjectionName: TypeAlias = Literal["history", "vectors"]
PROJECTIONS: Final[tuple[ProjectionName, ...]] = ("history", "vectors")

# Which projections each op reads: a request's min_seq waits on each of them, and a
# worker answers an op only where it can read them all. The one place this is decided.
SERVED_BY: Final[dict[str, tuple[ProjectionName, ...]]] = {
    "search": ("vectors",),
    "recall": ("vectors", "history"),
    "history": ("history",),
    "task": ("history",),
    "context": ("history",),
    "conversation": ("history",),
    "stats": ("history",),
    "analytics": ("history",),
    "get": ("history",),
    "list": ("history",),
    "revisions": ("history",),
    "links": ("history",),
    "outcome": ("history",),
    # Reads no projection: answered by the worker that answers unknown ops (one role).
    "watch": (),
}


def ops_served(projections: frozenset[str] | set[str], answers_unknown: bool = False) -> list[str]:
    """The ops a worker holding ``projections`` answers, in the contract's order: those
    whose first projection it holds (the others an op reads, such as recall's history,
    may be read from another process), and, for the worker that answers unknown ops,
    those that read none (``watch``)."""
    return [
        op
        for op, needs in SERVED_BY.items()
        if (needs[0] in projections if needs else answers_unknown)
    ]
