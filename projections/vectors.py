"""The vector projection: memories and collaborations as points of the vector engine.

The engine and its layout are ``projections.point_store``'s: one point per memory, with a
dense vector (the embedder's, through the embedding cache) and a BM25 vector, in one
shard per generation shared by every tenant (the tenant an indexed payload key). A
rebuild writes a new generation and puts it in use in one atomic switch. The
projection's checkpoint lives in the generation's own state point, so it travels with the
points it describes.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from memstream.projections._vector_records import (
    MemoryEvent,
    Payload,
    PayloadFold,
    TaskEvent,
    base_record,
    scoped,
    task_record,
    text_of,
)
from memstream.projections.applied_ids import AppliedIds
from memstream.projections.base import Applied, Batch, StorageFailure, storage_guard
from memstream.projections.embedders import EmbedderError, EmbeddingRefused, Vectors
from memstream.projections.embedding_cache import CachedEmbedder, text_key
from memstream.projections.memory import MEMORY_KINDS, MEMORY_TYPES, Key, memory_bytes
from memstream.projections.point_store import (
    PointStore,
    PointStores,
    StorePoint,
    bm25_document,
    from_payload,
    new_generation,
    point_id,
    to_payload,
)
from memstream.projections.point_store.remote import EngineUnavailable
from memstream.projections.quotas import NO_LIMITS, Limits, Quotas
from memstream.projections.turn_context import DEFAULT_SIDE, Side, TurnContext, removes
from memstream.projections.vector_search import (
    Hit,
    SearchSpec,
    embed_queries,
    request,
    search_store,
)
from memstream.schemas import events as ev
from memstream.schemas.errors import MemstreamError

__all__ = ["EmbeddingMismatch", "VectorProjection"]


def _part_of(err: BaseException) -> str | None:
    """The part of the vector projection's storage ``err`` belongs to, or None when it
    is not the storage's. The embedder down, failing or refusing its key; the disk full
    or read-only under the engine (its free-space guard), the embedding cache or the
    applied ids; SQLite failing; the Qdrant server unreachable or failing; the embedded
    engine's own errors, or its process not answering. An embedder that refuses one text
    (400) is not here: it may be the text's fault, which the runner settles with
    :meth:`VectorProjection.check_storage` before it dead-letters anything."""
    if isinstance(err, EmbeddingRefused):
        return None
    if isinstance(err, EngineUnavailable):
        return "vector engine process"
    if isinstance(err, EmbedderError):
        return "embedder"
    if isinstance(err, sqlite3.Error):
        return "SQLite files (embedding cache, applied ids)"
    if isinstance(err, OSError):
        return "disk"
    if isinstance(err, ResponseHandlingException | UnexpectedResponse):
        return "Qdrant server"
    # Qdrant Edge raises plain Exceptions ("Service runtime error: ...", "Service
    # internal error: ..."); an event of ours it cannot take is a ValueError or TypeError.
    if type(err) is Exception:
        return "vector engine"
    return None


# What the embedder is asked when the storage is checked: not cached, so it reaches it.
_PROBE_TEXT: Final = "memstream checks that the embedder answers"
_TASK_TYPES: Final = frozenset({"task.created", "task.completed", "task.failed"})
# The event types that change points.
_APPLIES: Final = MEMORY_TYPES | _TASK_TYPES | {
    "collab.recorded", "conversation.turn", "conversation.turns_removed",
    "quota.set", "quota.reapplied",
}  # fmt: skip
# (kind, tenant, ref) -> the payload to write, or None to delete the point.
_Changes = dict[tuple[str, str, str], Payload | None]


class EmbeddingMismatch(MemstreamError):
    """The vectors in store were made by another embedding model or size."""

    code = "bad_request"


def _describe(embedding: dict[str, Any]) -> str:
    model = embedding.get("model")
    dims = f"{embedding['dimensions']} dimensions"
    return f"{model} ({dims})" if model else dims


class VectorProjection:
    """Writes and searches the points of one generation."""

    name = "vectors"

    def __init__(
        self,
        stores: PointStores,
        embedder: CachedEmbedder,
        *,
        generation: str | None = None,
        applied: AppliedIds | None = None,
        turn_context: Side = DEFAULT_SIDE,
        quota_defaults: Limits = NO_LIMITS,
    ) -> None:
        """``generation``: a new one to fill (a rebuild); without it, the one in use (on
        the first start, a new one put in use). ``applied``: where the generation's
        applied event ids are kept (in memory when not given: then a republished id is
        caught only while this object lives)."""
        self.stores = stores
        self.embedder = embedder
        self.applied = applied or AppliedIds()
        # Each turn is indexed with the turn before it in its session (turn_context.py);
        # ``turn_context`` chooses the sides, for benchmarks.retrieval to compare them.
        self.turn_context = TurnContext(turn_context)
        self.dimensions = embedder.embedder.dimensions
        current = stores.current()
        self.generation = generation or current or new_generation()
        self.store: PointStore = stores.open(self.generation, self.dimensions)
        # Writes (the runner's, a purge's) take turns; a search takes no lock, so it waits
        # for at most one chunk of a write (see EdgeStore.upsert), not a whole batch. It
        # may see a batch half written, as it may see any event past the checkpoint: what
        # a query is promised (min_seq, consistency) is the checkpoint, written last.
        self._lock = threading.Lock()
        if current is None and generation is None:
            stores.make_current(self.generation)
        state = self.store.read_state()
        self._checkpoint = int(state.get("checkpoint", 0))
        # The tenants' own quotas travel with the checkpoint, in the state point.
        own = {t: Limits(int(m), int(b)) for t, (m, b) in state.get("quotas", {}).items()}
        self.quotas = Quotas(quota_defaults, own)
        # Points written since the engine last built its indexes (see consumers.indexer).
        self.unindexed = int(state.get("unindexed", 0))
        self._check_embedding(state)

    def _embedding(self) -> dict[str, Any]:
        return {"model": self.embedder.model, "dimensions": self.dimensions}

    def _check_embedding(self, state: dict[str, Any]) -> None:
        """Vectors of another model or size cannot be searched with this embedder (every
        new memory would be refused, every search would fail): say so, and the way out."""
        made_with: dict[str, Any] = {k: state[k] for k in ("model", "dimensions") if k in state}
        wanted = self._embedding()
        if made_with and any(made_with[k] != wanted[k] for k in made_with):
            raise EmbeddingMismatch(
                f"the vectors were made with {_describe(made_with)}, and memstream is now "
                f"set up for {_describe(wanted)}: run 'memstream replay vectors' to embed "
                "every memory again with it, or set MEMSTREAM_EMBEDDER, "
                "MEMSTREAM_EMBEDDING_MODEL and MEMSTREAM_EMBEDDING_DIM back"
            )

    def make_current(self) -> str | None:
        """Put this generation in use; the one it replaces, for the caller to drop."""
        old = self.stores.make_current(self.generation)
        return old if old != self.generation else None

    # --- checkpoint ------------------------------------------------------------------

    @property
    def checkpoint(self) -> int:
        return self._checkpoint

    def _save_checkpoint(self, seq: int) -> None:
        with self._lock:
            state = {
                "checkpoint": seq, "unindexed": self.unindexed, **self._embedding(),
                "quotas": {t: [q.memories, q.storage_bytes] for t, q in self.quotas.own.items()},
            }  # fmt: skip
            self.store.write_state(state)
        self._checkpoint = seq

    def indexed(self) -> None:
        """The engine has just built the indexes of every point this generation holds."""
        self.unindexed = 0
        self._save_checkpoint(self._checkpoint)

    def close(self) -> None:
        """Nothing to release: the stores are shared, and closed by their owner."""

    def sweep(self, now: dt.datetime) -> int:
        """Delete the points of memories whose expiry passed (searches hide them from
        that moment already)."""
        with self._lock:
            return self.store.delete_expired(now)

    def purge_tenant(self, tenant: str) -> dict[str, int]:
        """Delete the tenant's points of every generation (a rebuild's too) and its
        cached vectors; returns how many points and cached vectors went."""
        points = 0
        with self._lock:
            for generation in self.stores.generations():
                if self.stores.owe_purge(generation, tenant):
                    continue  # a copy being indexed elsewhere: purged when it is back
                points += self.stores.open(generation, self.dimensions).delete_tenant(tenant)
        self.quotas.drop(tenant)
        self._save_checkpoint(self._checkpoint)
        cached = self.embedder.cache.delete_tenant(tenant)
        self.embedder.forget_recent(tenant)
        self.applied.purge_tenant(tenant)
        self.turn_context.forget(tenant)
        return {"points": points, "cached_embeddings": cached}

    # --- apply -----------------------------------------------------------------------

    def apply(
        self,
        batch: Batch,
        upto: int = 0,
        bodies: Sequence[bytes] | None = None,
        reapplied: Mapping[int, ev.AnyEvent | ev.UnknownEvent] | None = None,
    ) -> Applied:
        """Fold the batch's memory events in order, embed what changed, write, then save
        the checkpoint. Points are idempotent, so a batch applied twice changes nothing.
        Everything an event decides (the fold, the texts, the payloads) is done before
        the first write, so an event that fails on its own leaves no effect. A failure of
        the storage raises StorageFailure with the checkpoint unchanged. ``reapplied``:
        the events the batch's quota.reapplied events name, as the stream holds them."""
        limits = dict(self.quotas.own)
        try:
            with storage_guard(self.name, _part_of):
                return self._apply(batch, upto, reapplied or {})
        except BaseException:
            # The quotas as committed: the ledgers are read again from the points.
            self.quotas.own = limits
            self.quotas.forget_usage()
            raise

    def check_storage(self) -> None:
        """The engine takes writes, the SQLite files take writes, the embedder answers."""
        with storage_guard(self.name, _part_of):
            self.store.check()
            self.embedder.cache.check()
            self.applied.check()
            try:
                self.embedder.embedder.embed([_PROBE_TEXT], within=30.0)
            except EmbeddingRefused as err:
                # It refuses a plain text too: its settings, not the event's text.
                raise StorageFailure(
                    f"the vectors projection's embedder refuses every text: {err}"
                ) from err

    def _apply(
        self, batch: Batch, upto: int, reapplied: Mapping[int, ev.AnyEvent | ev.UnknownEvent]
    ) -> Applied:
        fresh = [(s, e) for s, e in batch if s > self._checkpoint]
        last_seq = max(fresh[-1][0] if fresh else 0, upto)
        if last_seq <= self._checkpoint:
            return Applied()
        acting = [(s, e) for s, e in fresh if e.type in _APPLIES]
        fresh, new_ids = self._first_applications(acting)
        # The stored records the batch's memory events build on: each is decided against
        # the memory's revision (compare-and-set), as the history decides it.
        wanted = [(e.tenant, e.memory_id) for _, e in fresh if isinstance(e, MemoryEvent)]
        wanted += [
            (e.tenant, e.memory_id) for e in reapplied.values() if isinstance(e, MemoryEvent)
        ]
        fold = PayloadFold(self._retrieve(wanted) if wanted else {}, self.quotas, self._usage)
        finished = {(e.tenant, e.task_id) for _, e in fresh if isinstance(e, TaskEvent)}
        tasks = self._retrieve(sorted(finished), ("tasks",))["tasks"] if finished else {}
        changes: _Changes = {}
        removals: list[tuple[int, ev.ConversationTurnsRemoved]] = []
        for seq, e in fresh:
            if e.type in MEMORY_TYPES:
                fold.apply(seq, e)  # type: ignore[arg-type]
            elif isinstance(e, ev.QuotaSet):
                fold.set_quota(e)
            elif isinstance(e, ev.QuotaReapplied):
                fold.reapply(e, reapplied)
            elif isinstance(e, TaskEvent):
                key = (e.tenant, e.task_id)
                tasks[key] = changes[("tasks", *key)] = task_record(tasks.get(key), seq, e)
            elif isinstance(e, ev.ConversationTurn):
                changes[("turns", e.tenant, e.id)] = {
                    **base_record(seq, e), "ref": e.id, "session_id": e.session_id, "role": e.role,
                    "content": e.content, "tags": [],
                }  # fmt: skip
            elif isinstance(e, ev.ConversationTurnsRemoved):
                removals.append((seq, e))
                # The batch's own turns it removes never reach the engine.
                for changed, turn in list(changes.items()):
                    if (
                        changed[:2] == ("turns", e.tenant)
                        and turn
                        and removes(seq, e, turn.get("session_id"), turn["seq"])
                    ):
                        del changes[changed]
            elif isinstance(e, ev.CollabRecorded):
                changes[("collaborations", e.tenant, e.interaction_id)] = {
                    **base_record(seq, e), **scoped(e), "ref": e.interaction_id,
                    "initiator": e.initiator,
                    "participants": list(e.participants),
                    "task_description": e.task_description, "outcome": e.outcome,
                    "metadata": e.metadata, "tags": [],
                }  # fmt: skip
        for kind, records in fold.state.items():
            for (tenant, ref), payload in records.items():
                changes[(kind, tenant, ref)] = payload
        self._write(changes, removals)
        for seq, e in removals:
            self._remove_turns(seq, e)
        for tenant, keys in fold.erased.items():
            # An erased memory's texts leave the embedding cache too, every revision's.
            self.embedder.cache.delete_keys(tenant, sorted(keys))
        # After the points (a crash between re-applies the batch to the same state),
        # before the checkpoint.
        self.applied.add(self.generation, new_ids)
        self._save_checkpoint(last_seq)
        return Applied(events=len(fresh), duplicates=len(acting) - len(fresh))

    def _remove_turns(self, seq: int, e: ev.ConversationTurnsRemoved) -> None:
        """Delete the stored turns a removal names (a removal applied again finds
        nothing left to delete)."""
        self.turn_context.forget(e.tenant, e.session_id)
        where = {"kind": "turns", "session_id": e.session_id}
        turns = (from_payload(p) for p in self.store.payloads(e.tenant, where=where))
        ids = [
            point_id(e.tenant, "turns", t["ref"])
            for t in turns
            if removes(seq, e, t.get("session_id"), t["seq"])
        ]
        if ids:
            with self._lock:
                self.store.delete(ids)

    def _usage(self, tenant: str) -> list[tuple[str, int, float | None]]:
        """The tenant's stored memories as quotas count them: (memory_id, bytes, expiry)."""
        usage = []
        for kind in MEMORY_KINDS:
            for stored in self.store.payloads(tenant, where={"kind": kind}):
                p = from_payload(stored)
                usage.append((p["ref"], memory_bytes(p, kind), p.get("expires_epoch")))
        return usage

    def _first_applications(
        self, acting: list[tuple[int, Any]]
    ) -> tuple[list[tuple[int, Any]], list[tuple[str, str]]]:
        """Of the events this projection acts on, those whose (tenant, id) it has not
        applied before (past JetStream's duplicate window, or twice in the batch), and
        their ids."""
        if not acting:
            return [], []
        known = self.applied.known(self.generation, [(e.tenant, e.id) for _, e in acting])
        first: list[tuple[int, Any]] = []
        ids: list[tuple[str, str]] = []
        for seq, e in acting:
            key = (e.tenant, e.id)
            if key not in known:
                known.add(key)
                first.append((seq, e))
                ids.append(key)
        return first, ids

    def _retrieve(
        self, keys: list[Key], kinds: Sequence[str] = MEMORY_KINDS
    ) -> dict[str, dict[Key, Payload]]:
        """The stored records of these (tenant, ref) of ``kinds`` (the memories a batch
        revises or erases, the tasks it finishes), by kind."""
        found: dict[str, dict[Key, Payload]] = {kind: {} for kind in kinds}
        ids = [point_id(tenant, kind, ref) for kind in kinds for tenant, ref in keys]
        for stored in self.store.retrieve(ids):
            record = from_payload(stored)
            found[record["kind"]][(record["tenant"], record["ref"])] = record
        return found

    def _write(
        self, changes: _Changes, removals: list[tuple[int, ev.ConversationTurnsRemoved]]
    ) -> None:
        deletes: list[str] = []
        upserts: dict[str, list[tuple[str, str, Payload]]] = {}
        for (kind, tenant, ref), payload in changes.items():
            if payload is None:
                deletes.append(point_id(tenant, kind, ref))
                continue
            payload["kind"] = kind
            payload["text"] = text_of(kind, payload)
            upserts.setdefault(tenant, []).append((kind, ref, payload))
        turns = [(t, p) for t, items in upserts.items() for kind, _, p in items if kind == "turns"]
        indexed = self.turn_context.texts(self.store, turns, removals)
        # Embed first (the slow part, maybe over the network), then write under the lock.
        points = []
        for tenant, items in upserts.items():
            texts = [indexed.get(id(p), (p["text"], p["text"])) for _, _, p in items]
            for (_, _, payload), (dense, _) in zip(items, texts, strict=True):
                # Every text this memory has had, so an erase can clear their cache entries.
                key = text_key(dense).hex()
                if key not in payload.get("text_keys", ()):
                    payload["text_keys"] = [*payload.get("text_keys", ()), key]
            vectors = self.embedder.embed(tenant, [dense for dense, _ in texts])
            for (kind, ref, payload), (_, words), vector in zip(items, texts, vectors, strict=True):
                sparse = bm25_document(words)
                point = StorePoint(
                    point_id(tenant, kind, ref), vector.tolist(), sparse, to_payload(payload)
                )
                points.append(point)
        with self._lock:
            self.store.delete(deletes)
            self.store.upsert(points)
        self.unindexed += len(points)

    # --- search ----------------------------------------------------------------------

    def search(self, tenant: str, query: str, **fields: Any) -> list[Hit]:
        """The tenant's best matches for one query; ``fields`` are a SearchRequest's."""
        return self.search_many(tenant, [query], **fields)[0]

    def search_many(self, tenant: str, queries: Sequence[str], **fields: Any) -> list[list[Hit]]:
        """One list of best matches per query; the queries are embedded together."""
        vectors = embed_queries(self.embedder, tenant, queries)
        spec = SearchSpec.of(request(queries, **fields))
        return self.search_vectors(tenant, queries, vectors, spec)

    def search_vectors(
        self, tenant: str, queries: Sequence[str], vectors: Vectors, spec: SearchSpec
    ) -> list[list[Hit]]:
        """One list of best matches per query, given its embedding (a row of ``vectors``)."""
        return search_store(self.store, tenant, queries, vectors, spec)
