"""`memstream up` with nothing configured embeds by meaning (all-MiniLM-L6-v2, offline),
says so in its ready block, and an existing data dir made with `hash` is not silently
mixed with it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import run_cli, start_up

DEFAULT = {"MEMSTREAM_EMBEDDER": ""}  # the suites' `hash` taken away: nothing chosen


def _remember(url: str, text: str) -> int:
    stored = run_cli("remember", "--nats-url", url, "-t", "acme", "-a", "a1", "-d", "ops",
                     text, "--json")  # fmt: skip
    assert 0 == stored.returncode, stored.stderr
    return int(json.loads(stored.stdout)["seq"])


def test_with_nothing_configured_a_paraphrase_is_found_by_meaning(tmp_path: Path) -> None:
    up = start_up(tmp_path / "data", env=DEFAULT)
    try:
        embedder = up.info["embedder"]
        assert ("minilm", "all-MiniLM-L6-v2", 384, True) == (
            embedder["kind"], embedder["model"], embedder["dimensions"], embedder["answering"]
        )  # fmt: skip
        _remember(up.url, "the database team is in Berlin")
        seq = _remember(up.url, "queries against Postgres take seconds to return")
        found = run_cli("search", "--nats-url", up.url, "-t", "acme", "the database is slow",
                        "--mode", "dense", "--min-seq", str(seq), "--json")  # fmt: skip
        assert 0 == found.returncode, found.stderr
        texts = [hit["text"] for hit in json.loads(found.stdout)]
        # Word matching would put the team first: it shares "the database is".
        assert "queries against Postgres take seconds to return" == texts[0], texts
    finally:
        up.stop()


def test_vectors_made_with_hash_are_not_mixed_with_the_new_default(tmp_path: Path) -> None:
    """An upgrade from a memstream whose default was `hash`: up refuses in one line with
    both ways out, and keeping `hash` explicitly works as before."""
    data = tmp_path / "data"
    first = start_up(data, env={"MEMSTREAM_EMBEDDER": "hash"})
    try:
        _remember(first.url, "the deploy key rotates monthly")
    finally:
        first.stop()
    refused = run_cli("up", "--nats-port", "0", "--data-dir", str(data), env=DEFAULT)
    assert 2 == refused.returncode
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("memstream: error:")]
    assert "memstream-hash-v1-384" in line and "all-MiniLM-L6-v2" in line, line
    assert "memstream replay vectors" in line and "MEMSTREAM_EMBEDDER" in line, line
    kept = start_up(data, env={"MEMSTREAM_EMBEDDER": "hash"})
    kept.stop()
