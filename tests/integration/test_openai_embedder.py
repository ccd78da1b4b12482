"""The OpenAI embedder against a real HTTP server on loopback speaking /v1/embeddings."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from memstream.projections.embedders import EmbedderError, OpenAIEmbedder
from tests.waiting import wait_for_sync


def fake_vector(text: str, dims: int = 8) -> list[float]:
    rng = np.random.default_rng(abs(hash(text)) % (2**32))
    return [float(x) for x in rng.standard_normal(dims)]


@dataclass
class Script:
    """What the server answers: scripted failures first, then embeddings."""

    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    known_models: tuple[str, ...] = ("text-embedding-3-small", "compat-model")
    api_key: str = "sk-good"


class Handler(BaseHTTPRequestHandler):
    script: Script

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        script = self.script
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        script.requests.append(request)
        error = {"error": {"message": "scripted", "type": "x", "code": None}}
        if self.path != "/v1/embeddings":
            self._send(404, error)
        elif self.headers.get("Authorization") != f"Bearer {script.api_key}":
            self._send(401, {"error": {"message": "Incorrect API key", "type": "auth"}})
        elif request["model"] not in script.known_models:
            self._send(404, {"error": {"message": "model not found", "type": "nf"}})
        elif script.failures:
            status, headers = script.failures.pop(0)
            self._send(status, error, headers)
        else:
            dims = request.get("dimensions", 8)
            data = [
                {"object": "embedding", "index": i, "embedding": fake_vector(t, dims)}
                for i, t in enumerate(request["input"])
            ]
            data.reverse()  # the API does not promise order; the embedder sorts by index
            self._send(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": request["model"],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                },
            )


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("ScriptedHandler", (Handler,), {"script": script})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def make(url: str, waits: list[float] | None = None, **kw: Any) -> OpenAIEmbedder:
    recorded = waits if waits is not None else []
    return OpenAIEmbedder(
        api_key=kw.pop("api_key", "sk-good"),
        base_url=url,
        model=kw.pop("model", "compat-model"),
        sleep=recorded.append,
        timeout=10,
        **kw,
    )


def test_large_input_is_batched_and_kept_in_order(server: tuple[str, Script]) -> None:
    """5,000 inputs go out in at least three requests of at most 2,048, rows in order."""
    url, script = server
    texts = [f"memory number {i}" for i in range(5000)]
    vectors = make(url).embed(texts)
    assert (5000, 8) == vectors.shape
    sizes = [len(r["input"]) for r in script.requests]
    assert len(sizes) >= 3 and max(sizes) <= 2048 and sum(sizes) == 5000
    expected = np.array(fake_vector(texts[4321]), dtype=np.float32)
    assert np.allclose(expected / np.linalg.norm(expected), vectors[4321], atol=1e-6)


def test_token_budget_splits_requests(server: tuple[str, Script]) -> None:
    """Long texts are split by the per-request token budget, not only by count; a text
    over the per-input limit is cut to it."""
    url, script = server
    make(url).embed(["word " * 4000] * 100)  # ~6,700 tokens each by the estimate
    assert len(script.requests) >= 3
    assert all(len(r["input"]) <= 37 for r in script.requests)
    assert 100 == sum(len(r["input"]) for r in script.requests)
    make(url).embed(["x" * 100_000])
    assert len(script.requests[-1]["input"][0].encode()) <= 24_000


def test_429_with_retry_after_and_500_are_retried(server: tuple[str, Script]) -> None:
    """A 429 waits what Retry-After says; a 500 backs off; then the batch succeeds."""
    url, script = server
    script.failures = [(429, {"Retry-After": "1"}), (500, {}), (503, {"retry-after-ms": "250"})]
    waits: list[float] = []
    embedder = make(url, waits, base_delay=0.05)
    vectors = embedder.embed(["a", "b"])
    assert (2, 8) == vectors.shape
    assert 4 == len(script.requests) == embedder.requests
    assert 3 == embedder.retries
    assert 1.0 == waits[0]
    assert 0 <= waits[1] <= 0.1  # full jitter within the second step's cap
    assert 0.25 == waits[2]


def test_gives_up_after_max_attempts(server: tuple[str, Script]) -> None:
    """A server that keeps failing is reported, with the attempts made."""
    url, script = server
    script.failures = [(500, {})] * 10
    with pytest.raises(EmbedderError, match="embedding failed after 3 attempts"):
        make(url, max_attempts=3, base_delay=0.01).embed(["a"])
    assert 3 == len(script.requests)


def test_bad_key_is_reported_clearly(server: tuple[str, Script]) -> None:
    """401 is not retried; the error says to check OPENAI_API_KEY."""
    url, script = server
    with pytest.raises(EmbedderError, match=r"rejected the API key \(401\): check OPENAI_API_KEY"):
        make(url, api_key="sk-bad").embed(["a"])
    assert 1 == len(script.requests)


def test_unknown_model_is_reported_clearly(server: tuple[str, Script]) -> None:
    """404 for a model names the model and the setting to change."""
    url, _ = server
    with pytest.raises(
        EmbedderError, match="model 'no-such-model' is not known to .*MEMSTREAM_EMBEDDING_MODEL"
    ):
        make(url, model="no-such-model").embed(["a"])


def test_dimensions_are_sent_for_v3_models_only(server: tuple[str, Script]) -> None:
    """v3 models are asked for the configured size; other models are not."""
    url, script = server
    assert (1, 256) == make(url, model="text-embedding-3-small", dimensions=256).embed(["a"]).shape
    assert 256 == script.requests[-1]["dimensions"]
    make(url, model="compat-model", dimensions=8).embed(["a"])
    assert "dimensions" not in script.requests[-1]


def test_within_bounds_the_retries_of_a_query(server: tuple[str, Script]) -> None:
    """A query's embedding gives up when the next retry would end past its time, and
    says so, rather than waiting out every attempt (the asker has stopped waiting)."""
    url, script = server
    script.failures = [(503, {"retry-after": "2"})] * 10
    waits: list[float] = []
    started = time.monotonic()
    with pytest.raises(EmbedderError, match="gave no embedding in time"):
        make(url, waits, max_attempts=8).embed(["a"], within=1.0)
    assert time.monotonic() - started < 1.0
    assert [] == waits  # the server's 2 s wait does not fit in 1 s: no retry at all
    assert 1 == len(script.requests)


def test_within_bounds_a_server_that_does_not_answer() -> None:
    """A server that takes the connection and never answers: the request's own
    timeout is cut to what is left of ``within``."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        embedder = OpenAIEmbedder(api_key="k", base_url=url, model="m", timeout=60)
        started = time.monotonic()
        with pytest.raises(EmbedderError, match="in time|attempts"):
            embedder.embed(["a"], within=1.0)
        assert time.monotonic() - started < 3.0


def test_interrupt_ends_a_backoff_at_once(server: tuple[str, Script]) -> None:
    """A stopping worker interrupts the embedder from another thread: the retry wait
    in progress ends, and the call fails saying why."""
    url, script = server
    script.failures = [(503, {"retry-after": "30"})] * 10
    embedder = OpenAIEmbedder(api_key="sk-good", base_url=url, model="compat-model")
    failure: list[BaseException] = []

    def call() -> None:
        try:
            embedder.embed(["a"])
        except EmbedderError as err:
            failure.append(err)

    thread = threading.Thread(target=call)
    thread.start()
    wait_for_sync(lambda: len(script.requests) >= 1, timeout=5)
    started = time.monotonic()
    embedder.interrupt()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2.0
    assert "stopping" in str(failure[0])
