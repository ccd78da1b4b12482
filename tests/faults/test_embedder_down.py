"""The embedder down: said at start, a search answers `unavailable` with the cause in
time, the history goes on, and Ctrl-C stops within 10 s (twice: at once).

Two real embedders that fail: a loopback port where nothing listens (the API
unreachable), and a loopback server that takes connections and never answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from memstream.producers import MemoryClient
from tests.conftest import pid_alive
from tests.e2e.conftest import Up, logs, run_cli, start_up
from tests.embedding_server import EmbeddingServer
from tests.faults.findable import every_memory_is_found, publish_memories
from tests.waiting import wait_for, wait_for_sync


def _openai_env(url: str) -> dict[str, str]:
    return {
        "MEMSTREAM_EMBEDDER": "openai",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": url,
        "MEMSTREAM_EMBEDDING_DIM": "64",
    }


@pytest.fixture
def nothing_listens() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class Silent:
    """Accepts connections, reads nothing, answers nothing."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()
        self.thread.join(5)


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    try:
        yield server
    finally:
        server.close()


def _remember(url: str, text: str) -> int:
    done = run_cli("remember", "--nats-url", url, "-t", "acme", "-a", "a1", "-d", "ops", text,
                   "--json")  # fmt: skip
    assert 0 == done.returncode, done.stderr
    return int(json.loads(done.stdout)["seq"])


def _stopped_within(running: Up, seconds: float) -> int:
    started = time.monotonic()
    code = running.process.wait(seconds + 5)
    assert time.monotonic() - started < seconds, logs(running.process)
    return code


def test_an_unreachable_embedder_is_named_and_search_says_why(
    tmp_path: Path, nothing_listens: str
) -> None:
    running = start_up(tmp_path / "data", env=_openai_env(nothing_listens))
    nats_pid = running.info["nats_pid"]
    try:
        embedder = running.info["embedder"]
        assert {"kind": "openai", "model": "text-embedding-3-small", "dimensions": 64,
                "answering": False} == {k: embedder[k] for k in
                                        ("kind", "model", "dimensions", "answering")}  # fmt: skip
        assert nothing_listens.removesuffix("/v1") in embedder["problem"]

        seq = _remember(running.url, "the staging database is reset nightly")
        # The history is unaffected by the embedder.
        history = run_cli("history", "--nats-url", running.url, "-t", "acme", "--min-seq",
                          str(seq), "--json")  # fmt: skip
        assert 0 == history.returncode, history.stderr
        assert 1 == len(json.loads(history.stdout)["events"])
        # A search answers in time, as an outage (exit 1) with the embedder's cause.
        started = time.monotonic()
        search = run_cli("search", "--nats-url", running.url, "-t", "acme", "staging")
        assert time.monotonic() - started < 10
        assert 1 == search.returncode
        (line,) = search.stderr.strip().splitlines()
        assert "embeddings server" in line and nothing_listens in line, line
        # The vectors say they are not advancing, and why.
        stats = run_cli("stats", "--nats-url", running.url, "-t", "acme", "--json")
        wait_for_sync(
            lambda: (
                "embed"
                in json.loads(
                    run_cli("stats", "--nats-url", running.url, "-t", "acme", "--json").stdout
                )["health"]["vectors"]
            ),
            timeout=30,
            what="the vectors to report the embedder",
        )
        assert "ok" == json.loads(stats.stdout)["health"]["history"]
        # Ctrl-C: the vectors are retrying their batch; the stop does not wait it out.
        running.process.send_signal(signal.SIGINT)
        assert 0 == _stopped_within(running, 10)
        assert not pid_alive(nats_pid)
    finally:
        running.stop()


def test_a_stop_that_cannot_finish_is_forced_within_10_s_or_at_a_second_ctrl_c(
    tmp_path: Path, silent: Silent
) -> None:
    """The embedder takes the request and never answers: the vectors' batch cannot
    finish. One Ctrl-C ends the process within 10 s anyway; a second ends it at once.
    What was in flight is not lost: the history has it after a restart."""
    data = tmp_path / "data"
    for second_signal in (False, True):
        before = len(silent.accepted)
        running = start_up(data, env=_openai_env(silent.url))
        nats_pid = running.info["nats_pid"]
        try:
            assert running.info["embedder"]["answering"] is False
            seq = _remember(running.url, f"a memory that cannot be embedded ({second_signal})")
            # A vectors' embedding request is in flight on the silent server: the one
            # after the start check. (On the second start it may be the first start's
            # memory, redelivered as the vectors start, and the new one waits behind it.)
            wait_for_sync(
                lambda before=before: len(silent.accepted) >= before + 2,
                timeout=10,
                what="a request after the start check",
            )
            running.process.send_signal(signal.SIGINT)
            if second_signal:
                with pytest.raises(subprocess.TimeoutExpired):
                    running.process.wait(1)  # still finishing: the batch is in flight
                running.process.send_signal(signal.SIGINT)
                assert 130 == _stopped_within(running, 3)
            else:
                assert 130 == _stopped_within(running, 11)
            assert "forced_stop" in logs(running.process)
            assert not pid_alive(nats_pid), "the forced stop left nats-server running"
        finally:
            running.stop()
    # Nothing acknowledged was lost by the forced stops. (The vectors never committed:
    # a hash embedder of the same size may take them over.)
    again = start_up(data, env={"MEMSTREAM_EMBEDDING_DIM": "64"})
    try:
        history = run_cli("history", "--nats-url", again.url, "-t", "acme", "--min-seq",
                          str(seq), "--json")  # fmt: skip
        assert 2 == len(json.loads(history.stdout)["events"]), history.stderr
    finally:
        again.stop()


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as reply:
            return bool(reply.status == 200)
    except urllib.error.HTTPError as err:
        if err.code == 503:
            return False
        raise


async def test_an_embedder_outage_dead_letters_nothing_and_every_memory_is_found(
    tmp_path: Path,
) -> None:
    """While memories arrive, the embeddings server rejects the API key for 20 s, fails
    with 500 for 10 s, refuses connections for 10 s, then answers again. An outage, not
    bad events: nothing is dead-lettered, /readyz says not ready in each part of it and
    ready after, and every memory is found by search."""
    server = EmbeddingServer(dimensions=64)
    running = start_up(tmp_path / "data", "--metrics-port", "0", env=server.env)
    base = running.info["metrics_url"]
    seen: dict[str, set[bool]] = {}
    phase = ["before"]  # the part of the outage /readyz is being asked in
    published: list[int] = []
    try:
        async with await MemoryClient.connect(running.url, tenant="acme", agent="a1") as mem:

            async def publish() -> None:
                for start in itertools.count(0, 5):
                    published.append(await publish_memories(mem, range(start, start + 5)))
                    await asyncio.sleep(0.2)

            async def watch() -> None:
                while True:
                    seen.setdefault(phase[0], set()).add(await asyncio.to_thread(_ready, base))
                    await asyncio.sleep(0.1)

            await wait_for(lambda: _ready(base), timeout=30, what="ready at start")
            tasks = [asyncio.create_task(publish()), asyncio.create_task(watch())]
            try:
                for part, mode, seconds in (("401", 401, 20), ("500", 500, 10),
                                            ("down", "down", 10)):  # fmt: skip
                    phase[0] = part
                    server.set(mode)
                    await asyncio.sleep(seconds)  # how long the outage lasts
                server.set("ok")
                phase[0] = "after"
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            count = len(published) * 5
            await every_memory_is_found(mem, range(count), published[-1])
            await wait_for(lambda: _ready(base), timeout=60, what="ready again")
            stats = await mem.stats(min_seq=published[-1], wait_ms=30_000)
            assert 0 == stats.dlq_count
            assert {"history": "ok", "vectors": "ok"} == stats.health
        for part in ("401", "500", "down"):
            assert False in seen[part], f"/readyz said ready all through the {part} outage"
        assert count > 300
    finally:
        running.stop()
        server.close()
