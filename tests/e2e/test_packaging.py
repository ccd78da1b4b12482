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


def _venv_with_the_wheel(where: Path, *pip_args: str) -> Path:
    """Build the wheel, install it into a fresh venv under ``where``; its Python."""
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--quiet", "-w", where / "dist", ROOT,
    )  # fmt: skip
    assert 0 == built.returncode, built.stderr
    (wheel,) = (where / "dist").glob("memstream-*.whl")
    made = _run(sys.executable, "-m", "venv", where / "venv")
    assert 0 == made.returncode, made.stderr
    python = where / "venv" / "bin" / "python"
    installed = _run(python, "-m", "pip", "install", "--quiet", *pip_args, wheel)
    assert 0 == installed.returncode, installed.stderr
    return python


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Python of a fresh venv with the built wheel installed, without extras."""
    yield _venv_with_the_wheel(tmp_path_factory.mktemp("wheel"))


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


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("langgraph", "langgraph"),
        ("openai_agents", "openai-agents"),
        ("autogen", "autogen"),
        ("crewai", "crewai"),
    ],
)
def test_an_adapter_without_its_extra_says_what_to_install(
    sdk_python: Path, module: str, extra: str
) -> None:
    """The SDK alone does not pull in a framework; importing its adapter names the extra."""
    result = _run(sdk_python, "-c", f"import memstream.integrations.{module}")
    assert 1 == result.returncode
    assert f"pip install 'memstream[{extra}]'" in result.stderr.splitlines()[-1]


def test_the_wheel_installs_one_top_level_name(sdk_python: Path) -> None:
    """`memstream`, and nothing a user's own modules could be shadowed by."""
    code = (
        "import importlib.metadata as m, json;"
        "print(json.dumps(sorted({str(f).split('/')[0] for f in m.files('memstream')"
        " if not str(f).startswith('..')})))"
    )
    found = _run(sdk_python, "-c", code)
    assert 0 == found.returncode, found.stderr
    assert ["memstream", "memstream-0.1.0.dist-info"] == json.loads(found.stdout)


@pytest.fixture(scope="module")
def server_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the built wheel, its server extra's packages reached through
    this interpreter's (a .pth line: the same versions, without downloading them)."""
    python = _venv_with_the_wheel(tmp_path_factory.mktemp("server-wheel"), "--no-deps")
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site.stdout.strip()) / "memstream-test-deps.pth").write_text("\n".join(ours) + "\n")
    yield python


def test_a_users_own_schemas_and_consumers_modules_do_not_break_memstream(
    server_python: Path, tmp_path: Path
) -> None:
    """From a project that has its own schemas.py, producers/, consumers.py and
    projections.py: `memstream up` runs, and an agent publishes and searches."""
    project = tmp_path / "agent-project"
    (project / "producers").mkdir(parents=True)
    (project / "producers" / "__init__.py").write_text("raise ImportError('the user producers')\n")
    for name in ("schemas", "consumers", "projections"):
        (project / f"{name}.py").write_text(f"raise ImportError('the user {name}')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTREAM_")}
    env["MEMSTREAM_LOG_FORMAT"] = "json"
    up = subprocess.Popen(
        [server_python, "-m", "memstream", "up", "--nats-port", "0",
         "--data-dir", tmp_path / "data", "--json"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        ready = up.stdout.readline()
        assert ready, "memstream up exited before it was ready"
        url = json.loads(ready)["nats_url"]
        script = textwrap.dedent(
            """
            import asyncio, sys
            from memstream import MemoryClient

            async def main():
                async with await MemoryClient.connect(sys.argv[1], tenant="acme", agent="a") as mem:
                    ack = await mem.store_knowledge("names collide", domain="d", memory_id="k")
                    hits = await mem.search("names collide", min_seq=ack.seq, wait_ms=20000)
                    print([h.memory_id for h in hits])

            asyncio.run(main())
            """
        )
        done = _run(server_python, "-c", script, url, cwd=project, env=env)
        assert 0 == done.returncode, done.stderr
        assert "['k']" == done.stdout.strip()
    finally:
        up.terminate()
        assert 0 == up.wait(60)
