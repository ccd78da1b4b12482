"""Every benchmark still runs: each in its --smoke mode (tiny sizes, one round), as
`python -m benchmarks.NAME --smoke`. The figures are not judged here (speed is measured
in benchmarks/, not asserted in tests); a benchmark that no longer starts fails."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.conftest import ROOT

BENCHMARKS = sorted(
    p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")
)


def _smoke(name: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEMSTREAM_LOG_FORMAT": "json"}
    env.pop("MEMSTREAM_NATS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def smoke_runs() -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Every benchmark's smoke run, two at a time from the first test on: each mostly
    starts processes and waits for them, and none is timed here."""
    with ThreadPoolExecutor(2) as pool:
        yield {name: pool.submit(_smoke, name) for name in BENCHMARKS}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_the_benchmark_runs_in_smoke_mode(
    name: str, smoke_runs: dict[str, Future[subprocess.CompletedProcess[str]]]
) -> None:
    """It exits 0 and prints its figures."""
    done = smoke_runs[name].result()
    assert 0 == done.returncode, done.stderr[-3000:]
    assert done.stdout.strip(), f"benchmarks.{name} printed no figure"


def test_every_benchmark_is_covered() -> None:
    """The list above is read from the folder, so a new benchmark is run too."""
    assert {"publish", "search", "search_load", "ingest_vectors"} <= set(BENCHMARKS)
