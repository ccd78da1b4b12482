"""The filter language (:mod:`schemas.filters`) compiled to the vector engine's filters.

One compiler for both engines: a kit builds each engine's condition objects (Qdrant
Edge's, qdrant-client's). What the language needs that the engines do not say alike:
- a number equals by a range of one value (a match is of keywords, integers and
  booleans only, and would miss 2.5 or match 3 for 3.0 differently);
- Edge's Python binding passes a boolean as the integer it also is, so a boolean would
  match 1 and never true: the payload's copy of the metadata carries booleans as
  tokens no JSON string of an agent's is (:func:`filter_copy`), and so does the filter;
- times are the payload's epoch seconds (``created_epoch``, ``ts_epoch``); timestamps
  inside metadata are compared by the engine's datetime range.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final, Protocol

from schemas.filters import And, Cond, Node, Not, Or

__all__ = ["EXPIRES", "PayloadKit", "compile_payload", "filter_copy", "live"]

# The payload keys the time fields and expiry are kept under.
_TIME_KEYS: Final = {"created_at": "created_epoch", "updated_at": "ts_epoch"}
EXPIRES: Final = "expires_epoch"
_BOOL: Final = {True: "\x00true", False: "\x00false"}
_BOUND: Final = {"gt": "gt", "gte": "gte", "lt": "lt", "lte": "lte"}


class PayloadKit(Protocol):
    """What the compiler builds with, for one engine."""

    def match(self, key: str, value: str) -> Any: ...
    def match_any(self, key: str, values: list[str]) -> Any: ...
    def number(self, key: str, **bounds: float) -> Any: ...
    def instant(self, key: str, **bounds: str) -> Any: ...
    def empty(self, key: str) -> Any: ...
    def group(
        self, *, must: list[Any] = ..., should: list[Any] = ..., must_not: list[Any] = ...
    ) -> Any: ...


def filter_copy(value: Any) -> Any:
    """The metadata as the payload carries it for filters: booleans as tokens."""
    if isinstance(value, bool):
        return _BOOL[value]
    if isinstance(value, dict):
        return {k: filter_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [filter_copy(v) for v in value]
    return value


def _one(kit: PayloadKit, key: str, op: str, v: Any, time_field: bool) -> Any:
    if time_field:
        epoch = v.timestamp()
        return (
            kit.number(key, gte=epoch, lte=epoch) if op == "eq" else kit.number(key, **{op: epoch})
        )
    if isinstance(v, bool):
        return kit.match(key, _BOOL[v])
    if isinstance(v, int | float):
        return (
            kit.number(key, gte=float(v), lte=float(v))
            if op == "eq"
            else kit.number(key, **{op: float(v)})
        )
    if isinstance(v, dt.datetime):
        return kit.instant(key, **{op: v.astimezone(dt.UTC).isoformat()})
    return kit.match(key, v)


def _cond(kit: PayloadKit, c: Cond) -> Any:
    if c.field == "metadata":
        key = "metadata." + ".".join(c.path)
    else:
        key = _TIME_KEYS.get(c.field, c.field)
    time_field = c.field in _TIME_KEYS
    if c.op != "in":
        return _one(kit, key, c.op, c.value, time_field)
    values = c.value if isinstance(c.value, tuple) else (c.value,)
    if not time_field and all(isinstance(v, str) for v in values):
        return kit.match_any(key, list(values))  # type: ignore[arg-type]
    return kit.group(should=[_one(kit, key, "eq", v, time_field) for v in values])


def compile_payload(node: Node, kit: PayloadKit) -> Any:
    """``node`` as one engine condition (a filter nested in the search's filter)."""
    match node:
        case Cond():
            return _cond(kit, node)
        case And(items):
            return kit.group(must=[compile_payload(i, kit) for i in items])
        case Or(items):
            return kit.group(should=[compile_payload(i, kit) for i in items])
        case Not(item):
            return kit.group(must_not=[compile_payload(item, kit)])
    raise TypeError(node)


def live(kit: PayloadKit, now: dt.datetime) -> Any:
    """Points that have not expired by ``now``: no expiry, or one still ahead."""
    return kit.group(should=[kit.empty(EXPIRES), kit.number(EXPIRES, gt=now.timestamp())])
