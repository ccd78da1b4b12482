"""A real memstream for your agents' tests: ``memstream up`` in a process of its own, with
nats-server from the wheel on a free port and a temporary data dir, stopped by its pid.

As a context manager::

    from memstream.testing import running_memstream

    with running_memstream() as ms:
        with ms.sync_client(tenant="acme", agent="tester") as mem:
            ack = mem.store_knowledge("the cache is warmed at 6", domain="ops")
            assert mem.search("cache", min_seq=ack.seq, wait_ms=10_000)

Or as pytest fixtures, with ``pytest_plugins = ["memstream.testing"]`` in a conftest:
``memstream_server`` (one memstream for the test module) and ``memstream_client`` (a
``SyncMemoryClient`` on it, tenant ``test``, for one test). Needs the server extra.

Nothing here touches a memstream you run yourself: never the default port 4222, never
``./.memstream``. It embeds with ``hash`` unless told otherwise, so no model is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from memstream.producers import MemoryClient, SyncMemoryClient

__all__ = ["MemstreamNotStarted", "RunningMemstream", "running_memstream", "start_memstream"]


class MemstreamNotStarted(RuntimeError):
    """``memstream up`` exited before it said it was ready; the message holds its log."""


@dataclass
class RunningMemstream:
    """A ``memstream up`` started for a test."""

    process: subprocess.Popen[str]
    info: dict[str, Any]
    data_dir: Path
    _log: IO[str] = field(repr=False)

    @property
    def url(self) -> str:
        """The NATS URL its clients connect to."""
        return str(self.info["nats_url"])

    async def client(
        self, tenant: str = "test", agent: str = "tester", **options: Any
    ) -> MemoryClient:
        """A connected async client (close it, or use it with ``async with``)."""
        return await MemoryClient.connect(self.url, tenant=tenant, agent=agent, **options)

    def sync_client(
        self, tenant: str = "test", agent: str = "tester", **options: Any
    ) -> SyncMemoryClient:
        """A connected blocking client (close it, or use it with ``with``)."""
        return SyncMemoryClient.connect(self.url, tenant=tenant, agent=agent, **options)

    def log(self) -> str:
        """What it has written on stderr so far (JSON lines)."""
        self._log.seek(0)
        return self._log.read()

    def stop(self, timeout: float = 30.0) -> int:
        """Stop it (SIGTERM, then SIGKILL after ``timeout``); its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self._log.close()


def start_memstream(
    data_dir: str | Path, *args: str, env: Mapping[str, str] | None = None
) -> RunningMemstream:
    """Start ``memstream up`` on a free port with ``data_dir``; returns once it is ready.
    ``args`` go to ``memstream up``; ``env`` adds variables (``MEMSTREAM_*``)."""
    # None of the caller's own MEMSTREAM_* settings (a metrics port, an embedder, a
    # tenant's credentials meant for the memstream they run): only what ``env`` says.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTREAM_")}
    full_env = {**inherited, "MEMSTREAM_EMBEDDER": "hash", "MEMSTREAM_LOG_FORMAT": "json"}
    full_env.update(env or {})
    # The log goes to a file, not a pipe nobody reads: a full pipe would block it.
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by stop()
    process = subprocess.Popen(
        [sys.executable, "-m", "memstream", "up", "--nats-port", "0",
         "--data-dir", str(data_dir), *args, "--json"],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=full_env,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()  # the ready line, or EOF if it died
    if not line:
        process.wait(30)
        log.seek(0)
        text = log.read()
        log.close()
        raise MemstreamNotStarted(
            f"memstream up exited with {process.returncode} before it was ready: {text[-2000:]}"
        )
    return RunningMemstream(process, json.loads(line), Path(data_dir), log)


@contextlib.contextmanager
def running_memstream(
    data_dir: str | Path | None = None, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[RunningMemstream]:
    """A memstream for the block: in ``data_dir``, or a temporary one removed after."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="memstream-test-"))
        running = start_memstream(data_dir, *args, env=env)
        stack.callback(running.stop)
        yield running


try:
    import pytest
except ImportError:  # the fixtures need pytest; the context manager does not
    pass
else:

    @pytest.fixture(scope="module")
    def memstream_server(
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Iterator[RunningMemstream]:
        """One memstream for the test module, in a temporary data dir."""
        with running_memstream(tmp_path_factory.mktemp("memstream")) as running:
            yield running

    @pytest.fixture
    def memstream_client(memstream_server: RunningMemstream) -> Iterator[SyncMemoryClient]:
        """A blocking client of ``memstream_server``, tenant ``test``, agent ``tester``
        (needs no async test plugin; in an async test, ``await memstream_server.client()``
        gives an async one)."""
        with memstream_server.sync_client() as client:
            yield client
