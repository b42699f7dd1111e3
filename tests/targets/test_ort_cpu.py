"""build --target ort-cpu: offline optimisation, .ort format, engine.json and manifest."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from edgesmith.toolchain.core.files import sha256_file


@pytest.fixture(scope="module")
def digits_onnx(digits, tmp_path_factory):
    from typer.testing import CliRunner

    from edgesmith.toolchain.cli.app import app

    out = tmp_path_factory.mktemp("exp") / "onnx"
    r = CliRunner().invoke(
        app,
        [
            "export",
            "examples.digits:make_model",
            "--weights",
            str(digits / "model.safetensors"),
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.stderr
    return out


def test_build_engine_and_manifest(cli, digits_onnx, tmp_path):
    out = tmp_path / "engine"
    r = cli("build", digits_onnx / "model.onnx", "--target", "ort-cpu", "-o", out)
    assert r.code == 0, r.stderr
    cfg = json.loads((out / "engine.json").read_text())
    assert cfg["target"] == "ort-cpu" and cfg["offline_opt_level"] == "extended"
    assert cfg["disabled_optimizers"] == ["SkipLayerNormFusion"]  # the device does the same
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == {n: sha256_file(out / n) for n in ("engine.json", "model.onnx")}
    src = json.loads((digits_onnx / "manifest.json").read_text())
    assert manifest["artifact"]["parent"] == src["artifact"]["sha256"]
    assert {"onnxruntime", "torch", "edgesmith"} <= set(manifest["tools"])
    assert manifest["config"]["target"] == "ort-cpu"
    assert manifest["recipe"]["stages"][0]["kind"] == "build"


def test_ort_format_with_required_operators(cli, digits_onnx, tmp_path):
    out = tmp_path / "engine"
    r = cli("build", digits_onnx, "--ort-format", "-o", out)  # the export dir works as input
    assert r.code == 0, r.stderr
    ops = (out / "required_operators.config").read_text()
    assert "ai.onnx;" in ops and "Conv" in ops and str(tmp_path) not in ops
    x = np.zeros((2, 1, 8, 8), np.float32)
    a = ort.InferenceSession(str(out / "model.ort")).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(out / "model.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_build_options_validated(cli, digits_onnx, tmp_path):
    r = cli("build", digits_onnx, "--option", "fast=1", "-o", tmp_path / "e")
    assert r.code == 2 and "unknown ort-cpu option" in r.stderr and "opt_level" in r.stderr
    r = cli("build", digits_onnx, "--opt-level", "turbo", "-o", tmp_path / "e")
    assert r.code == 2 and "opt_level: expected one of disable, basic" in r.stderr
    assert not (tmp_path / "e").exists()


def test_targets_lists_each_with_status(cli):
    """Each target's line says what its own check says, on a machine with a GPU or without."""
    from edgesmith.toolchain.core.registry import get_target

    r = cli("targets")
    assert r.code == 0
    lines = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert lines["ort-cpu"] == "available"
    for name in ("trt-gpu", "ort-gpu"):  # both GPU targets are listed, with why not
        why = get_target(name).unavailable_reason()
        assert lines[name] == (f"unavailable: {why}" if why else "available")


def test_unavailable_target_exits_3(cli, digits_onnx, tmp_path, monkeypatch):
    """A target that cannot build here (made so, so that this holds on a GPU machine too)."""
    from edgesmith.targets.tensorrt_gpu import TrtGpu

    monkeypatch.setattr(TrtGpu, "unavailable_reason", lambda self: "no CUDA device (test)")
    r = cli("build", digits_onnx, "--target", "trt-gpu", "-o", tmp_path / "e")
    assert r.code == 3 and "trt-gpu" in r.stderr and "no CUDA device (test)" in r.stderr
    assert not (tmp_path / "e").exists()


def test_int8_bias_moves_past_an_outlier_add():
    """MatMulIntegerToFloat → Add(outlier product) → Add(bias): the bias goes into the
    MatMul, the outlier Add stays, and the outputs do not change."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgesmith.targets.ort_cpu import fuse_int8_bias

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 127, (6, 4), dtype=np.int8), "w"),
        numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node(
            "MatMulIntegerToFloat",
            ["a", "w", "a_scale", "w_scale"],
            ["mm"],
            domain="com.microsoft",
            name="mm",
        ),  # fmt: skip
        helper.make_node("Add", ["mm", "outliers"], ["with_outliers"], name="outlier_add"),
        helper.make_node("Add", ["with_outliers", "bias"], ["y"], name="bias_add"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [3, 6]),
         helper.make_tensor_value_info("outliers", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    feeds = {"a": rng.integers(0, 255, (3, 6), dtype=np.uint8),
             "outliers": rng.standard_normal((3, 4)).astype(np.float32)}  # fmt: skip
    before = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    assert fuse_int8_bias(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMulIntegerToFloat", "Add"]
    assert model.graph.node[0].input[6] == "bias"
    onnx.checker.check_model(model)
    after = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def _masked_softmax_model(mask_value: float | None):
    """scores[B,2,4,4] + Where(mask == 0, mask_value, 0) → Softmax(-1); None: no mask."""
    from onnx import TensorProto, helper, numpy_helper

    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", 2, 4, 4])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", 1, 1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2, 4, 4])
    if mask_value is None:
        nodes = [helper.make_node("Softmax", ["scores"], ["y"], axis=-1, name="softmax")]
        return helper.make_model(helper.make_graph(nodes, "g", [scores], [y]),
                                 opset_imports=[helper.make_opsetid("", 18)])  # fmt: skip
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(mask_value, np.float32), "low"),
             numpy_helper.from_array(np.array(0.0, np.float32), "keep")]  # fmt: skip
    nodes = [
        helper.make_node("Equal", ["mask", "zero"], ["pad"], name="eq"),
        helper.make_node("Where", ["pad", "low", "keep"], ["additive"], name="where"),
        helper.make_node("Add", ["scores", "additive"], ["masked"], name="add"),
        helper.make_node("Softmax", ["masked"], ["y"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(nodes, "g", [scores, mask], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_masked_softmax_is_clamped_and_computes_the_same():
    import onnx

    from edgesmith.targets.ort_cpu import clamp_masked_softmax

    rng = np.random.default_rng(0)
    feeds = {"scores": (rng.standard_normal((3, 2, 4, 4)) * 30).astype(np.float32),
             "mask": np.array([[[[1, 1, 0, 0]]], [[[1, 1, 1, 1]]], [[[1, 0, 0, 0]]]])}  # fmt: skip
    for value in (float(np.finfo(np.float32).min), -1e4, float("-inf")):
        model = _masked_softmax_model(value)
        before = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
        assert clamp_masked_softmax(model) == 1
        onnx.checker.check_model(model)
        assert [n.op_type for n in model.graph.node][-4:] == ["ReduceMax", "Sub", "Max", "Softmax"]
        after = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
        assert np.abs(after - before).max() <= 1e-30  # e^-80 of the row maximum at most
        assert (after[0, :, :, 2:] < 1e-34).all()  # masked keys still weigh nothing


def test_a_softmax_without_a_mask_is_left_alone():
    from edgesmith.targets.ort_cpu import clamp_masked_softmax

    assert clamp_masked_softmax(_masked_softmax_model(None)) == 0
    assert clamp_masked_softmax(_masked_softmax_model(-5.0)) == 0  # not a mask constant
