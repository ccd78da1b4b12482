"""The CrewAI environment (tests/integrations/test_crewai.py), built in the background
from the moment the session knows it will run those tests: the install waits on the
network, the tests before it use the cores, so the two overlap."""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_pool = ThreadPoolExecutor(1, "crewai-env")
_built: Future[Path] | None = None


def _build() -> Path:
    """The Python of the CrewAI environment, inside this environment's own directory (so
    `make clean` removes it), rebuilt when pyproject.toml changes. One process builds
    it at a time (the suite's workers each start a build); the others find it built."""
    env = Path(sys.prefix) / "crewai-env"
    with open(f"{env}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_in(env)


def _build_in(env: Path) -> Path:
    python = env / "bin" / "python"
    stamp = env / ".installed-stamp"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True, timeout=120)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-e", f"{ROOT}[crewai]", "pytest>=8.2", "pytest-asyncio>=0.24"],
        capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if install.returncode != 0:
        raise RuntimeError(f"installing memstream[crewai] failed:\n{install.stderr}")
    stamp.write_text(wanted)
    return python


def start() -> Future[Path]:
    """Start building (once); the future of the environment's Python."""
    global _built
    if _built is None:
        _built = _pool.submit(_build)
    return _built


def python() -> Path:
    return start().result(timeout=900)
