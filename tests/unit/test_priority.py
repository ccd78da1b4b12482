"""Ingest's work runs below the searches': the threads that decode, apply and embed
events at nice 10 (or in the idle scheduling class), and the threads they start too."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from memstream.consumers.engine import EngineServer
from memstream.consumers.runner import applying
from memstream.projections.history import HistoryProjection
from memstream.projections.point_store import EdgeStores
from memstream.projections.priority import (
    PRIORITY_VAR,
    SEARCH_PRIORITY_VAR,
    lower_priority,
    priority_of,
)
from tests.unit.test_point_store import DIMS, point

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="thread priorities are Linux's"
)


def _in_thread(fn: Callable[[], object]) -> object:
    """``fn()``'s result, run in a new thread of this process's usual priority."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def _lowered() -> tuple[str, str]:
    """The priority of a thread after ``lower_priority()``, and of a thread it starts."""
    lower_priority()
    mine = priority_of(threading.get_native_id())
    return mine, str(_in_thread(lambda: priority_of(threading.get_native_id())))


def _low() -> str:
    usual = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    return f"nice {min(usual + 10, 19)}"


def test_low_is_the_default_and_passes_to_the_threads_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PRIORITY_VAR, raising=False)
    usual = priority_of(threading.get_native_id())
    assert _in_thread(_lowered) == (_low(), _low())
    assert priority_of(threading.get_native_id()) == usual  # only that thread


def test_idle_is_the_idle_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRIORITY_VAR, "IDLE")
    assert _in_thread(_lowered) == ("idle", "idle")


def test_events_are_decoded_and_applied_at_ingest_priority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PRIORITY_VAR, raising=False)

    async def where() -> str:
        return priority_of(await applying(threading.get_native_id))

    assert asyncio.run(where()) == _low()


def _threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def test_the_history_writers_database_workers_run_at_ingest_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB's workers, started as the database opens, run each batch's statements
    beside the apply thread: the writer's at nice 10 (never the idle class: reads hand
    them tasks too), a reader's at the usual priority, the opener's own unchanged."""
    monkeypatch.setenv(PRIORITY_VAR, "idle")
    usual = priority_of(threading.get_native_id())
    before = _threads()
    writer = HistoryProjection(tmp_path / "history.duckdb")
    try:
        workers = _threads() - before
        assert workers, "the database started no threads"
        assert {priority_of(t) for t in workers} == {_low()}
        assert priority_of(threading.get_native_id()) == usual
        assert writer.con.execute("SELECT count(*) FROM events").fetchone() == (0,)
    finally:
        writer.close()
    before = _threads()
    reader = HistoryProjection(tmp_path / "history.duckdb", read_only=True)
    try:
        workers = _threads() - before
        assert workers
        assert {priority_of(t) for t in workers} == {usual}
    finally:
        reader.close()


def test_a_database_that_cannot_be_opened_says_why_in_the_callers_thread(
    tmp_path: Path,
) -> None:
    (tmp_path / "history.duckdb").write_bytes(b"not a database at all" * 100)
    with pytest.raises(duckdb.Error):
        HistoryProjection(tmp_path / "history.duckdb")


def test_the_engine_copies_a_shard_for_an_index_build_at_ingest_priority(
    tmp_path: Path,
) -> None:
    """The copy an index build starts from goes through the page cache for seconds at a
    large shard: in the engine process, at the build's priority, below the searches'."""
    stores = EdgeStores(tmp_path / "shards")
    store = stores.open("g1", DIMS)
    store.upsert([point("acme", "k1", "a memory to copy")])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server = EngineServer(stores, listener, "g1")
    copied_at: list[str] = []
    copy_files = store.copy_files

    def watched(target: Path) -> None:
        copied_at.append(priority_of(threading.get_native_id()))
        copy_files(target)

    store.copy_files = watched  # type: ignore[method-assign]
    try:
        job = server._write(["copy_to", "g1", str(tmp_path / "copy")])
        waiting = next(job)
        assert waiting is not None
        waiting.result(timeout=30)
        with pytest.raises(StopIteration):
            next(job)
        assert copied_at == [_low()]
        assert priority_of(threading.get_native_id()) == priority_of(os.getpid())
        assert (tmp_path / "copy" / "edge_config.json").exists()
    finally:
        server.close()
        listener.close()


_PR_CAPBSET_DROP, _CAP_SYS_NICE = 24, 23  # linux/prctl.h, linux/capability.h
_RAISED = """
import json, threading
from memstream.projections.priority import (
    ingests_turn, lower_priority, priority_of, raise_search_priority,
)

said = raise_search_priority()
out = {"said": said, "main": priority_of(threading.get_native_id())}
with ingests_turn():
    out["ingests_turn"] = priority_of(threading.get_native_id())
out["after_it"] = priority_of(threading.get_native_id())

def started() -> None:
    out["started"] = priority_of(threading.get_native_id())

def lowered() -> None:
    lower_priority("low")
    out["lowered"] = priority_of(threading.get_native_id())

for fn in (started, lowered):
    thread = threading.Thread(target=fn)
    thread.start()
    thread.join()
print(json.dumps(out))
"""


def _searchers_start(priority: str | None, as_nobody: bool = False) -> dict[str, str | None]:
    """What a new process (as the searcher's and the engine's start) says and runs at
    with ``MEMSTREAM_SEARCH_PRIORITY=priority``: its own thread, that thread in ingest's
    turn (as the engine's for a write) and after it, a thread it starts, a thread it
    lowers to ingest's. ``as_nobody``: a user that may not raise a priority."""
    env = {k: v for k, v in os.environ.items() if k != SEARCH_PRIORITY_VAR}
    if priority is not None:
        env[SEARCH_PRIORITY_VAR] = priority

    def unprivileged() -> None:
        # No nice limit to raise within, and no CAP_SYS_NICE after the exec, even as root
        # (dropped from the bounding set; a user without it cannot drop it, nor has it).
        resource.setrlimit(resource.RLIMIT_NICE, (0, resource.getrlimit(resource.RLIMIT_NICE)[1]))
        ctypes.CDLL(None, use_errno=True).prctl(_PR_CAPBSET_DROP, _CAP_SYS_NICE, 0, 0, 0)

    done = subprocess.run(
        [sys.executable, "-c", _RAISED],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=unprivileged if as_nobody else None,
    )
    assert 0 == done.returncode, done.stderr
    return dict(json.loads(done.stdout))


def _usual() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _running_at(searches: int) -> dict[str, str | None]:
    """What ``_searchers_start`` finds with its searches at nice ``searches``: ingest's
    turn at memstream's (this process's) priority, a lowered thread 10 above it."""
    usual = _usual()
    return {
        "main": f"nice {searches}",
        "ingests_turn": f"nice {usual}",
        "after_it": f"nice {searches}",
        "started": f"nice {searches}",
        "lowered": f"nice {min(usual + 10, 19)}",
    }


@pytest.mark.skipif(
    os.geteuid() != 0 and resource.getrlimit(resource.RLIMIT_NICE)[0] < 20 - (_usual() - 10),
    reason="raising a priority needs root or a nice limit (RLIMIT_NICE) of 30",
)
def test_high_search_priority_raises_the_process_and_keeps_ingest_below_memstreams() -> None:
    """The searcher's and the engine's process at nice 10 below memstream's, and the
    threads it starts; the engine's thread back at memstream's for ingest's turn (its
    writes) and raised again after it; a thread it lowers to ingest's runs at nice 10
    above memstream's, not above the raised one."""
    raised = max(_usual() - 10, -20)
    assert {"said": None, **_running_at(raised)} == _searchers_start("HIGH")


def test_the_usual_search_priority_changes_nothing() -> None:
    assert {"said": None, **_running_at(_usual())} == _searchers_start(None)


def test_high_search_priority_where_it_is_not_allowed_says_why_and_keeps_the_usual() -> None:
    out = _searchers_start("high", as_nobody=True)
    said = out.pop("said")
    assert said is not None
    assert said.startswith("MEMSTREAM_SEARCH_PRIORITY=high: this process may not raise")
    assert "CAP_SYS_NICE" in said and "LimitNICE=" in said and "usual priority" in said
    assert _running_at(_usual()) == out
