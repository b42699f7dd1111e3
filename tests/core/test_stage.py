"""The stage contract: a stage registered from a test file runs from a recipe and from its
(derived) CLI command, cached on the second run, like the built-in ones."""

from __future__ import annotations

import json
import shutil
from typing import Literal

import pytest
from pydantic import Field

from edgesmith.toolchain.core.artifact import Format, ModelArtifact
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.recipe import recipe_from_dict
from edgesmith.toolchain.core.stage import (
    Inputs,
    Stage,
    StageConfig,
    StageResult,
    Workdir,
    register,
    unregister,
)

CALLS: list[float] = []


class StampStage(StageConfig):
    """Copy an ONNX model and record a stamp in its info (a toy stage)."""

    kind: Literal["stamp"] = "stamp"
    stamp: float = Field(default=1.0, gt=0, description="the stamp")
    tags: list[str] = []


def stamp(inputs: Inputs, cfg: StampStage, work: Workdir) -> StageResult:
    CALLS.append(cfg.stamp)
    dest = work.out / "model.onnx"
    shutil.copy(inputs.model.path, dest)
    info = inputs.model.info.inherit(structure={"stamp": cfg.stamp, "tags": cfg.tags})
    art = ModelArtifact.at(dest, Format.onnx, parent=inputs.model.sha256, info=info)
    return StageResult(art, {"stamp": cfg.stamp}, summary=f"stamped {cfg.stamp}")


@pytest.fixture
def toy_stage():
    register(Stage("stamp", StampStage, stamp, help="Stamp a model (a toy stage)."))
    CALLS.clear()
    yield
    unregister("stamp")


@pytest.fixture
def tiny_onnx(export_tiny, tmp_path):
    assert export_tiny(tmp_path / "onnx").code == 0
    return tmp_path / "onnx" / "model.onnx"


def test_a_toy_stage_runs_from_a_recipe_cached_the_second_time(
    toy_stage, tiny_onnx, tmp_path, monkeypatch
):
    from edgesmith.toolchain import pipeline

    recipe = recipe_from_dict(
        {
            "out": str(tmp_path / "run"),
            "source": {"model": str(tiny_onnx)},
            "stages": [{"kind": "stamp", "stamp": 2.5}, {"kind": "build"}],
        }
    )
    first = pipeline.run(recipe, emit=lambda _m: None)
    assert CALLS == [2.5] and [s.cached for s in first.stages] == [False, False]
    manifest = json.loads((tmp_path / "run" / "0-stamp" / "manifest.json").read_text())
    assert manifest["artifact"]["info"]["structure"] == {"stamp": 2.5, "tags": []}
    # what the toy stage recorded flows on: the engine built from its model carries it
    assert first.final.info.structure == {"stamp": 2.5, "tags": []}
    again = pipeline.run(recipe, emit=lambda _m: None)
    assert CALLS == [2.5] and all(s.cached for s in again.stages)
    # other edgesmith code (an upgrade, a fixed rewrite) makes the stages again
    monkeypatch.setattr(pipeline, "code_digest", lambda: "other code")
    third = pipeline.run(recipe, emit=lambda _m: None)
    assert CALLS == [2.5, 2.5] and not any(s.cached for s in third.stages)


def test_a_toy_stage_has_a_cli_command_derived_from_its_config(cli, toy_stage, tiny_onnx, tmp_path):
    out = tmp_path / "stamped"
    args = ("stamp", tiny_onnx, "-o", out, "--stamp", "3", "--tags", "a", "--tags", "b")
    r = cli(*args)
    assert r.code == 0, r.stderr
    assert "stamped 3.0" in r.stderr and CALLS == [3.0]
    r = cli(*args)
    assert r.code == 0 and "cached, nothing to do" in r.stderr and CALLS == [3.0]
    printed = cli(*args, "--print-recipe")
    assert 'kind = "stamp"' in printed.stdout and "stamp = 3.0" in printed.stdout
    assert 'tags = ["a", "b"]' in printed.stdout
    # an option left out takes the config's default; a bad value is the config's error, exit 2
    bad = cli("stamp", tiny_onnx, "-o", tmp_path / "bad", "--stamp", "-1")
    assert bad.code == 2 and "stamp: Input should be greater than 0" in bad.stderr
    assert not (tmp_path / "bad").exists()
    assert "Stamp a model" in cli("--help").stdout


def test_registration_is_checked_and_unknown_kinds_list_the_known_ones(toy_stage):
    with pytest.raises(ValueError, match="its config's kind is 'stamp'"):
        Stage("other", StampStage, stamp)
    with pytest.raises(InvalidInput, match="unknown stage kind 'nope'; available: .*stamp"):
        recipe_from_dict({"source": {"model": "x.onnx"}, "stages": [{"kind": "nope"}]})


def test_no_stage_module_imports_the_pipeline():
    """Stages return StageResult from core; the pipeline imports them, never the reverse."""
    import ast
    from pathlib import Path

    from edgesmith.toolchain.core.stage import BUILTIN_STAGES

    for module in BUILTIN_STAGES.values():
        path = Path(__file__).resolve().parents[2] / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        imported = {
            n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
        } | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "edgesmith.toolchain.pipeline" not in imported, module


def test_help_imports_no_heavy_package():
    """`edgesmith --help` (every command registered) loads none of the heavy packages."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edgesmith.toolchain.cli.app import app\n"
        "from typer.testing import CliRunner\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        "assert CliRunner().invoke(app, ['quantize', '--help']).exit_code == 0\n"
        "heavy = {'torch', 'onnx', 'onnxruntime', 'transformers', 'optimum', 'tensorrt'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout
