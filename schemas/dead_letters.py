"""Dead letters: what a message in ``MEMORY_DLQ`` carries besides the event itself.

A dead letter is the original body, published on ``memdlq.<projection>.<tenant>`` with
three headers saying why and where it came from. Retrying one publishes the body again on
its source subject with ``Memstream-Retry-For: <projection>``: only the projection that
dead-lettered it applies that copy; every other projection passes it by.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

__all__ = [
    "DLQ_ERROR",
    "DLQ_RETRY_FOR",
    "DLQ_SOURCE_SEQ",
    "DLQ_SOURCE_SUBJECT",
    "DeadLetterInfo",
    "dead_letter_headers",
    "read_dead_letter",
    "retry_headers",
]

DLQ_ERROR: Final = "Memstream-Error"
DLQ_SOURCE_SUBJECT: Final = "Memstream-Source-Subject"
DLQ_SOURCE_SEQ: Final = "Memstream-Source-Seq"
DLQ_RETRY_FOR: Final = "Memstream-Retry-For"
# A reason is cut to this many characters: headers travel in every message.
_REASON_CHARS: Final = 4000


class DeadLetterInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One dead letter as ``memstream dlq list`` shows it."""

    seq: int
    subject: str
    # The projection that could not apply it (from the subject).
    projection: str
    source_subject: str
    source_seq: int
    error: str
    size: int


def dead_letter_headers(
    projection: str, reason: str, source_subject: str, source_seq: int
) -> dict[str, str]:
    """The headers of a dead letter; a redelivered one dedupes on (projection, seq)."""
    return {
        DLQ_ERROR: reason[:_REASON_CHARS],
        DLQ_SOURCE_SUBJECT: source_subject,
        DLQ_SOURCE_SEQ: str(source_seq),
        "Nats-Msg-Id": f"{projection}:{source_seq}",
    }


def read_dead_letter(
    seq: int, subject: str, headers: Mapping[str, str] | None, size: int
) -> DeadLetterInfo:
    """A DLQ message's headers as a DeadLetterInfo (missing headers read as empty)."""
    headers = headers or {}
    source_seq = headers.get(DLQ_SOURCE_SEQ, "")
    parts = subject.split(".")
    return DeadLetterInfo(
        seq=seq,
        subject=subject,
        projection=parts[1] if len(parts) == 3 else "",
        source_subject=headers.get(DLQ_SOURCE_SUBJECT, ""),
        source_seq=int(source_seq) if source_seq.isdigit() else 0,
        error=headers.get(DLQ_ERROR, ""),
        size=size,
    )


def retry_headers(letter: DeadLetterInfo) -> dict[str, str]:
    """The headers of a retried letter's copy: for its projection alone, published once
    (a retry repeated within the duplicate window is stored once)."""
    return {
        DLQ_RETRY_FOR: letter.projection,
        "Nats-Msg-Id": f"dlq-retry:{letter.projection}:{letter.source_seq}:{letter.seq}",
    }
