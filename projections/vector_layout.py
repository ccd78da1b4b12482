"""The names of the vector layout, in one place: collections, aliases, generations, ids.

One collection per (kind, tenant) and generation, ``ms_<kind>_<tenant>__<generation>``,
reached through the alias ``ms_<kind>_<tenant>`` that points at the generation in use.
Each generation has a state collection, ``ms_state__<generation>`` (alias ``ms_state``),
whose one point carries the checkpoint. Point ids are uuid5 of (tenant, kind, id), so
upserts and deletes repeat safely and the same memory id in two tenants is two points.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from typing import Final

__all__ = [
    "KINDS",
    "PREFIX",
    "STATE_ALIAS",
    "STATE_POINT",
    "alias",
    "alias_of",
    "generation_of",
    "new_generation",
    "physical",
    "point_id",
]

KINDS: Final = ("knowledge", "solutions", "collaborations")
PREFIX: Final = "ms_"
STATE_ALIAS: Final = "ms_state"
STATE_POINT: Final = 1
_NAMESPACE: Final = uuid.UUID("6f1d0c4e-3b7a-5d2e-9a41-8c0f2b7e5d13")


def alias(kind: str, tenant: str) -> str:
    """The name a (kind, tenant) collection is reached by, whatever its generation."""
    return f"{PREFIX}{kind}_{tenant}"


def physical(alias_name: str, generation: str) -> str:
    """The collection of ``generation`` behind an alias (the state's included)."""
    return f"{alias_name}__{generation}"


def alias_of(collection: str) -> str:
    """The alias of a generation's collection (the name itself when it has none)."""
    return collection.rpartition("__")[0] or collection


def generation_of(collection: str) -> str:
    """The generation a collection belongs to ("" for a collection not of ours)."""
    head, sep, generation = collection.rpartition("__")
    return generation if sep and head.startswith(PREFIX) else ""


def point_id(tenant: str, kind: str, ref: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{tenant}\x00{kind}\x00{ref}"))


def new_generation() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
