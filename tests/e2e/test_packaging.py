"""`pip install memstream` as an agent's machine gets it: the built wheel, no extras, in a
fresh virtual environment, publishing and querying through ``memstream.MemoryClient``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Up

ROOT = Path(__file__).resolve().parents[2]
# What the server extra brings and the SDK must not.
SERVER_ONLY = ("duckdb", "pyarrow", "qdrant_client", "openai", "structlog", "click", "faststream")


def _run(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Python of a fresh venv with the built wheel installed, without extras."""
    where = tmp_path_factory.mktemp("wheel")
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--quiet", "-w", where / "dist", ROOT,
    )  # fmt: skip
    assert 0 == built.returncode, built.stderr
    (wheel,) = (where / "dist").glob("memstream-*.whl")
    made = _run(sys.executable, "-m", "venv", where / "venv")
    assert 0 == made.returncode, made.stderr
    python = where / "venv" / "bin" / "python"
    installed = _run(python, "-m", "pip", "install", "--quiet", wheel)
    assert 0 == installed.returncode, installed.stderr
    yield python


def test_the_wheel_without_extras_installs_the_sdk_alone(sdk_python: Path) -> None:
    """nats-py and msgspec come along; nothing the workers need does."""
    code = (
        "import importlib.util, json, sys;"
        f"print(json.dumps([m for m in {list(SERVER_ONLY)!r} if importlib.util.find_spec(m)]))"
    )
    found = _run(sdk_python, "-c", code)
    assert 0 == found.returncode, found.stderr
    assert [] == json.loads(found.stdout)


def test_publish_and_query_through_the_public_name(sdk_python: Path, up: Up) -> None:
    """An agent with only the SDK stores a memory and finds it with a query."""
    script = textwrap.dedent(
        """
        import asyncio, json, sys
        from memstream import MemoryClient, SyncMemoryClient

        async def main():
            async with await MemoryClient.connect(sys.argv[1], tenant="acme", agent="a1") as mem:
                ack = await mem.store_knowledge(
                    "wheels carry the SDK alone", domain="packaging", memory_id="k-wheel"
                )
                hits = await mem.search("wheels carry the SDK", min_seq=ack.seq, wait_ms=20000)
                return ack.seq, [h.memory_id for h in hits]

        seq, found = asyncio.run(main())
        with SyncMemoryClient.connect(sys.argv[1], tenant="acme", agent="a1") as mem:
            stats = mem.stats(min_seq=seq, wait_ms=20000)
        print(json.dumps({"seq": seq, "found": found, "by_type": stats.events_by_type}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTREAM_")}
    result = _run(sdk_python, "-c", script, up.url, env=env)
    assert 0 == result.returncode, result.stderr
    out = json.loads(result.stdout)
    assert (["k-wheel"], {"knowledge.stored": 1}) == (out["found"], out["by_type"])


def test_the_command_without_the_server_extra_says_what_to_install(sdk_python: Path) -> None:
    """`memstream` needs the server extra: one line saying so, status 2, no traceback."""
    result = _run(sdk_python.parent / "memstream", "--help")
    assert 2 == result.returncode
    assert "" == result.stdout
    assert [
        "memstream: error: the memstream command needs the server extra (click is not "
        "installed): pip install 'memstream[server]'"
    ] == result.stderr.splitlines()
