"""Run the ``memstream`` command as a user does: a real process, real output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from memstream.testing import RunningMemstream, start_memstream
from tests.conftest import pid_alive

_script = Path(sys.executable).parent / "memstream"
MEMSTREAM = [str(_script)] if _script.exists() else [sys.executable, "-m", "memstream"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it; ``input`` is what it reads on stdin (nothing if None)."""
    full_env = {**os.environ, "MEMSTREAM_LOG_FORMAT": "json", **(env or {})}
    full_env.pop("MEMSTREAM_NATS_URL", None) if env is None else None
    return subprocess.run(
        [*MEMSTREAM, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        **({"input": input} if input is not None else {"stdin": subprocess.DEVNULL}),
    )


@dataclass
class Up:
    process: subprocess.Popen[str]
    info: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.info["nats_url"])

    @property
    def data_dir(self) -> Path:
        return Path(self.info["data_dir"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def spawn_ready(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Run ``memstream ARGS --json``; returns once it printed its ready line (JSON)."""
    env = {**os.environ, "MEMSTREAM_LOG_FORMAT": "json", **(env or {})}
    # The log goes to a file, not a pipe nobody reads: a full pipe would block the
    # process at its next log line.
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed with the test session
    process = subprocess.Popen(
        [*MEMSTREAM, *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    _logs[process.pid] = log
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until ready, or EOF if it died
    if not line:
        process.wait(10)
        raise AssertionError(
            f"memstream {args[0]} exited with {process.returncode}: {logs(process)}"
        )
    return process, json.loads(line)


_logs: dict[int, IO[str]] = {}
_started: dict[int, RunningMemstream] = {}


def logs(process: subprocess.Popen[str]) -> str:
    """What a process started by spawn_ready or start_up has written on stderr so far."""
    if process.pid in _started:
        return _started[process.pid].log()
    log = _logs[process.pid]
    log.seek(0)
    return log.read()


def start_up(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Up:
    """``memstream up`` on a free port, as memstream.testing starts it for users' tests;
    returns once it is ready."""
    running = start_memstream(data_dir, *extra, env=env)
    _started[running.process.pid] = running
    return Up(running.process, running.info)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = start_up(tmp_path / "data")
    nats_pid = running.info["nats_pid"]
    try:
        yield running
    finally:
        running.stop()
        assert not pid_alive(nats_pid), "memstream up left its nats-server running"
