"""A damaged history file or vector store: up says so in one line and names the way out,
and that way out (replay, which moves the damage aside) brings everything back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import run_cli, start_up


def _error_line(result: object) -> str:
    lines = [
        line
        for line in result.stderr.splitlines()  # type: ignore[attr-defined]
        if line.startswith("memstream:")
    ]
    assert 1 == len(lines), result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in result.stderr  # type: ignore[attr-defined]
    return lines[0]


def _one_memory_stored(data: Path) -> int:
    """A deployment on ``data`` holding one memory in both projections, stopped."""
    first = start_up(data)
    try:
        stored = run_cli("remember", "--nats-url", first.url, "-t", "acme", "-a", "a1",
                         "-d", "d", "the backup runs at midnight", "--json")  # fmt: skip
        seq = int(json.loads(stored.stdout)["seq"])
        assert 0 == run_cli("search", "--nats-url", first.url, "-t", "acme", "backup",
                            "--min-seq", str(seq)).returncode  # fmt: skip
    finally:
        first.stop()
    return seq


def _found_again(data: Path, seq: int) -> None:
    """Started again, memstream finds the memory _one_memory_stored stored."""
    again = start_up(data)
    try:
        found = run_cli("search", "--nats-url", again.url, "-t", "acme", "backup midnight",
                        "--min-seq", str(seq), "--json")  # fmt: skip
        assert ["the backup runs at midnight"] == [h["text"] for h in json.loads(found.stdout)]
    finally:
        again.stop()


def test_damaged_stores_are_one_line_and_replay_repairs_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seq = _one_memory_stored(data)

    (history_file,) = (data / "history").glob("*.duckdb")
    history_file.write_bytes(os.urandom(64 * 1024))
    refused = run_cli("up", "--nats-port", "0", "--data-dir", str(data))
    assert 1 == refused.returncode
    line = _error_line(refused)
    assert f"the history database {history_file} cannot be opened" in line
    assert f"'memstream replay history --data-dir {data}'" in line
    assert 0 == run_cli("replay", "history", "--data-dir", str(data)).returncode
    assert 1 == len(list((data / "history").glob("*.damaged-*")))

    (shard,) = (data / "vectors").glob("shard-*")
    (shard / "edge_config.json").write_text("not json")
    refused = run_cli("up", "--nats-port", "0", "--data-dir", str(data))
    assert 1 == refused.returncode
    line = _error_line(refused)
    assert f"the vector store {data / 'vectors'} cannot be opened" in line
    assert "'memstream replay vectors --data-dir" in line
    assert 0 == run_cli("replay", "vectors", "--data-dir", str(data)).returncode
    assert 1 == len(list((data / "vectors").glob("shard-*.damaged-*")))

    again = start_up(data)
    try:
        found = run_cli("search", "--nats-url", again.url, "-t", "acme", "backup midnight",
                        "--min-seq", str(seq), "--json")  # fmt: skip
        assert ["the backup runs at midnight"] == [h["text"] for h in json.loads(found.stdout)]
        stats = run_cli("stats", "--nats-url", again.url, "-t", "acme", "--json")
        assert {"knowledge.stored": 1} == json.loads(stats.stdout)["events_by_type"]
    finally:
        again.stop()


_HOLD = """
import sys, duckdb
from qdrant_edge import EdgeShard
kind, path = sys.argv[1], sys.argv[2]
held = duckdb.connect(path) if kind == "history" else EdgeShard.load(path)
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def _hold(kind: str, path: Path) -> subprocess.Popen[str]:
    """Another program (not memstream) with a store of the data dir open."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, kind, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and "holding" == holder.stdout.readline().strip()
    return holder


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(10)


def test_a_store_held_by_another_program_is_named_not_taken_for_damage(tmp_path: Path) -> None:
    """A DuckDB file or the local vector store open in another program: up and the
    commands that open the files say who holds it, in one line, and replay does not
    move a held file aside as if it were damaged."""
    data = tmp_path / "data"
    seq = _one_memory_stored(data)
    (history_file,) = (data / "history").glob("*.duckdb")

    holder = _hold("history", history_file)
    try:
        for command in (["up", "--nats-port", "0"], ["replay", "history"], ["sql", "SELECT 1"]):
            refused = run_cli(*command, "--data-dir", str(data))
            assert 1 == refused.returncode, command
            line = _error_line(refused)
            assert f"the history database {history_file} is in use by another process" in line
            assert f"(PID {holder.pid}," in line
        assert [] == list((data / "history").glob("*.damaged-*"))
    finally:
        _release(holder)

    (shard,) = (data / "vectors").glob("shard-*")
    holder = _hold("vectors", shard)
    try:
        for command in (["up", "--nats-port", "0"], ["replay", "vectors"]):
            refused = run_cli(*command, "--data-dir", str(data))
            assert 1 == refused.returncode, command
            line = _error_line(refused)
            assert f"the vector store {data / 'vectors'} is in use by another process" in line
        assert [] == list((data / "vectors").glob("*.damaged-*"))
    finally:
        _release(holder)

    _found_again(data, seq)


def test_vectors_of_an_earlier_memstream_are_rebuilt_by_replay(tmp_path: Path) -> None:
    """A data dir whose vectors an earlier memstream wrote with Qdrant's local mode:
    up says so in one line and names replay, which rebuilds them into the engine of
    this one from the stream and removes the old ones."""
    from qdrant_client import QdrantClient, models

    data = tmp_path / "data"
    seq = _one_memory_stored(data)
    shutil.rmtree(data / "vectors")
    earlier = QdrantClient(path=str(data / "qdrant"))  # as the earlier memstream left it
    earlier.create_collection(
        "ms_knowledge_acme__20261101000000abcd",
        vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE),
    )
    earlier.close()
    refused = run_cli("up", "--nats-port", "0", "--data-dir", str(data))
    assert 1 == refused.returncode
    line = _error_line(refused)
    assert f"the vectors under {data / 'qdrant'} were written by an earlier memstream" in line
    assert f"'memstream replay vectors --data-dir {data}'" in line
    replayed = run_cli("replay", "vectors", "--data-dir", str(data))
    assert 0 == replayed.returncode, replayed.stderr
    assert not (data / "qdrant").exists()
    _found_again(data, seq)
