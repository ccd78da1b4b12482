"""The CrewAI adapter, tested in an environment of its own: crewai 1.15 needs mcp < 2 and
memstream's server extra mcp >= 2.3, so one environment cannot hold both. This builds
(once per pyproject.toml) a virtual environment with `memstream[crewai]` alone, as a
CrewAI user installs it, and runs tests/crewai_env there against a memstream started here."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from memstream.testing import RunningMemstream
from tests import crewai_build

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "tests" / "crewai_env"


@pytest.fixture(scope="module")
def crewai_python() -> Path:
    """The CrewAI environment's Python (built in the background from the session's
    start: tests/crewai_build.py)."""
    return crewai_build.python()


def _env(server: RunningMemstream) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMSTREAM_", "OPENAI_"))}
    return env | {
        "MEMSTREAM_NATS_URL": server.url,
        # CrewAI sends telemetry and traces by default; offline, each send waits 5 s.
        "CREWAI_DISABLE_TELEMETRY": "true",
        "OTEL_SDK_DISABLED": "true",
        "CREWAI_TRACING_ENABLED": "false",
    }


def test_the_crewai_environment_has_crewai_1_15_and_no_server(crewai_python: Path) -> None:
    """What a CrewAI user gets from `pip install 'memstream[crewai]'`: crewai 1.15, the
    SDK, and none of the server's packages."""
    code = (
        "import importlib.metadata as m, importlib.util as u;"
        "print(m.version('crewai'), m.version('mcp'),"
        " [n for n in ('duckdb', 'qdrant_edge', 'structlog') if u.find_spec(n)])"
    )
    found = subprocess.run([str(crewai_python), "-c", code], capture_output=True, text=True)
    assert 0 == found.returncode, found.stderr
    crewai, mcp, server = found.stdout.split(maxsplit=2)
    assert crewai.startswith("1.15.") and mcp.startswith("1.")
    assert "[]" == server.strip()


def test_the_crewai_suite_passes_in_its_environment(
    crewai_python: Path, memstream_server: RunningMemstream
) -> None:
    """Every test of tests/crewai_env passes under crewai's own Memory, none skipped."""
    env = _env(memstream_server)
    done = subprocess.run(
        [str(crewai_python), "-m", "pytest", "--noconftest", "-p", "no:cacheprovider", "-q",
         str(SUITE)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert 0 == done.returncode, done.stdout[-5000:] + done.stderr[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    tests = len(re.findall(r"^(?:async )?def test_", (SUITE / "test_crewai.py").read_text(), re.M))
    assert re.match(rf"{tests} passed\b", summary), summary
    assert not re.search(r"skipped|failed|error", summary), summary


def test_the_crewai_guides_block_runs_where_crewai_is(
    crewai_python: Path, memstream_server: RunningMemstream
) -> None:
    """The CrewAI guide's block (which the docs test leaves to this one: the suite's
    environment has no crewai) runs as pasted in CrewAI's environment and prints what it
    remembered."""
    page = (ROOT / "docs" / "guides" / "crewai.md").read_text()
    start = page.index("```python\n") + len("```python\n")
    block = page[start : page.index("```", start)]
    done = subprocess.run(
        [str(crewai_python), "-c", block], env=_env(memstream_server), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr[-3000:]
    assert "the staging database is reset nightly" == done.stdout.strip().splitlines()[-1]
