"""The layout is the architecture: schemas and projections never touch NATS."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("nats", "faststream")


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module))
    return found


@pytest.mark.parametrize("package", ["schemas", "projections"])
def test_no_nats_imports_in_source(package: str) -> None:
    """No module of the package imports nats or faststream, at any depth of the file."""
    bad = {(path, mod) for path, mod in _imports(package) if mod.split(".")[0] in FORBIDDEN}
    assert set() == bad


def test_no_nats_loaded_at_runtime() -> None:
    """Importing schemas and projections loads neither nats nor faststream transitively."""
    code = (
        "import sys, schemas, projections, schemas.queries, schemas.events;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'nats', 'faststream'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "[]" == result.stdout.strip()


def test_schemas_depend_only_on_stdlib_and_msgspec() -> None:
    """schemas/ is pure: its imports are the stdlib, msgspec and itself."""
    allowed = set(sys.stdlib_module_names) | {"msgspec", "schemas", "__future__"}
    bad = {(p, m) for p, m in _imports("schemas") if m.split(".")[0] not in allowed}
    assert set() == bad
