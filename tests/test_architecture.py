"""The architecture, checked: the one-way layers (import-linter's contract in pyproject.toml)
hold and catch a stage that imports another; no circle in the import graph; no helper takes
more than five parameters; the distribution installs one top-level name, `edgesmith`."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("toolchain", "targets", "calibration")  # edgesmith/<folder> links to each
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _copy(tmp_path: Path) -> Path:
    """The package as the repository lays it out (edgesmith/ and the folders it links to)."""
    dest = tmp_path / "tree"
    for folder in (*FOLDERS, "edgesmith"):
        shutil.copytree(ROOT / folder, dest / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", dest)
    return dest


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_the_layers_hold_and_a_stage_importing_another_breaks_them(tmp_path):
    tree = _copy(tmp_path)
    r = _lint(tree)
    assert r.returncode == 0, r.stdout + r.stderr
    stage = tree / "toolchain" / "quantize" / "stage.py"
    stage.write_text(stage.read_text() + "\nimport edgesmith.toolchain.prune.common  # noqa\n")
    r = _lint(tree)
    assert r.returncode != 0 and "BROKEN" in r.stdout, r.stdout
    assert "edgesmith.toolchain.quantize.stage -> edgesmith.toolchain.prune.common" in r.stdout


def test_no_circle_in_the_import_graph():
    """Every import counts, the ones inside functions too: a module never reaches itself."""
    import grimp

    graph = grimp.build_graph("edgesmith")
    circles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not circles, circles


def _imported(graph, module: str):
    return iter(sorted(graph.find_modules_directly_imported_by(module)))


def _strongly_connected(graph) -> list[list[str]]:
    """Tarjan's algorithm over the modules (iterative: the graph is deep)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, _imported(graph, root))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, _imported(graph, child)))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    out.append(sorted(component))
    return out


def test_no_helper_takes_more_than_five_parameters():
    """Parameters that belong together travel as one typed record. The CLI's commands are
    exempt: typer maps each option to a parameter."""
    over = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                if path.parent.name == "cli" and node.name == "command":
                    continue
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                names = [n for n in names if n not in ("self", "cls")]
                if len(names) > 5:
                    over.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {len(names)}")
    assert not over, over


def test_no_module_imports_the_folders_by_their_own_names():
    """Inside the distribution the folders are edgesmith.toolchain, edgesmith.targets and
    edgesmith.calibration; an import by the folder's own name works only in a checkout."""
    import re

    # at a line's start, or in code a subprocess runs (python -c "...")
    bad = re.compile(r"(^\s*|[\"'])(from|import) (toolchain|targets|calibration)\b", re.M)
    found = [str(p.relative_to(ROOT))
             for d in (*FOLDERS, "tests", "benchmarks", "examples")
             for p in (ROOT / d).rglob("*.py") if bad.search(p.read_text())]  # fmt: skip
    assert not found, found


@pytest.mark.slow
def test_the_wheel_installs_only_edgesmith(tmp_path):
    tree = _copy(tmp_path)
    for f in ("README.md",):
        shutil.copy(ROOT / f, tree)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "wheel")],
        cwd=tree, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "edgesmith"
    }
    top = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top).decode().split() == ["edgesmith"]
    assert "edgesmith/toolchain/cli/app.py" in names and "edgesmith/__main__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "edgesmith = edgesmith.toolchain.cli.app:main"
        in zipfile.ZipFile(wheel).read(entry).decode()
    )
