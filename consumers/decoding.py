"""From JetStream deliveries to a batch a projection applies, and the dead letters among
them: decoding, checking the envelope against its subject, and the stream sequence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nats.aio.msg import Msg

from schemas.dead_letters import DLQ_RETRY_FOR
from schemas.errors import InvalidEvent, InvalidSubject, InvalidTenant
from schemas.events import AnyEvent, EventDecoder, UnknownEvent, check_subject
from schemas.subjects import parse_event_subject

__all__ = ["DeadLetter", "Decoded", "MessageDecoder", "stream_seq"]


def stream_seq(reply: str) -> tuple[int, int]:
    """(stream sequence, messages pending) from a JetStream delivery's reply subject.

    nats-py's ``msg.metadata`` builds datetimes and objects for every message; the hot
    path needs two integers.
    """
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[8])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>...
    return int(tokens[7]), int(tokens[10])


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    subject: str
    tenant: str
    reason: str
    data: bytes


@dataclass(frozen=True)
class Decoded:
    batch: list[tuple[int, AnyEvent | UnknownEvent]]
    bodies: list[bytes]  # as published, aligned with batch
    dead: list[DeadLetter]


class MessageDecoder:
    """Messages to a batch of (seq, event) plus the dead letters among them."""

    def __init__(self, projection: str, decoder: EventDecoder | None = None) -> None:
        """``projection``: whose batches these are; a dead letter retried for another
        projection (``Memstream-Retry-For``) is passed by."""
        self.projection = projection
        self.decoder = decoder or EventDecoder()
        # subject -> (tenant, type): parsing validates the tenant token, which is not free
        # per message, and a stream has few distinct subjects.
        self._subjects: dict[str, tuple[str, str]] = {}

    def _check(self, event: AnyEvent | UnknownEvent, subject: str) -> None:
        parsed = self._subjects.get(subject)
        if parsed is None:
            if len(self._subjects) > 65_536:
                self._subjects.clear()
            tenant, type_ = parse_event_subject(subject)
            parsed = self._subjects[subject] = (tenant, type_)
        if event.tenant != parsed[0] or event.type != parsed[1]:
            check_subject(event, subject)  # raises, with the message that says why

    def decode(self, msgs: Sequence[Msg], seqs: Sequence[int] | None = None) -> Decoded:
        """``seqs``: the messages' stream sequences, when the caller parsed them already."""
        batch: list[tuple[int, AnyEvent | UnknownEvent]] = []
        bodies: list[bytes] = []
        dead: list[DeadLetter] = []
        decode = self.decoder.decode
        check = self._check
        projection = self.projection
        if seqs is None:
            seqs = [stream_seq(msg.reply)[0] for msg in msgs]
        for msg, seq in zip(msgs, seqs, strict=True):
            headers = msg.headers
            if headers and headers.get(DLQ_RETRY_FOR, projection) != projection:
                continue  # another projection's retried dead letter
            data = msg.data
            try:
                event = decode(data)
                check(event, msg.subject)
            except (InvalidEvent, InvalidSubject, InvalidTenant) as err:
                reason = str(err)
                try:
                    # A bad subject explains more than what its body lacks.
                    parse_event_subject(msg.subject)
                except (InvalidSubject, InvalidTenant) as subject_err:
                    reason = str(subject_err)
                parts = msg.subject.split(".")
                tenant = parts[1] if len(parts) > 1 else ""
                dead.append(DeadLetter(seq, msg.subject, tenant, reason, msg.data))
                continue
            batch.append((seq, event))
            bodies.append(data)
        return Decoded(batch, bodies, dead)
