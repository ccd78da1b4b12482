"""What the adapters share: reading their own writes, and stamping the events that
record what a framework's agents do."""

from __future__ import annotations

import json
from typing import Any, Final

from memstream.producers import SyncMemoryClient
from memstream.schemas import events as ev
from memstream.schemas.ids import new_id

__all__ = ["OwnWrites", "jsonable", "stamp"]

# How long a read waits for the adapter's own last write to be applied.
WAIT_MS: Final = 30_000


class OwnWrites:
    """Mixed into an adapter: ``_wrote(ack.seq)`` after each write, ``**self._reads()``
    in each read."""

    _last_seq: int = 0

    @property
    def last_seq(self) -> int:
        """The stream sequence of this adapter's last write (0 before the first): hand
        it to an agent elsewhere, whose adapter's ``reads_after`` makes it see the write."""
        return self._last_seq

    def reads_after(self, seq: int) -> None:
        """Make this adapter's reads wait until memstream has applied ``seq``, the
        ``last_seq`` of another agent's adapter, so they see what it wrote."""
        self._wrote(seq)

    def _wrote(self, seq: int) -> None:
        self._last_seq = max(self._last_seq, seq)

    def _reads(self) -> dict[str, Any]:
        if not self._last_seq:
            return {}
        return {"min_seq": self._last_seq, "wait_ms": WAIT_MS}


def stamp(client: SyncMemoryClient, agent: str) -> dict[str, Any]:
    """The envelope of an event recorded for ``agent`` (a framework agent's own name, not
    the client's): a new id, the client's tenant, now."""
    return {"id": new_id(), "tenant": client.tenant, "agent": agent[:128] or client.agent,
            "ts": ev.utc_now()}  # fmt: skip


def jsonable(value: Any) -> Any:
    """``value`` if it is JSON as it is, else its text (a tool's or a model's output may
    be any object)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value
