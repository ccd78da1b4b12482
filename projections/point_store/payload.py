"""The layout of a point's payload, owned here alone: the fields the engine filters on,
beside the whole record as one JSON string."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from memstream.projections.filter_payload import META_KV, META_NUM, filter_copy, numbers, tokens

__all__ = ["from_payload", "to_payload"]

# The record's fields the engine filters on, copied beside it when they have a value.
_FILTERED: Final = (
    "agent", "domain", "tags", "session_id", "task_id", "user_id", "run_id", "project",
    "created_epoch", "expires_epoch",
)  # fmt: skip
# Keys sorted: a record is the same document however its fields were set (live, a task's
# outcome is added to the stored record; in a rebuild, to a fresh one).
_encode = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


def to_payload(record: dict[str, Any]) -> dict[str, Any]:
    """A memory's point payload: the fields searches filter on, and the whole record as
    one JSON string. (Each payload value costs the engine's Python binding a few
    microseconds to take in, measured here: a dozen of them cost more than the write.)"""
    payload = {
        "tenant": record["tenant"],
        "kind": record["kind"],
        "ts_epoch": record["ts_epoch"],
        "doc": _encode(record).decode(),
    }
    for name in _FILTERED:
        value = record.get(name)
        if value:
            payload[name] = value
    if record.get("metadata"):
        payload["metadata"] = filter_copy(record["metadata"])
        found = tokens(record["metadata"])
        if found:
            payload[META_KV] = found
        numeric = numbers(record["metadata"])
        if numeric:
            payload[META_NUM] = numeric
    return payload


def from_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The record a point carries."""
    return _decode(payload["doc"])
