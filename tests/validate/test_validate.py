"""validate: metrics on real data, reports, and the gate (with tampered negative controls)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper


@pytest.fixture(scope="module")
def digits_engine(digits, tmp_path_factory):
    """fp32 ONNX export and ort-cpu engine of the digits CNN."""
    from typer.testing import CliRunner

    from edgesmith.toolchain.cli.app import app

    root = tmp_path_factory.mktemp("val")
    run = CliRunner().invoke
    r = run(
        app,
        [
            "export",
            "examples.digits:make_model",
            "--weights",
            str(digits / "model.safetensors"),
            "-o",
            str(root / "onnx"),
        ],
    )
    assert r.exit_code == 0, r.stderr
    r = run(app, ["build", str(root / "onnx"), "-o", str(root / "engine")])
    assert r.exit_code == 0, r.stderr
    return root


def tamper(src: Path, dst: Path, noise: float, seed: int = 0) -> Path:
    """A copy of an ONNX model with Gaussian noise (relative to each weight's std) on weights."""
    m = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    for init in m.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim >= 2:
            w = w + rng.standard_normal(w.shape).astype(w.dtype) * noise * w.std()
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(m, str(dst))
    return dst


def test_engine_against_pytorch_source_passes(cli, digits, digits_engine, tmp_path):
    out = tmp_path / "report"
    r = cli(
        "validate",
        digits_engine / "engine",
        "--reference",
        "examples.digits:make_model",
        "--reference-weights",
        digits / "model.safetensors",
        "--data",
        digits / "test.npz",
        "--metric",
        "accuracy",
        "--metric",
        "agreement",
        "--max-drop",
        "0.003",
        "-o",
        out,
    )
    assert r.code == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["data"]["samples"] == 540
    checks = {(c["metric"], c["output"]): c for c in report["checks"]}
    acc = checks[("accuracy", "logits")]
    assert acc["reference"] > 0.9 and abs(acc["drop"]) <= 0.003 and acc["passed"]
    assert checks[("agreement", "logits")]["candidate"] >= 0.998
    assert checks[("max_abs_diff", "logits")]["candidate"] < 1e-4
    assert checks[("cosine", "logits")]["passed"] is None  # reported, not gated
    assert report["candidate"]["latency_ms"]["p50"] > 0 and report["candidate"]["size_bytes"] > 0
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert "PASS" in (out / "summary.md").read_text()
    assert "validation: PASS" in r.stdout and f"{100 * acc['candidate']:.2f}%" in r.stdout


def test_tampered_model_fails_the_gate(cli, digits, digits_engine, tmp_path):
    """Negative control: a model with noisy weights must fail, exit 1, with the report written."""
    bad = tamper(digits_engine / "onnx" / "model.onnx", tmp_path / "bad.onnx", noise=0.6)
    out = tmp_path / "report"
    r = cli(
        "validate",
        bad,
        "--reference",
        digits_engine / "onnx",
        "--data",
        digits / "test.npz",
        "--max-drop",
        "accuracy=0.003",
        "-o",
        out,
    )
    assert r.code == 1, r.stderr
    assert "FAIL: accuracy[logits]" in r.stderr
    report = json.loads((out / "report.json").read_text())
    acc = next(c for c in report["checks"] if c["metric"] == "accuracy")
    assert acc["drop"] > 0.003 and acc["passed"] is False
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("failures") == "1" and suite.find("testcase/failure") is not None


def test_slightly_tampered_passes_a_loose_budget(cli, digits, digits_engine, tmp_path):
    """The budget is what decides: the same kind of change passes when it is within budget."""
    meh = tamper(digits_engine / "onnx" / "model.onnx", tmp_path / "meh.onnx", noise=0.01)
    r = cli(
        "validate",
        meh,
        "--reference",
        digits_engine / "engine",
        "--data",
        digits / "test.npz",
        "--metric",
        "agreement",
        "--max-drop",
        "0.05",
        "-o",
        tmp_path / "rep",
    )
    assert r.code == 0, r.stderr


def test_npy_folder_and_cosine(cli, digits, digits_engine, tmp_path):
    z = np.load(digits / "test.npz")
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "x.npy", z["x"][:50])
    r = cli(
        "validate",
        digits_engine / "engine",
        "--reference",
        digits_engine / "onnx",
        "--data",
        folder,
        "--metric",
        "cosine",
        "--max-drop",
        "1e-6",
        "-o",
        tmp_path / "rep",
    )
    assert r.code == 0, r.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["data"]["labels"] is False
    assert not [c for c in report["checks"] if c["metric"] == "accuracy"]  # no labels, no accuracy


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"image": np.zeros((4, 1, 8, 8), np.float32)}, "no array for model input(s) ['x']"),
        ({"x": np.zeros((4, 1, 8, 8), np.float64)}, "'x' is float64, the model expects float32"),
        ({"x": np.zeros((4, 8, 8), np.float32)}, "'x' has rank 3"),
        ({"x": np.zeros((4, 1, 8, 9), np.float32)}, "'x' axis 3 is 9, the model expects 8"),
        (
            {"x": np.zeros((4, 1, 8, 8), np.float32), "labels": np.zeros(3, np.int64)},
            "'labels' must be 4",
        ),
        ({"x": np.zeros((0, 1, 8, 8), np.float32)}, "no samples"),
    ],
)
def test_data_that_does_not_fit_is_reported_before_running(
    cli, digits_engine, tmp_path, arrays, message
):
    np.savez(tmp_path / "bad.npz", **arrays)
    r = cli(
        "validate",
        digits_engine / "engine",
        "--reference",
        digits_engine / "onnx",
        "--data",
        tmp_path / "bad.npz",
        "-o",
        tmp_path / "rep",
    )
    assert r.code == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "rep").exists()


def test_unknown_metric_lists_known(cli, digits, digits_engine, tmp_path):
    r = cli(
        "validate",
        digits_engine / "engine",
        "--reference",
        digits_engine / "onnx",
        "--data",
        digits / "test.npz",
        "--metric",
        "f1",
        "-o",
        tmp_path / "rep",
    )
    assert r.code == 2
    assert "unknown metric 'f1'; available: accuracy, agreement, cosine, max_abs_diff" in r.stderr


def test_accuracy_without_labels_is_an_input_error(cli, digits, digits_engine, tmp_path):
    np.savez(tmp_path / "nolabels.npz", x=np.load(digits / "test.npz")["x"][:10])
    r = cli(
        "validate",
        digits_engine / "engine",
        "--reference",
        digits_engine / "onnx",
        "--data",
        tmp_path / "nolabels.npz",
        "--metric",
        "accuracy",
        "-o",
        tmp_path / "rep",
    )
    assert r.code == 2 and "needs labels" in r.stderr


@pytest.mark.slow
def test_minilm_text_against_hf_source(cli, minilm, tmp_path):
    """Real text through the model folder's tokenizer; cosine on the sentence embeddings."""
    import inspect
    import json as json_mod

    lines = [s.strip() for s in (inspect.getdoc(json_mod) or "").split(".") if len(s.strip()) > 20]
    (tmp_path / "sentences.txt").write_text("\n".join(lines[:16]))
    r = cli("export", minilm, "-o", tmp_path / "onnx")
    assert r.code == 0, r.stderr
    r = cli("build", tmp_path / "onnx", "-o", tmp_path / "engine")
    assert r.code == 0, r.stderr
    r = cli(
        "validate",
        tmp_path / "engine",
        "--reference",
        minilm,
        "--data",
        tmp_path / "sentences.txt",
        "--metric",
        "cosine",
        "--output",
        "sentence_embedding",
        "--max-drop",
        "1e-4",
        "--seq-len",
        "64",
        "-o",
        tmp_path / "rep",
    )
    assert r.code == 0, r.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    cos = next(
        c
        for c in report["checks"]
        if c["metric"] == "cosine" and c["output"] == "sentence_embedding"
    )
    assert cos["candidate"] > 0.9999 and cos["passed"]


@pytest.fixture(scope="module")
def two_output_onnx(tmp_path_factory):
    """tests.models:scores_and_embedding exported: 'scores' [N, 4] and 'embedding' [N, 16]."""
    import torch
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from edgesmith.toolchain.cli.app import make_app
    from tests.conftest import REPO
    from tests.models import scores_and_embedding

    root = tmp_path_factory.mktemp("two")
    torch.manual_seed(0)
    save_file(scores_and_embedding().state_dict(), str(root / "w.safetensors"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        r = CliRunner().invoke(make_app(), [
            "export", "tests.models:scores_and_embedding", "--weights",
            str(root / "w.safetensors"), "-o", str(root / "onnx"),
        ])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.standard_normal((64, 12)).astype(np.float32),
             labels=rng.integers(0, 4, 64))  # fmt: skip
    return root


def test_class_metrics_apply_to_the_class_scores_only(cli, two_output_onnx, tmp_path):
    """Integer labels, logits and a 16-wide embedding: accuracy and agreement are computed on
    the scores (width = the number of classes), never on the embedding's argmax."""
    root = two_output_onnx
    r = cli("validate", root / "onnx", "--reference", root / "onnx", "--data",
            root / "data.npz", "-o", tmp_path / "rep")  # fmt: skip
    assert r.code == 0, r.stderr
    checks = json.loads((tmp_path / "rep" / "report.json").read_text())["checks"]
    rows = {(c["metric"], c["output"]) for c in checks}
    assert ("accuracy", "scores") in rows and ("agreement", "scores") in rows
    assert not any(m in ("accuracy", "agreement") and o == "embedding" for m, o in rows)
    assert ("cosine", "embedding") in rows  # what does fit an embedding is still reported


def test_ambiguous_class_scores_are_not_guessed(cli, tmp_path):
    """Two 3-wide outputs, labels 0..2: neither is assumed to be the classifier; the gate asks
    for --output, and with it scores that one only."""
    import torch
    from safetensors.torch import save_file

    from tests.models import two_inputs

    torch.manual_seed(1)
    save_file(two_inputs().state_dict(), str(tmp_path / "w.safetensors"))
    r = cli("export", "tests.models:two_inputs", "--weights", tmp_path / "w.safetensors",
            "-o", tmp_path / "onnx")  # fmt: skip
    assert r.code == 0, r.stderr
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x=rng.standard_normal((32, 6)).astype(np.float32),
        y=rng.standard_normal((32, 4)).astype(np.float32),
        labels=rng.integers(0, 3, 32),
    )
    args = ("validate", tmp_path / "onnx", "--reference", tmp_path / "onnx", "--data",
            tmp_path / "d.npz")  # fmt: skip
    r = cli(*args, "-o", tmp_path / "rep")
    assert r.code == 2 and "could each be the class scores" in r.stderr and "--output" in r.stderr
    assert not (tmp_path / "rep").exists()
    r = cli(*args, "--output", "sum", "-o", tmp_path / "rep")
    assert r.code == 0, r.stderr
    checks = json.loads((tmp_path / "rep" / "report.json").read_text())["checks"]
    assert {c["output"] for c in checks if c["metric"] == "accuracy"} == {"sum"}
