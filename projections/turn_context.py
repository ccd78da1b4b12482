"""A conversation turn indexed with the turn before it in its session.

"Next Friday, after the load test" says nothing of what it answers; the question before
it does. By default (``short``) the words of the turn before join every turn's keyword
(BM25) terms, and its meaning joins the meaning vector of a turn under 12 words. In
benchmarks.retrieval's conversations, hybrid search found an answer in its top 5 for
48% of the questions with turns alone, 72% with the turn before on the keyword side,
78% on the meaning side, 100% on both, and 100% with ``short`` (R@1: 0, 22, 20, 55,
50%). Elsewhere, on long multi-session dialogues, the turn before in a long turn's
meaning vector made dense search worse (R@5 0.358 to 0.327): it dilutes a turn that
says enough itself, which ``short`` leaves alone. A hit still returns the turn itself:
only what it is found by changes.

The turn before is the session's latest turn below this one in the stream: in the same
batch, else the last one this projection indexed (kept for the 10,000 sessions written
most recently), else the stored turns of the session. So a rebuild, which applies the
same events in the same order, indexes every turn with the same context. A removal of a
session's turns forgets what was kept for it, so the next turn finds what is left.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from memstream.projections.point_store import PointStore, from_payload
from memstream.schemas import events as ev

__all__ = ["SIDES", "TurnContext", "removes"]

# "short": the keyword side always, the meaning side for a turn of fewer than
# SHORT_WORDS words (one that cannot stand alone).
Side = Literal["none", "keyword", "dense", "both", "short"]
SIDES: tuple[Side, ...] = ("none", "keyword", "dense", "both", "short")
DEFAULT_SIDE: Side = "short"
SHORT_WORDS = 12

_Payload = dict[str, Any]
# Whether a turn at seq ``at`` of a session was removed before a turn at ``seq``.
_Gone = Callable[[tuple[str, str], int, int], bool]


def removes(seq: int, e: ev.ConversationTurnsRemoved, session_id: object, at: int) -> bool:
    """Whether the removal at stream sequence ``seq`` removes the turn at ``at`` of
    ``session_id`` (of the removal's tenant): one it names, or with ``clear`` any before it."""
    return session_id == e.session_id and (at in e.seqs or (e.clear and at < seq))


class TurnContext:
    """The turn before each turn of a batch, and the texts each side indexes."""

    def __init__(self, side: Side = DEFAULT_SIDE, sessions: int = 10_000) -> None:
        self.side = side
        self._limit = sessions
        # (tenant, session_id) -> (seq, text) of the last turn indexed.
        self._last: OrderedDict[tuple[str, str], tuple[int, str]] = OrderedDict()

    def forget(self, tenant: str, session_id: str | None = None) -> None:
        """A removal of the session's turns (or a purge of the tenant's) happened."""
        if session_id is not None:
            self._last.pop((tenant, session_id), None)
            return
        for key in [k for k in self._last if k[0] == tenant]:
            del self._last[key]

    def _stored_before(
        self, store: PointStore, key: tuple[str, str], seq: int, gone: _Gone
    ) -> tuple[int, str] | None:
        where = {"kind": "turns", "session_id": key[1]}
        best: tuple[int, str] | None = None
        for stored in store.payloads(key[0], where=where):
            turn = from_payload(stored)
            at = int(turn.get("seq", 0))
            if at < seq and (best is None or at > best[0]) and not gone(key, at, seq):
                best = (at, str(turn["text"]))
        return best

    def texts(
        self,
        store: PointStore,
        turns: Iterable[tuple[str, _Payload]],
        removals: Sequence[tuple[int, ev.ConversationTurnsRemoved]] = (),
    ) -> dict[int, tuple[str, str]]:
        """For each (tenant, payload with ``text``) turn: its (dense, keyword) texts, by
        ``id(payload)``. Turns are taken in stream order whatever order they come in.
        ``removals``, the batch's, are applied after its turns are written: a turn one
        of them removed before this one is passed over here."""

        def gone(key: tuple[str, str], at: int, seq: int) -> bool:
            return any(
                r.tenant == key[0] and removed < seq and removes(removed, r, key[1], at)
                for removed, r in removals
            )

        out: dict[int, tuple[str, str]] = {}
        ordered = sorted(turns, key=lambda t: int(t[1].get("seq", 0)))
        for tenant, payload in ordered:
            text = str(payload["text"])
            session = payload.get("session_id")
            before = None
            if self.side != "none" and session:
                key = (tenant, str(session))
                seq = int(payload.get("seq", 0))
                before = self._last.get(key)
                if before is None or before[0] >= seq or gone(key, before[0], seq):
                    before = self._stored_before(store, key, seq, gone)
                self._last[key] = (seq, text)
                self._last.move_to_end(key)
                while len(self._last) > self._limit:
                    self._last.popitem(last=False)
            joined = f"{before[1]}\n{text}" if before else text
            short = (
                self.side == "short" and len(str(payload.get("content", "")).split()) < SHORT_WORDS
            )
            dense = joined if self.side in ("dense", "both") or short else text
            keyword = joined if self.side in ("keyword", "both", "short") else text
            out[id(payload)] = (dense, keyword)
        return out
