"""The filter language of ``search``, ``list`` and ``recall``: parsed once, here.

A filter is a JSON object. ``{"field": value}`` is equality; ``{"field": {"$op": value}}``
applies an operator; ``{"$and": [...]}``, ``{"$or": [...]}`` and ``{"$not": {...}}``
combine filters, and an object of several members is the AND of them. The parser turns
it into a small tree (:data:`Node`) that each store compiles to its own query (DuckDB SQL
with bound parameters, the vector engine's filter), so both read a filter the same way.

What a condition means, everywhere:
- A field that holds a list (``tags``, a list in metadata) matches when any of its
  elements does: ``{"tags": "ops"}`` and ``{"tags": {"$contains": "ops"}}`` both mean
  "tagged ops"; ``$ne`` and ``$nin`` are the negations (no element is it).
- A missing field matches no positive condition and every negated one.
- Numbers compare as numbers (``1`` equals ``1.0``, never ``"1"`` or ``true``); strings
  as strings; the range operators take numbers, or timestamps (RFC 3339 with a zone),
  which compare as instants, so ``{"metadata.due": {"$lt": "2027-01-01T00:00:00Z"}}``
  holds for ``"2026-12-31T23:00:00-02:00"``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import msgspec

from memstream.schemas.errors import QueryError

__all__ = [
    "FIELDS",
    "KINDS",
    "LIST_FIELDS",
    "TIME_FIELDS",
    "And",
    "Cond",
    "Node",
    "Not",
    "Op",
    "Or",
    "Scalar",
    "kinds_of",
    "parse_filter",
    "with_fields",
]

KINDS: Final = ("knowledge", "solutions", "collaborations", "turns", "tasks")
# The fields a filter may name, besides metadata.<key>.
FIELDS: Final = (
    "kind", "agent", "domain", "tags", "user_id", "run_id", "project", "task_id",
    "created_at", "updated_at",
)  # fmt: skip
TIME_FIELDS: Final = frozenset({"created_at", "updated_at"})
LIST_FIELDS: Final = frozenset({"tags"})
_OPS: Final = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains")
_RANGE: Final = frozenset({"$gt", "$gte", "$lt", "$lte"})
# A metadata key in a path: what every store can address without quoting games.
_KEY: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_CONDITIONS: Final = 256
MAX_DEPTH: Final = 8
MAX_VALUES: Final = 1024

Op: TypeAlias = Literal["eq", "gt", "gte", "lt", "lte", "in"]
Scalar: TypeAlias = str | int | float | bool | dt.datetime


@dataclass(frozen=True)
class Cond:
    """``field`` (``metadata`` with ``path`` for metadata.<key>...) matches ``op`` against
    ``value`` (a tuple for ``in``). Negated operators are a :class:`Not` of their positive
    twin; ``$contains`` is ``eq`` (any element of a list)."""

    field: str
    op: Op
    value: Scalar | tuple[Scalar, ...]
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node: TypeAlias = Cond | And | Or | Not

_Timestamp = msgspec.json.Decoder(dt.datetime)


def _bad(message: str) -> QueryError:
    return QueryError("bad_request", f"filter: {message}")


def _instant(value: str, where: str) -> dt.datetime | None:
    try:
        ts = _Timestamp.decode(msgspec.json.encode(value))
    except msgspec.ValidationError:
        return None
    if ts.tzinfo is None:
        raise _bad(f"{where}: the timestamp {value!r} has no zone: end it with Z or +hh:mm")
    return ts.astimezone(dt.UTC)


class _Parser:
    def __init__(self) -> None:
        self.conditions = 0

    def node(self, obj: Any, depth: int) -> Node:
        if not isinstance(obj, dict):
            raise _bad(f"a filter is a JSON object, not {_kind(obj)}")
        if not obj:
            raise _bad("an empty object: leave the filter out to match everything")
        if depth > MAX_DEPTH:
            raise _bad(f"nests $and/$or/$not more than {MAX_DEPTH} deep")
        items = [self.member(k, v, depth) for k, v in obj.items()]
        return items[0] if len(items) == 1 else And(tuple(items))

    def member(self, key: Any, value: Any, depth: int) -> Node:
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise _bad(f"{key} takes a non-empty list of filters")
            items = tuple(self.node(v, depth + 1) for v in value)
            return And(items) if key == "$and" else Or(items)
        if key == "$not":
            return Not(self.node(value, depth + 1))
        if isinstance(key, str) and key.startswith("$"):
            raise _bad(f"unknown operator {key!r} at the top of a filter: use $and, $or or $not")
        field, path = _field(key)
        if isinstance(value, dict):
            if not value:
                raise _bad(f"{key}: an empty object of operators")
            conds = [self.cond(key, field, path, op, v) for op, v in value.items()]
            return conds[0] if len(conds) == 1 else And(tuple(conds))
        return self.cond(key, field, path, "$eq", value)

    def cond(self, key: str, field: str, path: tuple[str, ...], op: Any, value: Any) -> Node:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise _bad(f"more than {MAX_CONDITIONS} conditions")
        if op not in _OPS and field == "metadata" and not str(op).startswith("$"):
            raise _bad(f"{key}: to reach a nested value, name it: {key}.{op}")
        if op not in _OPS:
            raise _bad(f"{key}: unknown operator {op!r}: use one of {', '.join(_OPS)}")
        if op == "$contains" and field not in LIST_FIELDS and field != "metadata":
            raise _bad(f"{key}: $contains applies to a list field (tags, metadata.<key>)")
        if op in ("$in", "$nin"):
            if not isinstance(value, list) or not value or len(value) > MAX_VALUES:
                raise _bad(f"{key}: {op} takes a list of 1 to {MAX_VALUES} values")
            values = tuple(_value(key, field, op, v) for v in value)
            positive = Cond(field, "in", values, path)
            return Not(positive) if op == "$nin" else positive
        scalar = _value(key, field, op, value)
        if op == "$ne":
            return Not(Cond(field, "eq", scalar, path))
        name: Op = "eq" if op == "$contains" else op[1:]
        return Cond(field, name, scalar, path)


def _field(key: Any) -> tuple[str, tuple[str, ...]]:
    if not isinstance(key, str):
        raise _bad(f"a field name is a string, not {key!r}")
    if key.startswith("metadata."):
        path = tuple(key.split(".")[1:])
        for part in path:
            if not _KEY.match(part):
                raise _bad(
                    f"{key}: a metadata key in a filter is 1 to 128 letters, digits, '_' "
                    f"or '-', not {part!r}"
                )
        return "metadata", path
    if key not in FIELDS:
        raise _bad(f"unknown field {key!r}: use one of {', '.join(FIELDS)} or metadata.<key>")
    return key, ()


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else repr(value)
    )


def _value(key: str, field: str, op: str, value: Any) -> Scalar:
    """The operand of one condition, checked against what ``field`` holds."""
    if isinstance(value, dict | list) or value is None:
        raise _bad(f"{key}: {op} compares with a string, number or boolean, not {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(f"{key}: {value} is not a number a filter can compare with")
    if field in TIME_FIELDS:
        ts = _instant(value, key) if isinstance(value, str) else None
        if ts is None:
            raise _bad(f"{key} is a time: compare it with an RFC 3339 timestamp, not {value!r}")
        return ts
    if op in _RANGE:
        if field != "metadata":
            raise _bad(
                f"{key}: {op} compares numbers or times, and {field} holds text: "
                "use $eq, $ne, $in or $nin"
            )
        if isinstance(value, bool):
            raise _bad(f"{key}: {op} compares numbers or timestamps, not a boolean")
        if isinstance(value, str):
            ts = _instant(value, key)
            if ts is None:
                raise _bad(f"{key}: {op} compares numbers or RFC 3339 timestamps, not {value!r}")
            return ts
        return value  # type: ignore[no-any-return]
    if field != "metadata" and not isinstance(value, str):
        raise _bad(f"{key} holds text: compare it with a string, not {_kind(value)}")
    if field == "kind" and value not in KINDS:
        raise _bad(f"kind {value!r} is not one of {', '.join(KINDS)}")
    return value  # type: ignore[no-any-return]


def parse_filter(obj: Any) -> Node:
    """The filter ``obj`` as a tree; raises QueryError('bad_request') naming what is
    wrong (an unknown field or operator, a value of the wrong type)."""
    return _Parser().node(obj, 0)


def kinds_of(node: Node | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The kinds among ``allowed`` that ``node`` may match: a filter on ``kind`` that
    rules one out spares its store a search. (Conservative: only a top-level AND of kind
    conditions narrows.)"""
    if node is None:
        return allowed
    conds = node.items if isinstance(node, And) else (node,)
    kinds = set(allowed)
    for c in conds:
        if isinstance(c, Cond) and c.field == "kind":
            wanted = c.value if isinstance(c.value, tuple) else (c.value,)
            kinds &= set(wanted)
    return tuple(k for k in allowed if k in kinds)


def with_fields(
    node: Node | None,
    *,
    agent: str | None = None,
    domain: str | None = None,
    tags: tuple[str, ...] = (),
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> Node | None:
    """``node`` and the search fields that came before the filter language, folded into
    one tree (here, once, for every engine): ``agent`` and ``domain`` equal, every one of
    ``tags`` held, last changed (``updated_at``) at or after ``since`` and before
    ``until``."""
    conds: list[Node] = []
    if agent:
        conds.append(Cond("agent", "eq", agent))
    if domain:
        conds.append(Cond("domain", "eq", domain))
    conds += [Cond("tags", "eq", tag) for tag in tags]
    if since is not None:
        conds.append(Cond("updated_at", "gte", since))
    if until is not None:
        conds.append(Cond("updated_at", "lt", until))
    if not conds:
        return node
    if node is not None:
        conds.insert(0, node)
    return conds[0] if len(conds) == 1 else And(tuple(conds))
