"""The SDK when its broker goes away: closing never raises, and nothing it says reaches
the agent's stdout (which may be a protocol, like MCP over stdio)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from memstream.consumers.nats_server import NatsServer
from memstream.producers import MemoryClient
from tests.waiting import wait_for


async def test_closing_after_the_broker_died_does_not_raise(tmp_path: Path) -> None:
    """`async with` exits cleanly although the connection is reconnecting."""
    server = NatsServer(tmp_path, port=0).start()
    try:
        async with await MemoryClient.connect(server.url, tenant="acme", agent="a1") as mem:
            server.stop()
            await wait_for(lambda: not mem.nc.is_connected, what="the client noticing")
    finally:
        server.stop()
    assert mem.nc.is_closed


def test_the_sdk_writes_nothing_to_stdout(tmp_path: Path) -> None:
    """A program using the SDK, whose broker dies under it, sees nothing on stdout: the
    SDK logs through the standard library and configures nothing."""
    server = NatsServer(tmp_path / "nats", port=0).start()
    script = textwrap.dedent(
        """
        import asyncio, logging, os, signal, sys
        from memstream import MemoryClient

        seen = []

        class Seen(logging.Handler):  # counts, writes nothing; records still propagate
            def emit(self, record):
                seen.append(record.getMessage())

        logging.getLogger("memstream").addHandler(Seen())

        async def main():
            mem = await MemoryClient.connect(sys.argv[1], tenant="acme", agent="a1")
            os.kill(int(sys.argv[2]), signal.SIGKILL)
            for _ in range(1500):  # until the SDK has said the connection dropped
                if any("disconnected" in m for m in seen):
                    break
                await asyncio.sleep(0.02)
            else:
                sys.exit("the SDK never logged the disconnect")
            await mem.close()

        asyncio.run(main())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTREAM_")}
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, server.url, str(server.pid)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    finally:
        server.stop()
    assert (0, "") == (result.returncode, result.stdout), result.stderr
