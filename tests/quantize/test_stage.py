"""`edgesmith quantize` and the recipe stage: the loop, bad data, the cache, real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.quantize import models


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def float_inputs_of(model_path: Path, node: str) -> bool:
    """True if no input of `node` comes from a DequantizeLinear (the node runs in float)."""
    model = onnx.load(str(model_path))
    producers = {o: n for n in model.graph.node for o in n.output}
    n = next(n for n in model.graph.node if n.name == node)
    return all(producers[i].op_type != "DequantizeLinear" for i in n.input if i in producers)


def _loop(cli, outlier_mlp, out: Path, *extra: str):
    """The fallback loop on the outlier MLP, with the split and smoothing (which would rescue
    fc2 by themselves) turned off."""
    return cli(
        "quantize", outlier_mlp["model"], "-o", out, "--calibration", outlier_mlp["calib"],
        "--outlier-ratio", "0", "--smooth-alpha", "0", "--eval", outlier_mlp["eval"],
        "--metric", "agreement", "--max-drop", "0.02", *extra,
    )  # fmt: skip


def test_loop_puts_the_sensitive_node_back_to_pass(cli, outlier_mlp, tmp_path):
    out = tmp_path / "q"
    r = _loop(cli, outlier_mlp, out)
    assert r.code == 0, r.stderr
    rep = report(out)
    assert rep["gate"]["all_int8"]["passed"] is False  # the all-int8 model fails the gate...
    ranking = [e["node"] for e in rep["sensitivity"]["ranking"]]
    assert ranking[0] == "fc2"  # ...because of fc2, which the ranking finds
    assert rep["sensitivity"]["baseline_error"] < 1e-9  # all switched off: the fp32 model
    assert rep["fallback"]["float_nodes"] == ["fc2"] and rep["fallback"]["passed"]
    assert "cost_ms" in rep["fallback"]["latency_batch1"]
    assert float_inputs_of(out / "model.onnx", "fc2")
    assert not float_inputs_of(out / "model.onnx", "fc1")
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["precision"] == "mixed" and manifest["passed"] is True


def test_loop_exits_1_with_the_report_when_nothing_passes(cli, outlier_mlp, tmp_path):
    out = tmp_path / "q"
    r = _loop(cli, outlier_mlp, out, "--max-fallback", "0")
    assert r.code == 1
    assert "no fallback passed" in r.stderr and str(out) in r.stderr
    rep = report(out)
    assert rep["passed"] is False and rep["sensitivity"]["ranking"]


def test_gate_passes_without_fallback_when_int8_is_good(cli, conv_net, tmp_path):
    out = tmp_path / "q"
    r = cli(
        "quantize",
        conv_net["model"],
        "-o",
        out,
        "--calibration",
        conv_net["calib"],
        "--eval",
        conv_net["eval"],
        "--metric",
        "cosine",
        "--max-drop",
        "0.01",
    )
    assert r.code == 0, r.stderr
    rep = report(out)
    assert rep["gate"]["all_int8"]["passed"] and "fallback" not in rep


def _npz(path: Path, x: np.ndarray) -> Path:
    np.savez(path, x=x)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nan", "holds NaN or Inf"),
        ("inf", "holds NaN or Inf"),
        ("empty", "holds no samples"),
        ("too_few", "--limit 100 asked, the data has only 8"),
        ("wrong_dtype", "is float64, the model expects float32"),
        ("missing", "data not found"),
    ],
)
def test_bad_calibration_data_exits_2_before_quantizing(cli, conv_net, tmp_path, case, message):
    x = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    args = []
    if case == "nan":
        x[5, 0, 0, 0] = np.nan
    elif case == "inf":
        x[2, 1, 3, 3] = -np.inf
    elif case == "empty":
        x = x[:0]
    elif case == "too_few":
        args = ["--limit", "100"]
    elif case == "wrong_dtype":
        x = x.astype(np.float64)
    data = tmp_path / "missing.npz" if case == "missing" else _npz(tmp_path / f"{case}.npz", x)
    out = tmp_path / "q"
    r = cli("quantize", conv_net["model"], "-o", out, "--calibration", data, *args)
    assert r.code == 2, (r.code, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()  # nothing was written: the check came first
    assert not list((tmp_path).glob(".edgesmith/cache/quantize/*.json"))  # nor calibrated


def test_static_method_without_data_is_a_usage_error(cli, conv_net, tmp_path):
    r = cli("quantize", conv_net["model"], "-o", tmp_path / "q", "--method", "percentile")
    assert r.code == 2 and "needs calibration data" in r.stderr


def test_calibration_cache_is_reused_across_settings(cli, conv_net, tmp_path):
    base = ["--calibration", conv_net["calib"], "--cache-dir", tmp_path / "cache"]
    first = tmp_path / "a"
    assert cli("quantize", conv_net["model"], "-o", first, *base).code == 0
    assert [p["cached"] for p in report(first)["calibration"]["passes"]] == [False]
    second = tmp_path / "b"  # other settings, same model, data and method
    r = cli(
        "quantize",
        conv_net["model"],
        "-o",
        second,
        *base,
        "--exclude",
        "fc",
        "--preset",
        "ort-cpu-avx2",
    )
    assert r.code == 0, r.stderr
    assert [p["cached"] for p in report(second)["calibration"]["passes"]] == [True]
    third = tmp_path / "c"  # another method: calibrates again
    assert (
        cli("quantize", conv_net["model"], "-o", third, *base, "--method", "percentile").code == 0
    )
    assert [p["cached"] for p in report(third)["calibration"]["passes"]] == [False]
    fourth = tmp_path / "d"  # other samples (a seeded draw): calibrates again
    assert cli("quantize", conv_net["model"], "-o", fourth, *base, "--limit", "16").code == 0
    assert [p["cached"] for p in report(fourth)["calibration"]["passes"]] == [False]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3


def test_print_recipe_round_trips(cli, conv_net, tmp_path):
    r = cli(
        "quantize",
        conv_net["model"],
        "-o",
        tmp_path / "q",
        "--calibration",
        conv_net["calib"],
        "--method",
        "entropy",
        "--exclude",
        "conv1",
        "--print-recipe",
    )
    assert r.code == 0
    from edgesmith.toolchain.core.recipe import load_recipe

    (tmp_path / "r.toml").write_text(r.stdout)
    stage = load_recipe(tmp_path / "r.toml").stages[0]
    assert stage.kind == "quantize" and stage.method == "entropy" and stage.exclude == ["conv1"]


def test_image_folder_calibration(cli, tmp_path):
    """An image folder calibrates a model with an image input; preprocessing is recorded."""
    from PIL import Image

    model = models.conv_net(tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "q"
    r = cli(
        "quantize",
        model,
        "-o",
        out,
        "--calibration",
        folder,
        "--image",
        "mean=0.5,0.5,0.5",
        "--image",
        "std=0.25,0.25,0.25",
    )
    assert r.code == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["image"] == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert report(out)["calibration"]["samples"] == 6


@pytest.mark.slow
def test_digits_int8_within_budget_and_recipe_stage(cli, digits, digits_onnx, tmp_path):
    """The digits CNN: int8 within 0.3 points of fp32 top-1, as a CLI command and in a recipe."""
    out = tmp_path / "q"
    r = cli(
        "quantize",
        digits_onnx,
        "-o",
        out,
        "--calibration",
        digits / "calib.npz",
        "--eval",
        digits / "test.npz",
        "--metric",
        "accuracy",
        "--max-drop",
        "0.003",
    )
    assert r.code == 0, r.stderr
    acc = next(c for c in report(out)["gate"]["all_int8"]["checks"] if c["metric"] == "accuracy")
    assert acc["drop"] <= 0.003
    recipe = tmp_path / "digits.toml"
    recipe.write_text(
        f'name = "digits-int8"\nout = "{tmp_path / "run"}"\n\n[source]\n'
        f'model = "examples.digits:make_model"\nweights = "{digits / "model.safetensors"}"\n\n'
        '[[stages]]\nkind = "export"\n\n'
        f'[[stages]]\nkind = "quantize"\ncalibration = "{digits / "calib.npz"}"\n'
        "limit = 128\nlatency_batches = []  # structure checked below (conftest.py)\n\n"
        f'[[stages]]\nkind = "validate"\ndata = "{digits / "test.npz"}"\n'
        'metrics = ["accuracy"]\nmax_drop = 0.003\n'
    )
    r = cli("run", recipe)
    assert r.code == 0, r.stderr
    stage = tmp_path / "run" / "1-quantize"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["artifact"]["precision"] == "int8"
    assert manifest["metrics"]["preset"]["name"].startswith("ort-cpu")
    assert manifest["metrics"]["why"]
    again = cli("run", recipe)
    assert again.code == 0 and "[1] quantize: cached" in again.stderr


@pytest.mark.slow
def test_minilm_int8_keeps_sentence_embeddings(cli, minilm, tmp_path):
    """The packaged all-MiniLM-L6-v2: calibrated on some stdlib sentences, checked on others."""
    from edgesmith.calibration.sentences import split_sentences

    train, test = split_sentences()
    (tmp_path / "calib.txt").write_text("\n".join(train[:48]) + "\n")
    (tmp_path / "eval.txt").write_text("\n".join(test[:48]) + "\n")
    r = cli("export", minilm, "-o", tmp_path / "fp32")
    assert r.code == 0, r.stderr
    out = tmp_path / "q"
    r = cli(
        "quantize",
        tmp_path / "fp32",
        "-o",
        out,
        "--calibration",
        tmp_path / "calib.txt",
        "--eval",
        tmp_path / "eval.txt",
        "--metric",
        "cosine",
        "--max-drop",
        "0.01",
        "--output",
        "sentence_embedding",
        "--seq-len",
        "64",
        "--threads",
        "2",
    )
    assert r.code == 0, r.stderr
    rep = report(out)
    cos = next(
        c
        for c in rep["gate"]["all_int8"]["checks"]
        if c["metric"] == "cosine" and c["output"] == "sentence_embedding"
    )
    assert cos["candidate"] >= 0.99
    assert rep["calibration"]["outlier_channels"]  # the [CLS] outlier channels were split off
    assert (out / "tokenizer.json").is_file()  # carried, so a build after this ships complete
