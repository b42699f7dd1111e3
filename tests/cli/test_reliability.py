"""Concurrent runs (issue 11): two edgesmith processes on one recipe, as `make -j` starts them,
both end with a whole output; neither writes a stage directory the other is writing."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO
from toolchain.core.artifact import integrity_problems

CLI = [sys.executable, "-c", "from toolchain.cli.app import main; main()"]


def test_two_runs_of_one_recipe_at_once(tiny, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "r"\nout = "{tmp_path / "run"}"\n[source]\nmodel = "tests.models:tiny_mlp"\n'
        f'weights = "{tiny / "tiny.safetensors"}"\n[[stages]]\nkind = "export"\n'
        '[[stages]]\nkind = "build"\n'
    )
    procs = [
        subprocess.Popen(
            [*CLI, "run", str(recipe)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    logs = "\n".join(err for _, err in results)
    # each stage was made once; the other process found it made (or waited for it)
    assert logs.count("[0] export: running") == 1 and logs.count("[1] build: running") == 1
    assert logs.count("cached, nothing to do") == 2
    for stage in sorted((tmp_path / "run").iterdir()):
        if stage.name.startswith("."):
            continue
        manifest = json.loads((stage / "manifest.json").read_text())
        assert integrity_problems(stage, manifest) == []
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]
