"""The embedder changes over existing vectors: up refuses in one line that says to run
replay vectors, and after that replay everything is found again."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import run_cli, start_up


def test_a_changed_embedding_size_is_caught_and_replay_is_the_way_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_up(data, env={"MEMSTREAM_EMBEDDING_DIM": "64"})
    try:
        stored = run_cli("remember", "--nats-url", first.url, "-t", "acme", "-a", "a1",
                         "-d", "d", "the deploy key rotates monthly", "--json")  # fmt: skip
        seq = json.loads(stored.stdout)["seq"]
        found = run_cli("search", "--nats-url", first.url, "-t", "acme", "deploy key",
                        "--min-seq", str(seq), "--json")  # fmt: skip
        assert 1 == len(json.loads(found.stdout)), found.stderr
    finally:
        first.stop()
    bigger = {"MEMSTREAM_EMBEDDING_DIM": "128"}
    refused = run_cli("up", "--nats-port", "0", "--data-dir", str(data), env=bigger)
    assert 2 == refused.returncode
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("memstream: error:")]
    assert "memstream-hash-v1-64 (64 dimensions)" in line
    assert "run 'memstream replay vectors'" in line
    replayed = run_cli("replay", "vectors", "--data-dir", str(data), env=bigger)
    assert 0 == replayed.returncode, replayed.stderr
    again = start_up(data, env=bigger)
    try:
        found = run_cli("search", "--nats-url", again.url, "-t", "acme", "deploy key",
                        "--min-seq", str(seq), "--json")  # fmt: skip
        assert ["the deploy key rotates monthly"] == [h["text"] for h in json.loads(found.stdout)]
    finally:
        again.stop()
