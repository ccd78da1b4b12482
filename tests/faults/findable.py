"""What a fault test checks afterwards: every memory it published is found by search."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from memstream.producers import MemoryClient
from memstream.schemas import events as ev


def word(i: int) -> str:
    """A word that only memory ``i`` holds."""
    return f"zq{i}marker"


async def publish_memories(mem: MemoryClient, numbers: Iterable[int]) -> int:
    """Store knowledge ``m<i>`` for each number; the last sequence."""
    events = [
        mem.new_event(
            ev.KnowledgeStored,
            memory_id=f"m{i}",
            domain="d",
            content=f"fact {word(i)}: " + "something worth remembering " * 8,
        )
        for i in numbers
    ]
    return (await mem.publish_many(events))[-1].seq


async def every_memory_is_found(mem: MemoryClient, numbers: Sequence[int], seq: int) -> None:
    """Each memory is the best match for its own word (asked 100 at a time)."""
    wanted = list(numbers)
    for at in range(0, len(wanted), 100):
        chunk = wanted[at : at + 100]
        found = await mem.search_many(
            [word(i) for i in chunk], mode="keyword", top_k=1, min_seq=seq, wait_ms=60_000
        )
        missing = [i for i, hits in zip(chunk, found, strict=True)
                   if [f"m{i}"] != [h.memory_id for h in hits]]  # fmt: skip
        assert [] == missing, f"{len(missing)} memories not found, e.g. m{missing[0]}"
