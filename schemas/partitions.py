"""How tenants are spread over partitions: NATS's own ``partition()`` mapping, into slots.

The server stamps every event and every query with its tenant's **slot**, one of
``SLOTS``, with the deterministic ``partition(64, 1)`` subject transform (FNV-1a of the
tenant token): events by the ``MEMORY`` stream's subject transform, as they are stored
(``mem.<tenant>.<family>.<name>`` is stored as ``mem.<tenant>.<family>.<name>.<slot>``),
and queries by the server's subject mapping (``memq.<tenant>.<op>`` is delivered as
``memq.<tenant>.<op>.<slot>``). Publishers and clients never see the slot.

A deployment of N partitions gives partition k the slots ``s`` with ``s % N == k``: its
workers' durable consumers filter those slots' events, and they subscribe to those slots'
queries. The slots never change, so changing N changes only which worker reads which
slots: nothing in the stream is rewritten, and old and new partitions can serve side by
side while the new ones are built.

:func:`slot_of` computes the same hash as the server; memstream uses it only to read
events stored before the stream stamped slots, and to check a slot it was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from memstream.schemas.errors import ConfigError
from memstream.schemas.subjects import EVENT_PREFIX, QUERY_PREFIX

__all__ = [
    "EVENT_SLOT_TRANSFORM",
    "QUERY_SLOT_MAPPING",
    "SLOTS",
    "WHOLE",
    "Partition",
    "server_mappings",
    "slot_of",
]

# Fixed forever: a stored event's slot token must mean the same slot to every version.
SLOTS: Final = 64

# The MEMORY stream's subject transform (source, destination).
EVENT_SLOT_TRANSFORM: Final = (
    f"{EVENT_PREFIX}.*.*.*",
    f"{EVENT_PREFIX}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}"
    f".{{{{partition({SLOTS},1)}}}}",
)
# The server's subject mapping for queries (source, destination).
QUERY_SLOT_MAPPING: Final = (
    f"{QUERY_PREFIX}.*.*",
    f"{QUERY_PREFIX}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({SLOTS},1)}}}}",
)

_FNV_OFFSET, _FNV_PRIME = 2166136261, 16777619


def slot_of(tenant: str) -> int:
    """The tenant's slot, as the server's ``partition(64, 1)`` computes it (32-bit
    FNV-1a of the token, modulo the slots)."""
    h = _FNV_OFFSET
    for byte in tenant.encode():
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h % SLOTS


def server_mappings() -> str:
    """The ``mappings`` block a nats-server configuration needs for partitioned queries
    (the embedded server always has it; a cluster's every server needs it)."""
    src, dest = QUERY_SLOT_MAPPING
    return f'mappings = {{\n  "{src}": "{dest}"\n}}\n'


@dataclass(frozen=True)
class Partition:
    """Partition ``index`` of ``count``; ``Partition(0, 1)`` is everything."""

    index: int = 0
    count: int = 1

    @classmethod
    def of(cls, index: int | None, count: int) -> Partition:
        """Checked: ``--partition`` must be given when ``count`` > 1, and below it."""
        if not 1 <= count <= SLOTS:
            raise ConfigError(f"MEMSTREAM_PARTITIONS={count} is not valid: expected 1 to {SLOTS}")
        if index is None:
            if count > 1:
                raise ConfigError(
                    f"MEMSTREAM_PARTITIONS={count}: say which partition this process serves "
                    f"with --partition (0 to {count - 1})"
                )
            index = 0
        if not 0 <= index < count:
            raise ConfigError(
                f"--partition {index} is not valid with MEMSTREAM_PARTITIONS={count}: "
                f"use 0 to {count - 1}"
            )
        return cls(index, count)

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def slots(self) -> tuple[int, ...]:
        return tuple(s for s in range(SLOTS) if s % self.count == self.index)

    def owns_slot(self, slot: int) -> bool:
        return slot % self.count == self.index

    def owns(self, tenant: str) -> bool:
        return self.whole or self.owns_slot(slot_of(tenant))

    def event_filters(self) -> list[str]:
        """The subjects of this partition's events in the stream. A partition also reads
        the unstamped events stored before the stream stamped slots (``mem.*.*.*``),
        keeping its tenants' (:meth:`owns`); partition 0 also reads malformed subjects,
        so that they still become dead letters."""
        if self.whole:
            return [f"{EVENT_PREFIX}.>"]
        filters = [f"{EVENT_PREFIX}.*.*.*.{s}" for s in self.slots]
        filters.append(f"{EVENT_PREFIX}.*.*.*")
        if self.index == 0:
            filters += [f"{EVENT_PREFIX}.*", f"{EVENT_PREFIX}.*.*", f"{EVENT_PREFIX}.*.*.*.*.>"]
        return filters

    def query_subjects(self) -> list[str]:
        """What this partition's query workers subscribe to."""
        if self.whole:
            return [f"{QUERY_PREFIX}.>"]
        return [f"{QUERY_PREFIX}.*.*.{s}" for s in self.slots]

    @property
    def namespace(self) -> str:
        """What tells this partition's names apart where partitions share a place (the
        collections on a Qdrant server): empty for every tenant."""
        return "" if self.whole else f"_p{self.index}of{self.count}"

    def label(self) -> str:
        return "all" if self.whole else f"{self.index}/{self.count}"


# Every tenant: a deployment that is not partitioned.
WHOLE: Final = Partition()
