"""The house: imports in ``ceod/`` only run downward, there is no import circle, and the top level holds thin
entry points plus at most three modules of substance (issue 20). Read from the source (AST), every import —
also those inside functions and under ``TYPE_CHECKING``.

Layers, lowest first (a module may import its own package and any lower layer; two packages of one layer do
not import each other)::

    0 errors, console        1 core        2 models | data        3 aoi        4 benchmarks
    5 deploy                 6 training    7 cli                  8 entry points (python -m ceod.<command>)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ceod"
LAYERS = {"errors": 0, "console": 0, "core": 1, "models": 2, "data": 2, "aoi": 3, "benchmarks": 4, "deploy": 5,
          "training": 6, "cli": 7}
ENTRY_LINES = 25


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def is_entry(name: str, path: Path) -> bool:
    """A thin entry point: ``ceod/<command>.py`` or a package's ``__main__``, forwarding to ``ceod.cli``."""
    return name.endswith("__main__") or (name.count(".") == 1 and not path.name.startswith("_")
                                         and name.split(".")[1] not in LAYERS)


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The ceod modules ``path`` imports (``from ceod.x import y`` → ceod.x.y when y is a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "ceod"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ceod":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return out


def layer(name: str, path: Path) -> tuple[int, str]:
    if is_entry(name, path):
        return 8, "entry"
    parts = name.split(".")
    if len(parts) == 1:
        return 0, "ceod"
    return LAYERS[parts[1]], parts[1]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, known) for m, p in known.items()}


def test_every_package_has_a_layer():
    for name, path in modules().items():
        if not is_entry(name, path) and name != "ceod":
            assert name.split(".")[1] in LAYERS, f"{name}: a module outside the layers of this test"


def test_imports_only_run_downward():
    known = modules()
    upward = []
    for name, deps in graph().items():
        lv, pkg = layer(name, known[name])
        for dep in deps:
            if dep not in known:
                continue
            dlv, dpkg = layer(dep, known[dep])
            if dlv > lv or (dlv == lv and dpkg != pkg and lv > 0):
                upward.append(f"{name} → {dep}")
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    g = graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


def test_top_level_is_thin():
    known = modules()
    top = {n: p for n, p in known.items() if n.count(".") == 1 and p.parent == PKG}
    substance = sorted(n for n, p in top.items() if not is_entry(n, p))
    assert len(substance) <= 3, f"top-level modules of substance: {substance}"
    for name, path in known.items():
        if is_entry(name, path):
            lines = path.read_text().splitlines()
            assert len(lines) <= ENTRY_LINES, f"{name}: {len(lines)} lines (an entry point forwards to ceod.cli)"
            assert all(d.startswith("ceod.cli") for d in imports(path, known)), f"{name} imports outside ceod.cli"


@pytest.mark.parametrize("bad", ["ceod.training.module", "ceod.cli.common"])
def test_the_check_sees_an_upward_import(tmp_path, bad):
    """The rule catches what it should: a core module importing from training or cli is upward."""
    p = tmp_path / "probe.py"
    p.write_text(f"from {bad} import x\n")
    assert imports(p, modules()) == {bad}
    assert layer(bad, modules()[bad])[0] > layer("ceod.core.cam", modules()["ceod.core.cam"])[0]


def test_experiment_scripts_import_only_what_ceod_has():
    """Every ``from ceod.X import a, b`` in experiments/*.py names a module and attributes that exist (a moved
    module leaves no benchmark script behind; nothing is run)."""
    import importlib

    missing = []
    for script in sorted((PKG.parent / "experiments").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ceod":
                try:
                    mod = importlib.import_module(node.module)
                except ImportError:
                    missing.append(f"{script.name}: {node.module}")
                    continue
                missing += [f"{script.name}: {node.module}.{a.name}" for a in node.names if not hasattr(mod, a.name)
                            and not (PKG.parent / node.module.replace(".", "/") / a.name).exists()]
    assert not missing, f"experiment scripts import what ceod does not have: {missing}"
