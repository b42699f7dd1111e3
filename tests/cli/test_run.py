"""run RECIPE: stages in order, the content-hash cache, --print-recipe, recipe errors."""

from __future__ import annotations

import json

import pytest
import tomllib

from edgesmith.toolchain.core.recipe import load_recipe, recipe_from_dict


def _recipe(tmp_path, tiny, **validate):
    v = {"data": str(tiny / "data.npz"), "metrics": ["agreement"], "max_drop": 0.0, **validate}
    text = f"""
name = "tiny"
out = "{tmp_path / "run"}"
[source]
model = "tests.models:tiny_mlp"
weights = "{tiny / "tiny.safetensors"}"
[[stages]]
kind = "export"
[[stages]]
kind = "build"
target = "ort-cpu"
[[stages]]
kind = "validate"
{chr(10).join(f"{k} = {json.dumps(x)}" for k, x in v.items())}
"""
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def test_second_run_does_no_work(cli, tiny, tmp_path):
    recipe = _recipe(tmp_path, tiny)
    r = cli("run", recipe)
    assert r.code == 0, r.stderr
    assert r.stderr.count("running") == 3
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    r = cli("run", recipe)
    assert r.code == 0, r.stderr
    assert r.stderr.count("cached, nothing to do") == 3 and "running" not in r.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == stamps


def test_changed_stage_config_reruns_from_there(cli, tiny, tmp_path):
    r = cli("run", _recipe(tmp_path, tiny))
    assert r.code == 0, r.stderr
    r = cli("run", _recipe(tmp_path, tiny, max_drop=0.01))  # only validate changed
    assert r.code == 0, r.stderr
    assert "[0] export: cached" in r.stderr and "[1] build: cached" in r.stderr
    assert "[2] validate: running" in r.stderr


def test_changed_data_reruns_validate(cli, tiny, tmp_path):
    import numpy as np

    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((8, 12), np.float32))
    recipe = _recipe(tmp_path, tiny, data=str(data))
    assert cli("run", recipe).code == 0
    np.savez(data, x=np.zeros((8, 12), np.float32))
    r = cli("run", recipe)
    assert r.code == 0 and "[2] validate: running" in r.stderr


def test_gate_failure_in_a_recipe_exits_1(cli, tiny, tmp_path):
    """Negative control: a reference whose weights were nudged must fail a zero budget.

    (The engine against its own source is no control: on some CPUs onnxruntime and torch
    compute this MLP bit-identically, so max_abs_diff is 0 there.)"""
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(tiny / "tiny.safetensors"))
    save_file({k: v + 1e-3 for k, v in weights.items()}, str(tmp_path / "nudged.safetensors"))
    r = cli(
        "run",
        _recipe(
            tmp_path,
            tiny,
            metrics=["max_abs_diff"],
            max_drop=0.0,
            reference="tests.models:tiny_mlp",
            reference_weights=str(tmp_path / "nudged.safetensors"),
        ),
    )
    assert r.code == 1
    assert "FAIL: max_abs_diff[logits]" in r.stderr
    assert (tmp_path / "run" / "2-validate" / "report.json").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["export", "tests.models:tiny_mlp", "--weights", "W", "--opset", "17", "-o", "OUT"],
        ["build", "OUT/onnx", "--ort-format", "--opt-level", "basic", "-o", "OUT/e"],
        [
            "validate",
            "OUT/e",
            "--reference",
            "OUT/onnx",
            "--data",
            "D",
            "--metric",
            "agreement",
            "--max-drop",
            "agreement=0.01",
            "-o",
            "OUT/rep",
        ],
        ["bench", "OUT/e", "--batch", "1,4", "-o", "OUT/b"],
    ],
)
def test_print_recipe_is_what_runs(cli, tiny, tmp_path, args):
    """Each single-stage command prints a recipe that loads and runs to the same result."""
    sub = {"W": str(tiny / "tiny.safetensors"), "D": str(tiny / "data.npz")}
    args = [sub.get(a, a.replace("OUT", str(tmp_path))) for a in args]
    assert (
        cli("export", "tests.models:tiny_mlp", "--weights", sub["W"], "-o", tmp_path / "onnx").code
        == 0
    )
    assert cli("build", tmp_path / "onnx", "-o", tmp_path / "e").code == 0
    r = cli(*args, "--print-recipe")
    assert r.code == 0, r.stderr
    recipe = recipe_from_dict(tomllib.loads(r.stdout))
    assert recipe.stages[0].kind == args[0]
    (tmp_path / "printed.toml").write_text(r.stdout)
    assert load_recipe(tmp_path / "printed.toml") == recipe
    r = cli("run", tmp_path / "printed.toml")
    assert r.code == 0, r.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[source]\nmodel = "m"\n[[stages]]\nkind = "export"\nopset = "new"\n', "opset"),
        (
            '[source]\nmodel = "m"\ncolour = 1\n[[stages]]\nkind = "export"\n',
            "source.colour: unknown field",
        ),
        (
            '[source]\nmodel = "m"\n[[stages]]\nkind = "shrink"\n',
            "unknown stage kind 'shrink'; available:",
        ),
        ('[source]\nmodel = "m"\n[[stages]]\nkind = "validate"\n', "data: Field required"),
        ("[source\n", "not valid TOML"),
    ],
)
def test_recipe_errors_name_file_and_field(cli, tmp_path, text, message):
    (tmp_path / "r.toml").write_text(text)
    r = cli("run", tmp_path / "r.toml")
    assert r.code == 2, r.stderr
    assert message in r.stderr and "r.toml" in r.stderr


def test_bench_reports_percentiles_and_threads(cli, export_tiny, tmp_path):
    assert export_tiny(tmp_path / "onnx").code == 0
    assert cli("build", tmp_path / "onnx", "-o", tmp_path / "e", "--threads", "1").code == 0
    r = cli("bench", tmp_path / "e", "--batch", "1,8", "--iterations", "20", "-o", tmp_path / "b")
    assert r.code == 0, r.stderr
    result = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert result["threads"] == 1
    assert [row["batch"] for row in result["rows"]] == [1, 8]
    for row in result["rows"]:
        assert 0 < row["p50"] <= row["p90"] <= row["p99"] and row["throughput_per_s"] > 0


def test_inspect(cli, export_tiny, tmp_path):
    assert export_tiny(tmp_path / "onnx").code == 0
    r = cli("inspect", tmp_path / "onnx")
    assert r.code == 0, r.stderr
    assert "input:     x:float32[batch,12]" in r.stdout and "stage:     export" in r.stdout


def test_changed_source_flags_are_not_served_from_cache(cli, tiny, tmp_path):
    """--input changes what export makes, so it is part of the cache key."""
    w = tiny / "tiny.safetensors"
    out = tmp_path / "onnx"
    assert cli("export", "tests.models:tiny_mlp", "--weights", w, "-o", out).code == 0
    r = cli("export", "tests.models:tiny_mlp", "--weights", w, "--input", "x:3x12", "-o", out)
    assert r.code == 0 and "running" in r.stderr and "cached" not in r.stderr
    import onnx

    dims = [
        d.dim_value
        for d in onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    ]
    assert dims == [3, 12]


@pytest.mark.parametrize(
    "name", ["digits.toml", "digits_distill.toml", "text_classifier.toml", "fine_prune.toml"]
)
def test_the_embedded_recipes_load(name):
    """Every shipped recipe validates against the stage registry (the make targets run them)."""
    from pathlib import Path

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / name)
    assert recipe.stages[-1].kind == "validate"  # each ends at the gate
    assert load_recipe_text(recipe.to_toml()) == recipe  # --print-recipe round-trips


def load_recipe_text(text: str):
    return recipe_from_dict(tomllib.loads(text))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits.toml", "digits_distill.toml"])
def test_make_demos_recipes_run_and_pass_their_gates(cli, digits, tmp_path, name):
    """`make demo` as a newcomer runs it: each embedded recipe, as shipped (only the folder of
    the trained CNN and the run's output moved into the test's own), ends with its gate
    passed."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "recipes" / name).read_text()
    text = text.replace('"build/digits/', f'"{digits}/')
    text = text.replace(f'out = "{digits}/', f'out = "{tmp_path}/')
    recipe = tmp_path / name
    recipe.write_text(text)
    r = cli("run", recipe)
    assert r.code == 0, r.stderr[-2000:]
    assert "validate: PASS" in r.stdout + r.stderr


def test_bench_times_the_sequence_lengths_asked_for(cli, export_tiny, tmp_path):
    """A text model is timed at the lengths users run (--seq), each row naming its length; a
    model without a sequence axis refuses --seq with exit 2."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])  # fmt: skip
    onnx.save(model, str(tmp_path / "text.onnx"))
    r = cli("bench", tmp_path / "text.onnx", "--batch", "1,2", "--seq", "16,64",
            "--iterations", "5", "-o", tmp_path / "b")  # fmt: skip
    assert r.code == 0, r.stderr
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert [(row["batch"], row["seq"]) for row in rows] == [(1, 16), (1, 64), (2, 16), (2, 64)]
    assert export_tiny(tmp_path / "onnx").code == 0
    r = cli("bench", tmp_path / "onnx", "--seq", "16", "-o", tmp_path / "b2")
    assert r.code == 2 and "--seq: the model has no sequence axis" in r.stderr
    assert not (tmp_path / "b2").exists()
