"""From JetStream deliveries to a batch a projection applies, and the dead letters among
them: decoding, checking the envelope against its subject, and the stream sequence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from memstream.projections.base import StorageFailure
from memstream.schemas.dead_letters import DLQ_RETRY_FOR
from memstream.schemas.errors import InvalidEvent, InvalidSubject, InvalidTenant
from memstream.schemas.events import (
    AnyEvent,
    EventDecoder,
    QuotaReapplied,
    UnknownEvent,
    check_subject,
)
from memstream.schemas.ids import validate_tenant
from memstream.schemas.partitions import WHOLE, Partition, slot_of
from memstream.schemas.subjects import EVENT_STREAM, parse_event_subject, published_subject

__all__ = ["DeadLetter", "Decoded", "MessageDecoder", "delivery_seq", "stream_seq"]


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


def delivery_seq(reply: str) -> int:
    """The consumer's delivery sequence of a JetStream delivery: one more for every
    message the consumer delivers, redeliveries included, so a gap means deliveries
    were lost on the way (a node or a route died with them in flight)."""
    tokens = reply.split(".")
    return int(tokens[6] if len(tokens) == 9 else tokens[8])


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

    def __init__(
        self,
        projection: str,
        decoder: EventDecoder | None = None,
        partition: Partition = WHOLE,
    ) -> None:
        """``projection``: whose batches these are; a dead letter retried for another
        projection (``Memstream-Retry-For``) is passed by. ``partition``: the tenants
        this projection holds; of the events stored before the stream stamped slots
        (which every partition reads), another partition's are passed by."""
        self.projection = projection
        self.decoder = decoder or EventDecoder()
        self.partition = partition
        self._theirs: dict[str, bool] = {}
        # subject -> (tenant, type): parsing validates the tenant token, which is not free
        # per message, and a stream has few distinct subjects.
        self._subjects: dict[str, tuple[str, str]] = {}

    def _check(self, event: AnyEvent | UnknownEvent, subject: str) -> None:
        parsed = self._subjects.get(subject)
        if parsed is None:
            if len(self._subjects) > 65_536:
                self._subjects.clear()
            tenant, type_, slot = parse_event_subject(subject)
            # A slot that is not the tenant's fails the check below, on every event.
            if slot is not None and slot != slot_of(tenant):
                tenant = ""
            parsed = self._subjects[subject] = (tenant, type_)
        if event.tenant != parsed[0] or event.type != parsed[1]:
            check_subject(event, subject)  # raises, with the message that says why

    def _another_partitions(self, subject: str) -> bool:
        """Whether an event stored without a slot belongs to another partition (one with
        an unreadable tenant is partition 0's to dead-letter)."""
        theirs = self._theirs.get(subject)
        if theirs is None:
            if len(self._theirs) > 65_536:
                self._theirs.clear()
            parts = subject.split(".")
            if len(parts) != 4:
                theirs = False  # stamped (a filter chose it for us), or partition 0's
            else:
                try:
                    theirs = not self.partition.owns(validate_tenant(parts[1]))
                except InvalidTenant:
                    theirs = self.partition.index != 0
            self._theirs[subject] = theirs
        return theirs

    def decode(self, msgs: Sequence[Msg], seqs: Sequence[int] | None = None) -> Decoded:
        """``seqs``: the messages' stream sequences, when the caller parsed them already."""
        batch: list[tuple[int, AnyEvent | UnknownEvent]] = []
        bodies: list[bytes] = []
        dead: list[DeadLetter] = []
        decode = self.decoder.decode
        check = self._check
        projection = self.projection
        whole = self.partition.whole
        if seqs is None:
            seqs = [stream_seq(msg.reply)[0] for msg in msgs]
        for msg, seq in zip(msgs, seqs, strict=True):
            headers = msg.headers
            if headers and headers.get(DLQ_RETRY_FOR, projection) != projection:
                continue  # another projection's retried dead letter
            if not whole and self._another_partitions(msg.subject):
                continue
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
                # Filed under the subject it was published to: a retry publishes it again.
                dead.append(
                    DeadLetter(seq, published_subject(msg.subject), tenant, reason, msg.data)
                )
                continue
            batch.append((seq, event))
            bodies.append(data)
        return Decoded(batch, bodies, dead)

    async def reapplied(
        self, js: JetStreamContext, batch: Sequence[tuple[int, AnyEvent | UnknownEvent]]
    ) -> dict[int, AnyEvent | UnknownEvent]:
        """The events the batch's ``quota.reapplied`` events name, read from the stream
        by sequence. One the stream no longer holds (erased, purged) or that is not an
        event is left out: a rebuild would not find it either. The stream unreachable is
        a StorageFailure: the batch waits for it, and nothing is dead-lettered."""
        wanted = sorted({s for _, e in batch if isinstance(e, QuotaReapplied) for s in e.seqs})
        found: dict[int, AnyEvent | UnknownEvent] = {}
        for seq in wanted:
            try:
                msg = await js.get_msg(EVENT_STREAM, seq)
            except nats.js.errors.NotFoundError:
                continue
            except (nats.errors.Error, TimeoutError) as err:
                raise StorageFailure(
                    f"the {self.projection} projection could not read event {seq} back from "
                    f"the stream for a quota.reapplied: {err!r}"
                ) from err
            try:
                event = self.decoder.decode(msg.data or b"")
                self._check(event, msg.subject or "")
            except (InvalidEvent, InvalidSubject, InvalidTenant):
                continue
            found[seq] = event
        return found
