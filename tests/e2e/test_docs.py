"""The documentation stays true: the site builds strictly, and every code block of the
README and of every page runs as pasted, page after page in the site's order, against a
test memstream.

A ```python block runs in a fresh interpreter (the SDK takes the URL from
MEMSTREAM_NATS_URL); a ```sh block runs its commands in a shell, in the page's own
directory (the `$ ` lines where it shows a session with output, else every line); a
```js block runs in Node with the nats package (installed once under .venv). A
block is left out only by a comment on the line before it that gives the reason
(``<!-- not run: ... -->``); ``<!-- exits N: ... -->`` says its commands fail with N, as
the page shows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import Up, run_cli, start_up

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_MARK = re.compile(r"<!-- (not run|not run here|exits (\d)): (.+) -->")


@dataclass(frozen=True)
class Block:
    where: str  # file:line
    lang: str
    code: str
    exits: int


def _nav(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _nav(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _nav(value)


def pages() -> list[Path]:
    """The README, then every page in the site's order."""
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    return [ROOT / "README.md", *(DOCS / p for p in _nav(config["nav"]))]


def blocks(page: Path) -> list[Block]:
    """The blocks of ``page`` that run, with the exit status each command should have."""
    text = page.read_text()
    found = []
    for m in _BLOCK.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = _MARK.fullmatch(before)
        if mark and mark.group(1).startswith("not run"):
            continue
        if m.group(1) not in ("python", "sh", "js"):
            continue
        line = text.count("\n", 0, m.start()) + 2
        exits = int(mark.group(2)) if mark and mark.group(2) else 0
        where = f"{page.relative_to(ROOT)}:{line}"
        found.append(Block(where, m.group(1), m.group(2), exits))
    return found


def commands(code: str) -> list[str]:
    """A shell block's commands: its `$ ` lines when it shows output, else every line."""
    lines = code.splitlines()
    if any(line.startswith("$ ") for line in lines):
        return [line[2:] for line in lines if line.startswith("$ ")]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_every_page_is_in_the_site_and_every_skip_says_why() -> None:
    """No page is left out of the navigation, and a block is only ever skipped with a
    reason; the README and the site hold runnable blocks of both kinds."""
    listed = set(pages())
    on_disk = {p for p in DOCS.rglob("*.md")}
    assert on_disk <= listed, f"pages not in mkdocs.yml's nav: {sorted(on_disk - listed)}"
    for page in pages():
        for line in page.read_text().splitlines():
            if line.startswith("<!-- not run") or line.startswith("<!-- exits"):
                assert _MARK.fullmatch(line), f"{page}: a skip without a reason: {line}"
    every = [b for p in pages() for b in blocks(p)]
    assert sum(b.lang == "python" for b in every) >= 15
    assert sum(b.lang == "sh" for b in every) >= 8


def test_every_block_of_every_page_runs_in_order(up: Up, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MEMSTREAM_NATS_URL": up.url,
        "MEMSTREAM_DATA_DIR": str(up.data_dir),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "COLUMNS": "100",
    }
    for page in pages():
        here = tmp_path / "-".join(page.relative_to(ROOT).with_suffix("").parts)
        here.mkdir()
        for block in blocks(page):
            if block.lang == "js":
                continue  # test_the_javascript_blocks_run
            steps = [[sys.executable, "-c", block.code]] if block.lang == "python" else [
                ["bash", "-c", command] for command in commands(block.code)
            ]  # fmt: skip
            for step in steps:
                done = subprocess.run(
                    step, env=env, cwd=here, capture_output=True, text=True, timeout=90,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
                assert block.exits == done.returncode, (
                    f"{block.where}: {step[-1][:200]}\n{done.stdout[-2000:]}\n{done.stderr}"
                )


NATS_JS = "nats@2.29.3"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """A directory whose node_modules holds nats.js, installed once per version."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("no Node.js here (node and npm): the JavaScript blocks need them")
    where = ROOT / ".venv" / "node-nats"
    done = where / f".{NATS_JS}"
    if not done.exists():
        where.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(where),
             NATS_JS],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if installed.returncode != 0:
            pytest.skip(f"npm could not install {NATS_JS}: {installed.stderr.strip()[-300:]}")
        done.touch()
    return where


def test_the_javascript_blocks_run(up: Up, node_modules: Path) -> None:
    """Each ```js block runs as an ES module in Node with nats.js, against memstream."""
    scripts = [b for p in pages() for b in blocks(p) if b.lang == "js"]
    assert scripts
    for n, block in enumerate(scripts):
        script = node_modules / f"block{n}.mjs"  # beside node_modules, where imports look
        script.write_text(block.code)
        done = subprocess.run(
            ["node", str(script)], env={**os.environ, "MEMSTREAM_NATS_URL": up.url},
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert 0 == done.returncode, f"{block.where}:\n{done.stdout}\n{done.stderr}"
        assert done.stdout.strip(), f"{block.where} printed nothing"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs build --strict: a broken link, a page missing from the nav or a reference
    that no longer matches the code fails it."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr[-3000:]
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "memstream search" in cli and "--wide" in cli
    wire = (site / "reference" / "wire-contract" / "index.html").read_text()
    assert "mem.{tenant}.knowledge.stored" in wire and "id_suffix" in wire
    assert (site / "explanation" / "charts" / "throughput.svg").read_bytes().startswith(b"<?xml")
    api = (site / "reference" / "python-api" / "index.html").read_text()
    assert "store_knowledge" in api


def test_the_configuration_page_names_every_variable() -> None:
    from memstream.consumers.settings import ENV_VARS

    page = (DOCS / "reference" / "configuration.md").read_text()
    assert [v for v in ENV_VARS.values() if f"`{v}`" not in page] == []


@pytest.fixture
def up_as_shipped(tmp_path: Path) -> Iterator[Up]:
    """memstream up as `make up` runs it: the default embedder, not the suites' hash."""
    running = start_up(tmp_path / "data", env={"MEMSTREAM_EMBEDDER": ""})
    try:
        yield running
    finally:
        running.stop()


def test_the_tours_demo_output_is_what_the_demo_prints(up_as_shipped: Up) -> None:
    """Getting started shows the demo's search and recall as they come out (100
    columns), with the embedder a user gets."""
    text = (DOCS / "getting-started.md").read_text()
    start = text.index("───── 2. Search ─────")
    shown = text[text.rindex("\n", 0, start) + 1 : text.index("```", start)].splitlines()
    demo = run_cli("demo", "--nats-url", up_as_shipped.url, env={"COLUMNS": "100"})
    assert 0 == demo.returncode, demo.stderr
    printed = [line.rstrip() for line in demo.stdout.splitlines()]
    first = printed.index(shown[0])
    assert shown == printed[first : first + len(shown)]
