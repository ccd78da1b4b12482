"""Every Python block in the README runs as pasted, in order, against a test memstream
(the blocks take the URL from MEMSTREAM_NATS_URL, as the SDK does)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Up, run_cli, start_up

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of each ```python block."""
    text = README.read_text()
    return [
        (text.count("\n", 0, m.start()) + 2, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    ]


def test_every_python_block_in_the_readme_runs(up: Up) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 7
    env = {**os.environ, "MEMSTREAM_NATS_URL": up.url}
    for line, code in blocks:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert 0 == done.returncode, f"README.md line {line}:\n{done.stderr}"


@pytest.fixture
def up_as_shipped(tmp_path: Path) -> Iterator[Up]:
    """memstream up as `make up` runs it: the default embedder, not the suites' hash."""
    running = start_up(tmp_path / "data", env={"MEMSTREAM_EMBEDDER": ""})
    try:
        yield running
    finally:
        running.stop()


def test_the_tours_demo_output_is_what_the_demo_prints(up_as_shipped: Up) -> None:
    """The tour shows the demo's search and recall as they come out (100 columns), with
    the embedder a user gets."""
    text = README.read_text()
    start = text.index("───── 2. Search ─────")
    shown = text[text.rindex("\n", 0, start) + 1 : text.index("```", start)].splitlines()
    demo = run_cli("demo", "--nats-url", up_as_shipped.url, env={"COLUMNS": "100"})
    assert 0 == demo.returncode, demo.stderr
    printed = [line.rstrip() for line in demo.stdout.splitlines()]
    first = printed.index(shown[0])
    assert shown == printed[first : first + len(shown)]
