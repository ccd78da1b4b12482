"""The roles a memstream process can run (``serve --role``), from the contract's table of
which projection serves which op. Light on purpose: the CLI reads it at every start."""

from __future__ import annotations

from typing import Final

from memstream.schemas.queries import PROJECTIONS, ops_served

__all__ = ["ALL_ROLES", "ROLES", "role_help"]

ROLES: Final = (*PROJECTIONS, "query")
ALL_ROLES: Final = frozenset(ROLES)


def role_help() -> str:
    """What each role runs and answers."""
    history = ops_served({"history"}, answers_unknown=True)
    vectors = ops_served({"vectors"})
    return (
        f"history: the DuckDB history, answering {', '.join(history)}. "
        f"vectors: the vector projection (with the embedded engine it also answers "
        f"{', '.join(vectors)}). query: {', '.join(vectors)} from a "
        "Qdrant server (MEMSTREAM_QDRANT_URL)."
    )
