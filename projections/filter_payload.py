"""The filter language (:mod:`schemas.filters`) compiled to the vector engine's filters.

One compiler for both engines: a kit builds each engine's condition objects (Qdrant
Edge's, qdrant-client's). What the language needs that the engines do not say alike:
- a number equals by a range of one value (a match is of keywords, integers and
  booleans only, and would miss 2.5 or match 3 for 3.0 differently);
- Edge's Python binding passes a boolean as the integer it also is, so a boolean would
  match 1 and never true: the payload's copy of the metadata carries booleans as
  tokens no JSON string of an agent's is (:func:`filter_copy`), and so does the filter;
- times are the payload's epoch seconds (``created_epoch``, ``ts_epoch``); timestamps
  inside metadata are compared by the engine's datetime range;
- metadata keys are the agents' own, so none has an index of its own, and a filter on
  one made the engine read every point's payload (measured: 52 ms a selective search
  at 10 x 10,000). Every scalar in the metadata (each element of a list too) is also a
  token ``<path>=<type>:<value>`` in the indexed keyword field ``meta_kv``, and an
  equality (``$eq``, ``$in``, ``$contains`` and their negations) matches tokens: the
  engine counts the candidates in the index and searches just those.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Final, Protocol

from memstream.schemas.filters import And, Cond, Node, Not, Or

__all__ = [
    "EXPIRES",
    "MAX_NUMBER_INDEXES",
    "META_KV",
    "META_NUM",
    "PayloadKit",
    "compile_must",
    "compile_payload",
    "filter_copy",
    "live",
    "numbers",
    "numeric_paths",
    "tokens",
]

# The payload keys the time fields and expiry are kept under.
_TIME_KEYS: Final = {"created_at": "created_epoch", "updated_at": "ts_epoch"}
EXPIRES: Final = "expires_epoch"
META_KV: Final = "meta_kv"
# The metadata's numbers alone, at their paths (lists keep their numbers): a float
# index on a path here holds every value a numeric range compares, and nothing that a
# timestamp range (on the metadata itself) would miss.
META_NUM: Final = "meta_num"
# Metadata keys a filter can name (schemas.filters), and the longest string value kept
# as a token (a longer one is matched by its path, without the index).
_KEY: Final = re.compile(r"\A[A-Za-z0-9_-]{1,128}\Z")
TOKEN_CHARS: Final = 256
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


def _token(path: str, v: Any) -> str | None:
    """The token of ``v`` at ``path``; None for a value a token does not carry."""
    if isinstance(v, bool):
        return f"{path}=b:{'true' if v else 'false'}"
    if isinstance(v, int | float):
        return f"{path}=n:{float(v)!r}"
    if isinstance(v, str) and len(v) <= TOKEN_CHARS:
        return f"{path}=s:{v}"
    return None


def tokens(metadata: dict[str, Any], prefix: str = "") -> list[str]:
    """Every scalar of ``metadata`` (and each element of its lists) as a token."""
    out: list[str] = []
    for key, value in metadata.items():
        if not isinstance(key, str) or not _KEY.match(key):
            continue  # no filter can name it
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out += tokens(value, f"{path}.")
            continue
        for v in value if isinstance(value, list) else (value,):
            token = _token(path, v)
            if token is not None:
                out.append(token)
    return out


# Numeric metadata paths given a float index of their own, at most this many a
# generation: a range on such a path is checked from the index, not by reading each
# candidate's payload (measured: 9.0 ms against 1.0 ms a filtered hybrid search at
# 100,000 memories a tenant). Paths past the cap are still filtered, more slowly.
MAX_NUMBER_INDEXES: Final = 32


def numbers(metadata: dict[str, Any]) -> dict[str, Any]:
    """The numbers of ``metadata`` at their paths (booleans are not numbers)."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not _KEY.match(key):
            continue
        if isinstance(value, dict):
            inner = numbers(value)
            if inner:
                out[key] = inner
        elif isinstance(value, list):
            kept = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
            if kept:
                out[key] = kept
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = value
    return out


def numeric_paths(payloads: Any) -> set[str]:
    """The metadata paths that hold a number in any of ``payloads`` (from their tokens)."""
    paths: set[str] = set()
    for payload in payloads:
        for token in payload.get(META_KV, ()):
            path, _, value = token.partition("=")
            if value.startswith("n:"):
                paths.add(path)
    return paths


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
    values = c.value if isinstance(c.value, tuple) else (c.value,)
    if c.field == "metadata" and c.op in ("eq", "in"):
        found = [_token(".".join(c.path), v) for v in values]
        if all(t is not None for t in found):
            return kit.match_any(META_KV, found) if len(found) > 1 else kit.match(META_KV, found[0])  # type: ignore[arg-type]
    if c.field == "metadata" and isinstance(c.value, int | float) and not isinstance(c.value, bool):
        key = f"{META_NUM}." + ".".join(c.path)  # the numbers alone, indexed
    elif c.field == "metadata":
        key = "metadata." + ".".join(c.path)
    else:
        key = _TIME_KEYS.get(c.field, c.field)
    time_field = c.field in _TIME_KEYS
    if c.op != "in":
        return _one(kit, key, c.op, c.value, time_field)
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


def compile_must(node: Node, kit: PayloadKit) -> list[Any]:
    """``node`` as conditions that must all hold, to sit beside the search's own. A
    top-level AND is spread out rather than nested: the engine picks the condition it
    reads candidates from among the top level only, and an indexed one there (a token)
    spares it checking an unindexed one (a metadata range) on every point of the
    tenant (measured: 6.9 ms a search nested, 10 x 10,000)."""
    items = node.items if isinstance(node, And) else (node,)
    out: list[Any] = []
    for item in items:
        out += compile_must(item, kit) if isinstance(item, And) else [compile_payload(item, kit)]
    return out


def live(kit: PayloadKit, now: dt.datetime) -> Any:
    """Points that have not expired by ``now``: no expiry, or one still ahead."""
    return kit.group(should=[kit.empty(EXPIRES), kit.number(EXPIRES, gt=now.timestamp())])
