"""What every adapter does to read its own writes: remember the sequence of its last
write and ask each read to wait for it."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["OwnWrites"]

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
