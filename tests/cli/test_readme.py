"""The README's quickstart blocks run as written, in a fresh directory, with the installed
`edgesmith` (the models are made by the blocks themselves, nothing from tests/)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def block(name: str) -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(rf"<!-- quickstart:{name} .*?-->\n```sh\n(.*?)```", text, re.S)
    assert m, f"README has no quickstart:{name} block"
    return m.group(1)


def run_block(name: str, cwd: Path) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block(name)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["torch", "hf"])
def test_quickstart_runs_as_written(name, tmp_path):
    r = run_block(name, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    reports = list(tmp_path.glob("build/*/report/report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["passed"] is True
    if name == "torch":
        assert {c["output"] for c in report["checks"]} == {"scores", "embedding"}


def test_the_readmes_links_resolve():
    """Every relative link in the README names a file in the repository (the docs site's own
    links are checked by `mkdocs build --strict` in CI)."""
    import re

    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert links
    missing = [link for link in links if "://" not in link and not (REPO / link).exists()]
    assert not missing, missing


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def figures_not_held(text: str) -> list[str]:
    """The figures in `text`'s Measured sections (a decimal, a percentage, a number in
    scientific notation; text in backticks aside) that no benchmark record holds
    (benchmarks/records/*.json), at the precision the text shows them."""
    import json
    import math
    import re

    sections = [part.split("\n## ", 1)[0] for part in text.split("\n## Measured\n")[1:]]
    values: list[float] = []

    def collect(v):
        if isinstance(v, dict):
            for x in v.values():
                collect(x)
        elif isinstance(v, list):
            for x in v:
                collect(x)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            values.append(float(v))

    for path in (REPO / "benchmarks" / "records").glob("*.json"):
        collect(json.loads(path.read_text())["figures"])
    assert values, "no benchmark records"

    def held(number: str, percent: bool) -> bool:
        x = float(number)
        if "e" in number.lower():  # as written: one or two significant digits
            digits = len(number.lower().split("e")[0].replace(".", "").lstrip("0"))
            return any(v and f"{v:.{digits - 1}e}" == f"{x:.{digits - 1}e}" for v in values)
        places = len(number.split(".")[1]) if "." in number else 0
        scale = 100 if percent else 1
        return any(
            math.isclose(round(abs(v) * scale, places), x, abs_tol=1e-9) for v in values
        )  # a signed figure is written with its sign outside the number (−0.37)

    missing = []
    for section in sections:
        section = re.sub(r"`[^`]*`", " ", section)
        for m in re.finditer(r"(?<![\w.])(\d+\.\d+(?:e-?\d+)?)(%?)", section):
            if not held(m.group(1), bool(m.group(2))):
                missing.append(m.group(0))
    return missing


def test_the_readmes_figures_are_held_by_benchmark_records():
    """Every figure in the README's Measured section is a value some benchmark record holds."""
    text = (REPO / "README.md").read_text()
    assert "\n## Measured\n" in text
    missing = figures_not_held(text)
    assert not missing, f"README figures no record holds: {missing}"


DOC_PAGES = sorted(p.relative_to(REPO) for p in (REPO / "docs").rglob("*.md"))


@pytest.mark.parametrize("page", [str(p) for p in DOC_PAGES])
def test_the_docs_figures_are_held_by_benchmark_records(page):
    """Every figure in a documentation page's Measured section is a value some benchmark
    record holds: the pages cite measurements, the records (and docs/benchmarks.md, rendered
    from them) hold them."""
    missing = figures_not_held((REPO / page).read_text())
    assert not missing, f"{page}: figures no record holds: {missing}"
