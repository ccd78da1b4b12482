"""The reply envelope every request-reply of the contract answers with (queries and
admin): ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {...}}``."""

from __future__ import annotations

from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar

import msgspec

__all__ = [
    "ERROR_CODES",
    "ErrorBody",
    "ErrorCode",
    "Reply",
    "TypedReply",
    "encode_reply",
    "error_reply",
    "ok_reply",
]

ErrorCode: TypeAlias = Literal[
    "bad_request",
    "not_found",
    "not_caught_up",
    "forbidden",
    "unavailable",
    "internal",
    "rate_limited",
]
ERROR_CODES: Final = frozenset(ErrorCode.__args__)  # type: ignore[attr-defined]
R = TypeVar("R")


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    code: ErrorCode
    message: str
    correlation_id: str | None = None
    # Only with rate_limited (otherwise left out of the JSON): how long until the same
    # query would be answered.
    retry_after_ms: int | msgspec.UnsetType = msgspec.UNSET


class Reply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {...}}``.

    ``tenant_has_no_events``: the tenant asked about has never stored anything (sent,
    as true, only with an empty result or ``not_found``): most often a mistyped tenant."""

    ok: bool
    result: Any = None
    error: ErrorBody | None = None
    tenant_has_no_events: bool = False


class TypedReply(msgspec.Struct, Generic[R], frozen=True, kw_only=True):
    """A reply decoded with its result's type (``TypedReply[SearchResult]``)."""

    ok: bool
    result: R | None = None
    error: ErrorBody | None = None
    tenant_has_no_events: bool = False


_encoder = msgspec.json.Encoder()


def encode_reply(reply: Reply) -> bytes:
    return _encoder.encode(reply)


def ok_reply(result: Any, tenant_has_no_events: bool = False) -> bytes:
    return _encoder.encode(Reply(ok=True, result=result, tenant_has_no_events=tenant_has_no_events))


def error_reply(
    code: str,
    message: str,
    correlation_id: str | None = None,
    tenant_has_no_events: bool = False,
    retry_after_ms: int | None = None,
) -> bytes:
    """An error reply; a code outside the contract's is sent as ``internal``."""
    known: Any = code if code in ERROR_CODES else "internal"
    after: int | msgspec.UnsetType = msgspec.UNSET if retry_after_ms is None else retry_after_ms
    error = ErrorBody(
        code=known, message=message, correlation_id=correlation_id, retry_after_ms=after
    )
    return _encoder.encode(Reply(ok=False, error=error, tenant_has_no_events=tenant_has_no_events))
