"""The shape of the code base (docs/architecture.md): layers, cycles, private names, file sizes,
and reference citations.

These checks read the source as text (``ast``), import nothing, and take well under a second.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("norton_jax", "data_pipeline")
MAX_LINES = 500
LONG_FILES_ALLOWED = {"norton_jax/ot.py"}

# Longest matching prefix wins.  A module may import from its own layer or any lower one; an
# import from a higher layer is a violation.  Keep in step with docs/architecture.md.
LAYERS: dict[str, int] = {
    # 0: leaves every layer may use (stdlib / numpy / TensorFlow I/O only).
    "norton_jax": 0,  # the package __init__ (version only)
    "norton_jax.cli": 0,
    "norton_jax.utils": 0,
    "data_pipeline.fileio": 0,
    "data_pipeline.tf_utils": 0,
    "data_pipeline.safe_pickle": 0,
    "data_pipeline.example_proto": 0,
    # 1: the numerical core and the data path.
    "norton_jax.ot": 1,
    "norton_jax.similarity": 1,
    "norton_jax.losses": 1,
    "norton_jax.dtw": 1,
    "norton_jax.models": 1,
    "norton_jax.s3d": 1,
    "data_pipeline": 1,
    # 2: what several tools share: checkpoints, the embedding API, the training plumbing.
    "norton_jax.checkpoint": 2,
    "norton_jax.inference": 2,
    "norton_jax.training": 2,
    "norton_jax.subtitles": 2,
    "norton_jax.torch_reference": 2,
    "norton_jax.import_torch": 2,
    # 3: tasks built on the shared floor.
    "norton_jax.evaluate": 3,
    "norton_jax.align": 3,
    "norton_jax.finetune": 3,
    "norton_jax.extract": 3,
    "norton_jax.export_torch": 3,
    # 4: entry points (own the flags; nothing imports them).
    "norton_jax.train": 4,
    "norton_jax.encode": 4,
    "norton_jax.demo": 4,
    "norton_jax.demo_align": 4,
    "norton_jax.evaluate.__main__": 4,
    "norton_jax.finetune.__main__": 4,
    "norton_jax.align.__main__": 4,
    "norton_jax.models.__main__": 4,
    "data_pipeline.build": 4,
    "data_pipeline.check": 4,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out[_module_name(path)] = path
    return out


SOURCES = _sources()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not SOURCES[module].name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _project(name: str) -> str | None:
    """The longest project module that ``name`` names or lies inside, or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in SOURCES:
            return candidate
        parts = parts[:-1]
    return None


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported project module, imported name or None, line) for every import, lazy ones too."""
    tree = ast.parse(SOURCES[module].read_text(), filename=str(SOURCES[module]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _project(alias.name)
                if target:
                    found.append((target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in SOURCES:  # `from pkg import module`
                    found.append((sub, None, node.lineno))
                else:
                    target = _project(base)
                    if target:
                        found.append((target, alias.name, node.lineno))
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    while parts:
        key = ".".join(parts)
        if key in LAYERS:
            return LAYERS[key]
        parts = parts[:-1]
    return None


def _package_of(module: str) -> str:
    return module if SOURCES[module].name == "__init__.py" else module.rpartition(".")[0]


GRAPH = {m: sorted({t for t, _, _ in _imports(m) if t != m}) for m in SOURCES}


def test_every_module_has_a_layer():
    missing = [m for m in SOURCES if _layer(m) is None]
    assert not missing, f"modules with no layer in LAYERS (and docs/architecture.md): {missing}"


def test_no_upward_import():
    bad = []
    for module in SOURCES:
        for target, _, line in _imports(module):
            if target == module or _layer(module) is None or _layer(target) is None:
                continue
            # A package's __init__ may re-export its own submodules.
            if SOURCES[module].name == "__init__.py" and target.startswith(module + "."):
                continue
            if _layer(target) > _layer(module):
                bad.append(f"{SOURCES[module].relative_to(ROOT)}:{line} {module} (layer "
                           f"{_layer(module)}) imports {target} (layer {_layer(target)})")
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_import_graph_has_no_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            # A package importing its own submodules (re-exports) is not a cycle of concern.
            if SOURCES[v].name == "__init__.py" and w.startswith(v + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in SOURCES:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_imported_from_another_module():
    bad = []
    for module in SOURCES:
        for target, name, line in _imports(module):
            if target == module:
                continue
            private_module = any(p.startswith("_") and not p.startswith("__") for p in target.split("."))
            private_name = name is not None and name.startswith("_") and not name.startswith("__")
            if private_name or (private_module and not target.startswith(_package_of(module) + ".")):
                what = f"{target}.{name}" if name else target
                bad.append(f"{SOURCES[module].relative_to(ROOT)}:{line} imports {what}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_source_files_stay_short():
    long_files = []
    for folder in (*PACKAGES, "benchmarks", "configs"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            n = len(path.read_text().splitlines())
            if n > MAX_LINES and rel not in LONG_FILES_ALLOWED:
                long_files.append(f"{rel}: {n} lines")
    assert not long_files, f"files over {MAX_LINES} lines:\n" + "\n".join(long_files)


SECTION = re.compile(r"§\s?(\d+(?:\.\d+)*)")
TRAP = re.compile(r"\b(T\d{1,2})\b")


def _reference_anchors() -> tuple[set[str], set[str]]:
    text = (ROOT / "docs" / "reference.md").read_text()
    sections = set(re.findall(r"^#+\s+§?(\d+(?:\.\d+)*)[\s.]", text, flags=re.MULTILINE))
    traps = set(re.findall(r"^#+[^\n]*\b(T\d+)\b", text, flags=re.MULTILINE))
    traps |= set(re.findall(r"^\s*[-*]\s+\*\*(T\d+)\b", text, flags=re.MULTILINE))
    return sections, traps


def test_every_reference_citation_resolves():
    if not (ROOT / "docs" / "reference.md").exists():
        pytest.fail("docs/reference.md is missing")
    sections, traps = _reference_anchors()
    bad = []
    for folder in (*PACKAGES, "benchmarks", "configs", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                for section in SECTION.findall(line):
                    section = section.rstrip(".")
                    if section not in sections:
                        bad.append(f"{path.relative_to(ROOT)}:{lineno} §{section}")
                if "trap" in line.lower():
                    for trap in TRAP.findall(line):
                        if trap not in traps:
                            bad.append(f"{path.relative_to(ROOT)}:{lineno} trap {trap}")
    assert not bad, "citations not found in docs/reference.md:\n" + "\n".join(bad)
