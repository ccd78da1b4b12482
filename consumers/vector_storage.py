"""Where the vector projection lives: Qdrant (local mode under the data dir, or a server),
the embedder chosen by the settings, and the embedding cache."""

from __future__ import annotations

from pathlib import Path

from qdrant_client import QdrantClient

from consumers.log import get_logger
from consumers.settings import Settings
from projections.embedders import (
    Embedder,
    EmbedderError,
    HashEmbedder,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
)
from projections.embedding_cache import CachedEmbedder, EmbeddingCache
from projections.vectors import VectorProjection, new_generation

__all__ = ["VectorStorage", "make_embedder"]

log = get_logger("memstream.vectors")


def make_embedder(settings: Settings) -> Embedder:
    """The embedder the settings ask for (MEMSTREAM_EMBEDDER and friends)."""
    kind = settings.effective_embedder
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


class VectorStorage:
    """Generations of the vector collections in one Qdrant, through one client.

    Qdrant's local mode lets one client open its directory, so the live projection and a
    rebuild share this one.
    """

    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        data = Path(settings.data_dir)
        if settings.qdrant_url:
            self.client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key)
        else:
            (data / "qdrant").mkdir(parents=True, exist_ok=True)
            self.client = QdrantClient(path=str(data / "qdrant"))
        self.cache = EmbeddingCache(data / "embeddings.sqlite3")
        self.embedder = CachedEmbedder(embedder or make_embedder(settings), self.cache)

    def open_current(self) -> VectorProjection:
        projection = VectorProjection(self.client, self.embedder)
        self._drop_other_generations(keep=projection.generation)
        return projection

    def open_new(self) -> VectorProjection:
        return VectorProjection(self.client, self.embedder, generation=new_generation())

    def make_current(self, new: VectorProjection) -> None:
        for name in new.make_current():
            self.client.delete_collection(name)

    def discard(self, projection: VectorProjection) -> None:
        for name in projection.collections():
            self.client.delete_collection(name)

    def _drop_other_generations(self, keep: str) -> None:
        # Collections of a rebuild that did not finish (the process died).
        for c in self.client.get_collections().collections:
            if c.name.startswith("ms_") and not c.name.endswith(f"__{keep}"):
                log.info("removing_unfinished_rebuild", collection=c.name)
                self.client.delete_collection(c.name)

    def close(self) -> None:
        self.cache.close()
        self.client.close()
