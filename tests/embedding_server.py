"""A real OpenAI-compatible embeddings server on loopback whose health a test switches:
answering, rejecting the key (401), failing (500), or down (connections refused).

Its vectors are the hash embedder's, so they are the same in every process.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from memstream.projections.embedders import HashEmbedder

API_KEY = "sk-memstream-test"


class EmbeddingServer:
    """``mode``: "ok", an HTTP status to answer every request with (401, 500, ...), or
    "down" (nothing listens on the port). ``refuse``: texts containing it get a 400."""

    def __init__(self, dimensions: int = 64) -> None:
        self.embedder = HashEmbedder(dimensions)
        self.mode: int | str = "ok"
        self.refuse: str | None = None
        self.requests = 0
        self.fail_after: int | None = None  # answer this many more requests, then fail
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._listen()

    @property
    def env(self) -> dict[str, str]:
        """What `memstream up` needs to embed with it."""
        return {
            "MEMSTREAM_EMBEDDER": "openai",
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_BASE_URL": self.url,
            "MEMSTREAM_EMBEDDING_MODEL": "test-embedding",
            "MEMSTREAM_EMBEDDING_DIM": str(self.embedder.dimensions),
        }

    def _listen(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, reply = owner._answer(body, self.headers.get("Authorization"))
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _answer(self, body: dict[str, Any], auth: str | None) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests += 1
            mode = self.mode
            if mode == "ok" and self.fail_after is not None:
                if self.fail_after == 0:
                    mode = 401
                else:
                    self.fail_after -= 1
        texts = body["input"]
        error = {"error": {"message": f"answered {mode} by the test", "type": "test"}}
        if mode == 401 or auth != f"Bearer {API_KEY}":
            return 401, {"error": {"message": "Incorrect API key provided", "type": "auth"}}
        if mode != "ok":
            return int(mode), error
        if self.refuse is not None and any(self.refuse in t for t in texts):
            return 400, {"error": {"message": "this input is refused", "type": "invalid"}}
        vectors = self.embedder.embed(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(x) for x in v]}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": 1, "total_tokens": 1}
        return 200, {"object": "list", "data": data, "model": body["model"], "usage": usage}

    def set(self, mode: int | str) -> None:
        """Switch what it answers; "down" stops listening, anything else listens again."""
        if mode == "down" and self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        elif mode != "down" and self._server is None:
            self._listen()
        self.mode = mode

    @contextmanager
    def failing(self, mode: int | str) -> Iterator[None]:
        self.set(mode)
        try:
            yield
        finally:
            self.set("ok")

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
