"""Where each projection lives, and how a rebuilt one replaces it.

The projections are handed their storage: a DuckDB file for the history; a Qdrant client,
an embedder and an embedding cache for the vectors. This module builds them; only the
``from_settings`` functions read the settings.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Protocol, TypeVar

import duckdb
from qdrant_client import QdrantClient

from memstream.consumers.log import get_logger
from memstream.consumers.settings import Settings
from memstream.projections.applied_ids import AppliedIds
from memstream.projections.base import Projection
from memstream.projections.embedders import (
    Embedder,
    EmbedderError,
    HashEmbedder,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
)
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.files import ProjectionFiles
from memstream.projections.history import HistoryProjection
from memstream.projections.point_store import (
    EdgeStore,
    EdgeStores,
    PointStores,
    ServerStores,
    new_generation,
)
from memstream.projections.point_store.remote import Engines, RemoteStore, RemoteStores
from memstream.projections.quotas import NO_LIMITS, Limits
from memstream.projections.vectors import VectorProjection
from memstream.schemas.errors import MemstreamError
from memstream.schemas.partitions import WHOLE, Partition

__all__ = [
    "DamagedStore",
    "HistoryStorage",
    "Storage",
    "StoreInUse",
    "VectorStorage",
    "embedder_from_settings",
    "open_history",
    "vector_storage_from_settings",
]

log = get_logger("memstream.storage")

P = TypeVar("P", bound=Projection)


class DamagedStore(MemstreamError):
    """A projection's files cannot be opened: damaged, or not writable."""

    code = "unavailable"


class StoreInUse(MemstreamError):
    """Another process (not memstream: a second memstream is refused before it opens
    anything) holds a projection's files."""

    code = "unavailable"


_DUCKDB_LOCK = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


def _in_use(what: str, path: Path, err: BaseException) -> StoreInUse | None:
    """The store is locked by another process, if that is what ``err`` says: never to
    be taken for damage (moving a file aside under its holder would lose nothing of
    ours, but would say so wrongly)."""
    text = str(err)
    found = _DUCKDB_LOCK.search(text)
    if found:
        return StoreInUse(
            f"the {what} {path} is in use by another process (PID {found['pid']}, "
            f"{found['program']}): stop it, then start memstream again; DuckDB lets one "
            "process write a file (read it meanwhile with 'memstream sql')"
        )
    if "already accessed by another instance" in text or (
        "Can't init WAL" in text and "WouldBlock" in text
    ):
        return StoreInUse(
            f"the {what} {path} is in use by another process: stop it, then start memstream "
            "again; the embedded engine lets one process open it (several processes need a "
            "Qdrant server: MEMSTREAM_QDRANT_URL)"
        )
    return None


def _damaged(
    what: str, path: Path, err: BaseException, projection: str, data_dir: Path
) -> DamagedStore | StoreInUse:
    in_use = _in_use(what, path, err)
    if in_use is not None:
        return in_use
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return DamagedStore(
            f"the {what} {path} cannot be opened ({reason}): free some space on its disk, "
            "then start memstream again"
        )
    if not os.access(path if path.is_dir() else path.parent, os.W_OK):
        return DamagedStore(
            f"the {what} {path} is not writable ({reason}): give memstream write access to it"
        )
    return DamagedStore(
        f"the {what} {path} cannot be opened ({reason}): rebuild it from the stream with "
        f"'memstream replay {projection} --data-dir {data_dir}' (the damaged one is moved "
        "aside, not deleted)"
    )


def set_aside(path: Path) -> Path:
    """Move a damaged store out of the way (kept for a post-mortem); its new name."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    path.rename(aside)
    log.warning("damaged_store_set_aside", path=str(path), aside=str(aside))
    return aside


class Storage(Protocol[P]):
    """Where a projection lives and how a rebuilt one replaces it."""

    name: str

    def open_current(self) -> P: ...

    def open_new(self) -> P: ...

    def make_current(self, new: P) -> None:
        """Make ``new`` the projection in use (atomically) and drop the one before it.

        The caller has closed the one before it.
        """
        ...

    def discard(self, projection: P) -> None: ...

    @property
    def failing(self) -> str | None:
        """An outside service the projection needs failing right now (an embedder whose
        retries are under way), before the apply itself gives up; None when all is well."""
        ...

    def interrupt(self) -> None:
        """The process is stopping: end waits on outside services (an embedder's
        retries) so that the batch in flight fails now instead of at its timeout."""
        ...

    def close(self) -> None:
        """Release what the storage holds, after its projections are closed."""
        ...


class HistoryStorage:
    """DuckDB files under ``<data dir>/history``, switched by the CURRENT pointer."""

    name = "history"

    def __init__(self, data_dir: str | Path, quota_defaults: Limits = NO_LIMITS) -> None:
        """``quota_defaults``: the hard quotas of a tenant that has set none."""
        self.data_dir = Path(data_dir)
        self.files = ProjectionFiles(self.data_dir / "history", "history", ".duckdb")
        self.quota_defaults = quota_defaults

    def open_current(self) -> HistoryProjection:
        for stale in self.files.leftovers():
            # A rebuild that did not finish (the process died): nobody will use it.
            log.info("removing_unfinished_rebuild", path=str(stale))
            self.files.remove(stale)
        path = self.files.current_or_new()
        try:
            return HistoryProjection(path, quota_defaults=self.quota_defaults)
        except (duckdb.Error, OSError) as err:
            raise _damaged("history database", path, err, "history", self.data_dir) from None

    def set_aside_if_damaged(self) -> Path | None:
        """Before a rebuild with nothing running: a current file that cannot be opened
        is moved aside (the rebuild replaces it); its new name."""
        path = self.files.current()
        if path is None or not path.exists():
            return None
        try:
            HistoryProjection(path, read_only=True).close()
        except (duckdb.Error, OSError) as err:
            in_use = _in_use("history database", path, err)
            if in_use is not None:
                raise in_use from None
            return set_aside(path)
        return None

    def open_new(self) -> HistoryProjection:
        return HistoryProjection(self.files.new_path(), quota_defaults=self.quota_defaults)

    def make_current(self, new: HistoryProjection) -> None:
        old = self.files.make_current(new.path)
        if old is not None and old != new.path:
            self.files.remove(old)

    def discard(self, projection: HistoryProjection) -> None:
        projection.close()
        self.files.remove(projection.path)

    failing = None  # DuckDB is in this process: its failures come from the apply

    def interrupt(self) -> None:
        pass  # DuckDB is in this process: nothing outside to wait for

    def close(self) -> None:
        pass


def open_history(data_dir: str | Path, *, read_only: bool = False) -> HistoryProjection | None:
    """The history database in use under ``data_dir``, opened (for a command that runs
    while no memstream does), or None when there is none yet. One that cannot be opened
    is a DamagedStore or a StoreInUse naming the way out, never a DuckDB traceback."""
    path = HistoryStorage(data_dir).files.current()
    if path is None or not path.exists():
        return None
    try:
        return HistoryProjection(path, read_only=read_only)
    except (duckdb.Error, OSError) as err:
        raise _damaged("history database", path, err, "history", Path(data_dir)) from None


class VectorStorage:
    """Generations of the vector points in one engine (Qdrant Edge under the data dir,
    or a Qdrant server), shared by the live projection and a rebuild. The storage owns
    (and closes) the engine, the embedding cache and the applied ids.

    ``shards``: the Edge directory, so that a shard that cannot be opened is reported as
    a damaged store naming the way out (a server's failures are outages instead).
    ``legacy``: vectors of an earlier memstream (Qdrant local mode) that the first
    generation made here replaces, removed once it is in use.
    """

    name = "vectors"

    def __init__(
        self,
        stores: PointStores,
        embedder: Embedder,
        cache: EmbeddingCache,
        applied: AppliedIds | None = None,
        *,
        shards: Path | None = None,
        legacy: Path | None = None,
        quota_defaults: Limits = NO_LIMITS,
    ) -> None:
        self.stores = stores
        self.quota_defaults = quota_defaults
        self.cache = cache
        self.embedder = CachedEmbedder(embedder, cache)
        self.applied = applied or AppliedIds()
        self.shards = shards
        self.legacy = legacy

    def open_current(self) -> VectorProjection:
        try:
            projection = VectorProjection(
                self.stores, self.embedder, applied=self.applied, quota_defaults=self.quota_defaults
            )
        except MemstreamError:
            raise
        except Exception as err:  # the engine raises what its files make it raise
            if self.shards is None:
                raise
            data_dir = self.shards.parent
            raise _damaged("vector store", self.shards, err, "vectors", data_dir) from None
        self._drop_other_generations(keep=projection.generation)
        self.applied.keep_only(projection.generation)
        return projection

    def open_new(self) -> VectorProjection:
        return VectorProjection(
            self.stores,
            self.embedder,
            generation=new_generation(),
            applied=self.applied,
            quota_defaults=self.quota_defaults,
        )

    def make_current(self, new: VectorProjection) -> None:
        old = new.make_current()
        if old is not None:
            self.stores.drop(old)
        self.applied.keep_only(new.generation)
        if self.legacy is not None and self.legacy.exists():
            shutil.rmtree(self.legacy)
            log.info("earlier_vectors_removed", path=str(self.legacy))

    def discard(self, projection: VectorProjection) -> None:
        self.stores.drop(projection.generation)
        self.applied.drop(projection.generation)

    def copy_for_index(self, projection: VectorProjection) -> Path:
        """A new generation that is a copy of ``projection``'s (its writes held back by
        the caller), for the engine to index in another process; its directory."""
        assert isinstance(self.stores, EdgeStores | RemoteStores)
        assert isinstance(projection.store, EdgeStore | RemoteStore)
        generation = new_generation()
        path = self.stores.path(generation)
        projection.store.copy_to(path)
        self.applied.copy(projection.generation, generation)
        # Until it is back, this process neither opens nor purges the copy: the tenants
        # purged meanwhile are purged from it on its return.
        self.stores.lend(generation)
        return path

    def open_indexed(self, path: Path) -> VectorProjection:
        """The generation copied to ``path``, its indexes built (and the points written
        after counted, by the process that built them): to catch up and swap in."""
        assert isinstance(self.stores, EdgeStores | RemoteStores)
        generation = path.name.removeprefix("shard-")
        purged = self.stores.take_back(generation)
        projection = VectorProjection(
            self.stores,
            self.embedder,
            generation=generation,
            applied=self.applied,
            quota_defaults=self.quota_defaults,
        )
        for tenant in purged:
            projection.store.delete_tenant(tenant)
        return projection

    def discard_copy(self, path: Path) -> None:
        """A copy whose indexing failed or was abandoned."""
        assert isinstance(self.stores, EdgeStores | RemoteStores)
        self.stores.take_back(path.name.removeprefix("shard-"))
        shutil.rmtree(path, ignore_errors=True)

    def _drop_other_generations(self, keep: str) -> None:
        # Generations of a rebuild that did not finish (the process died).
        for generation in self.stores.generations():
            if generation != keep:
                log.info("removing_unfinished_rebuild", generation=generation)
                self.stores.drop(generation)

    @property
    def failing(self) -> str | None:
        return self.embedder.failing

    def interrupt(self) -> None:
        self.embedder.interrupt()

    def close(self) -> None:
        self.cache.close()
        self.applied.close()
        self.stores.close()


def embedder_from_settings(settings: Settings) -> Embedder:
    """The embedder the settings ask for (MEMSTREAM_EMBEDDER and friends)."""
    kind = settings.effective_embedder
    if kind == "minilm":
        from memstream.projections.minilm import MiniLMEmbedder

        path = Path(settings.embedding_model) if settings.embedding_model else None
        return MiniLMEmbedder(path, threads=settings.embedding_threads)
    if kind == "hash":
        return HashEmbedder(settings.embedding_dim or 384)
    if kind == "openai":
        if not settings.openai_api_key:
            raise EmbedderError("MEMSTREAM_EMBEDDER=openai needs OPENAI_API_KEY")
        return OpenAIEmbedder(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            model=settings.embedding_model or "text-embedding-3-small",
            dimensions=settings.embedding_dim,
        )
    if not settings.embedding_model:
        raise EmbedderError(
            "MEMSTREAM_EMBEDDER=sentence-transformers needs MEMSTREAM_EMBEDDING_MODEL: the "
            "path of a model on disk"
        )
    return SentenceTransformerEmbedder(settings.embedding_model)


class EarlierVectors(MemstreamError):
    """The vectors under the data dir were written by an earlier memstream."""

    code = "unavailable"


def _stores(
    settings: Settings,
    rebuilding: bool,
    partition: Partition = WHOLE,
    engine: Engines | None = None,
) -> tuple[PointStores, Path | None, Path | None]:
    """The engine the settings ask for; with Edge, its directory and any vectors of an
    earlier memstream to replace. ``rebuilding``: a damaged shard in use is moved aside
    (the rebuild replaces it); otherwise opening it reports the damage. ``engine``: Edge
    is reached in processes of its own (:mod:`consumers.engine`), found through it."""
    if settings.qdrant_url:
        client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key)
        return ServerStores(client, partition.namespace), None, None
    data_dir = settings.data_path
    shards, legacy = data_dir / "vectors", data_dir / "qdrant"
    if legacy.exists() and not rebuilding:
        raise EarlierVectors(
            f"the vectors under {legacy} were written by an earlier memstream (Qdrant's "
            "local mode): rebuild them from the stream into the new engine with "
            f"'memstream replay vectors --data-dir {data_dir}'"
        )
    if engine is not None:
        return RemoteStores(shards, engine), shards, legacy if legacy.exists() else None
    stores = EdgeStores(shards)
    current = stores.current()
    if rebuilding and current is not None and (shards / f"shard-{current}").exists():
        try:
            stores.open(current, 1)
        except Exception as err:  # the engine raises what its files make it raise
            damage = _damaged("vector store", shards, err, "vectors", data_dir)
            if isinstance(damage, StoreInUse):
                raise damage from None
            set_aside(shards / f"shard-{current}")
        finally:
            stores.close()
    return stores, shards, legacy if legacy.exists() else None


def _cache(settings: Settings) -> EmbeddingCache:
    return EmbeddingCache(settings.data_path / "embeddings.sqlite3")


def vector_storage_from_settings(
    settings: Settings,
    embedder: Embedder | None = None,
    *,
    set_aside_damaged: bool = False,
    partition: Partition = WHOLE,
    engine: Engines | None = None,
) -> VectorStorage:
    """The vectors in the settings' engine (Qdrant Edge under the data dir, or a Qdrant
    server). ``set_aside_damaged``: for a rebuild, a shard that cannot be opened is moved
    aside, and vectors of an earlier memstream are replaced; otherwise each is one line
    naming the way out. ``partition``: whose vectors (on a Qdrant server, each partition
    has collections of its own; under a data dir, the data dir is the partition's).
    ``engine``: Qdrant Edge's own processes, which the caller starts and watches
    (:class:`consumers.engine_process.EngineProcesses`)."""
    stores, shards, legacy = _stores(settings, set_aside_damaged, partition, engine)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    return VectorStorage(
        stores,
        embedder or embedder_from_settings(settings),
        _cache(settings),
        AppliedIds(settings.data_path / "vectors-applied.sqlite3"),
        shards=shards,
        legacy=legacy,
        quota_defaults=settings.quota_defaults,
    )
