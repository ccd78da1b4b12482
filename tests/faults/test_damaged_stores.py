"""A damaged history file or vector store: up says so in one line and names the way out,
and that way out (replay, which moves the damage aside) brings everything back."""

from __future__ import annotations

import json
import os
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


def test_damaged_stores_are_one_line_and_replay_repairs_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_up(data)
    try:
        stored = run_cli("remember", "--nats-url", first.url, "-t", "acme", "-a", "a1",
                         "-d", "d", "the backup runs at midnight", "--json")  # fmt: skip
        seq = json.loads(stored.stdout)["seq"]
        assert 0 == run_cli("stats", "--nats-url", first.url, "-t", "acme",
                            "--min-seq", str(seq)).returncode  # fmt: skip
    finally:
        first.stop()

    (history_file,) = (data / "history").glob("*.duckdb")
    history_file.write_bytes(os.urandom(64 * 1024))
    refused = run_cli("up", "--nats-port", "0", "--data-dir", str(data))
    assert 1 == refused.returncode
    line = _error_line(refused)
    assert f"the history database {history_file} cannot be opened" in line
    assert f"'memstream replay history --data-dir {data}'" in line
    assert 0 == run_cli("replay", "history", "--data-dir", str(data)).returncode
    assert 1 == len(list((data / "history").glob("*.damaged-*")))

    (data / "qdrant" / "meta.json").write_text("not json")
    refused = run_cli("up", "--nats-port", "0", "--data-dir", str(data))
    assert 1 == refused.returncode
    assert "'memstream replay vectors --data-dir" in _error_line(refused)
    assert 0 == run_cli("replay", "vectors", "--data-dir", str(data)).returncode
    assert 1 == len(list(data.glob("qdrant.damaged-*")))

    again = start_up(data)
    try:
        found = run_cli("search", "--nats-url", again.url, "-t", "acme", "backup midnight",
                        "--min-seq", str(seq), "--json")  # fmt: skip
        assert ["the backup runs at midnight"] == [h["text"] for h in json.loads(found.stdout)]
        stats = run_cli("stats", "--nats-url", again.url, "-t", "acme", "--json")
        assert {"knowledge.stored": 1} == json.loads(stats.stdout)["events_by_type"]
    finally:
        again.stop()
