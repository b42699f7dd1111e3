"""The QDQ model itself: TensorRT's rules, outlier channels, float readers, plans."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgesmith.calibration.sources import Dataset
from edgesmith.calibration.statistics import MethodSpec, Request, activation_tensors, calibrate
from edgesmith.targets.tensorrt_qdq import tensorrt_violations
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.quantize import qdq, rewrites
from edgesmith.toolchain.quantize.plan import activation_matmuls, make_plan
from edgesmith.toolchain.quantize.presets import preset as named_preset
from tests.quantize import models

# Tests that measure a preset's effect name the preset: the default follows this CPU's
# instruction set, and CI may run on a VNNI host or an AVX2-only one. The 7-bit-weight preset
# is the one whose int8 products are exact on both (no int16 saturation on AVX2).
PINNED_PRESET = "ort-cpu-avx2"


def run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _quantized_conv_net(cli, conv_net, out, *flags: str) -> onnx.ModelProto:
    r = cli("quantize", conv_net["model"], "-o", out, "--calibration", conv_net["calib"], *flags)
    assert r.code == 0, r.stderr
    return onnx.load(str(out / "model.onnx"))


def test_trt_gpu_qdq_follows_tensorrt_rules(cli, conv_net, tmp_path):
    out = tmp_path / "trt"
    model = _quantized_conv_net(cli, conv_net, out, "--target", "trt-gpu")
    assert tensorrt_violations(model) == []
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 6  # conv1, conv2, fc: activation and weight pairs
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    # conv weights per output channel (axis 0), Gemm(transB) weight on axis 0, biases float
    for name, channels in (("conv1", 8), ("conv2", 8), ("fc", 5)):
        dq = producers[by_name[name].input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[1]].shape == (channels,)
        assert {a.name: a.i for a in dq.attribute}.get("axis", 1) == 0
        assert by_name[name].input[2] in inits  # the bias is a float initializer
    # the Relus stay between the convs and their consumers, with no Q/DQ in between
    assert producers[by_name["relu1"].input[0]].name == "conv1"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["preset"]["name"] == "trt-gpu"
    assert "zero points 0" in manifest["metrics"]["why"]


def test_ort_gpu_takes_the_form_its_tensorrt_provider_runs(cli, conv_net, tmp_path):
    """The target declares its preset (targets/ort_gpu.py PRESETS); quantize asks it."""
    out = tmp_path / "ortgpu"
    model = _quantized_conv_net(cli, conv_net, out, "--target", "ort-gpu")
    assert tensorrt_violations(model) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["preset"]["name"] == "ort-gpu"
    zero_points = [
        numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("zero_point")
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    r = cli("quantize", conv_net["model"], "-o", tmp_path / "x", "--calibration",
            conv_net["calib"], "--target", "ort-gpu", "--preset", "ort-cpu-vnni")  # fmt: skip
    assert r.code == 2 and "is for target ort-cpu, not ort-gpu" in r.stderr


def test_tensorrt_rules_catch_a_cpu_model(cli, conv_net, tmp_path):
    """Negative control: the ort-cpu preset's uint8, asymmetric QDQ breaks the rules."""
    model = _quantized_conv_net(cli, conv_net, tmp_path / "cpu", "--preset", "ort-cpu-vnni")
    bad = tensorrt_violations(model)
    assert any("zero point" in b for b in bad)
    assert any("bias is dequantized" in b for b in bad)


def _split_model(tmp_path, outlier: float, ratio: float | None):
    path = models.residual_block(tmp_path / "block.onnx")
    calib = Dataset({"x": models.residual_data(64, seed=1, outlier=outlier)})
    model = onnx.load(str(path))
    preset = named_preset("ort-cpu-vnni")
    plan = make_plan(model, preset)
    masked = {}
    if ratio:
        targets = rewrites.split_targets(model, plan.quantized(model))
        chans = calibrate(path, calib, MethodSpec(), Request(channels=[t.tensor for t in targets]))
        rule = replace(preset, outlier_ratio=ratio, outlier_channels=8, outlier_min_shrink=1.0)
        res = rewrites.split_outliers(model, targets, chans.channel_absmax, rule)
        plan, masked = plan.with_float(res.float_nodes, "outliers"), res.masked
    prepared = qdq.save_model(model, tmp_path / f"prepared-{ratio}.onnx")
    tensors = activation_tensors(model, plan.op_types)
    ranges = calibrate(prepared, calib, MethodSpec(), Request(tensors, drop=masked)).ranges
    out = qdq.quantize_static_qdq(prepared, tmp_path / f"q-{ratio}.onnx", ranges, preset, plan)
    return path, prepared, out


def test_outlier_split_is_exact_in_float_and_rescues_int8(tmp_path):
    x = models.residual_data(32, seed=7, outlier=40.0)
    src, prepared, split_q = _split_model(tmp_path, 40.0, ratio=4.0)
    _, _, plain_q = _split_model(tmp_path, 40.0, ratio=None)
    ref = run(src, x)
    np.testing.assert_allclose(
        run(prepared, x), ref, atol=1e-5
    )  # the split changes nothing in float
    err_split = np.abs(run(split_q, x) - ref).mean()
    err_plain = np.abs(run(plain_q, x) - ref).mean()
    assert err_split < err_plain / 3, (err_split, err_plain)
    gathers = [n for n in onnx.load(str(prepared)).graph.node if n.op_type == "Gather"]
    assert gathers and numpy_helper.to_array(
        {i.name: i for i in onnx.load(str(prepared)).graph.initializer}[gathers[0].input[1]]
    ).tolist() == [3]


def test_float_readers_of_a_quantized_tensor_keep_float(tmp_path):
    """The residual Add reads x itself, not x rounded to int8 (onnxruntime would rewire it)."""
    src, _, q = _split_model(tmp_path, 0.0, ratio=None)
    model = onnx.load(str(q))
    assert [n.input[0] for n in model.graph.node if n.op_type == "Identity"] == ["x"]
    producers = {o: n for n in model.graph.node for o in n.output}
    add = next(n for n in model.graph.node if n.name == "residual")
    assert "x" in add.input and all(
        producers[i].op_type != "DequantizeLinear" for i in add.input if i in producers
    )
    mm = next(n for n in model.graph.node if n.name == "proj")
    assert producers[mm.input[0]].op_type == "DequantizeLinear"


def test_smoothing_is_exact_in_float_and_rescues_narrow_channels(cli, tmp_path):
    """Channels 100x apart: one per-tensor int8 scale rounds the narrow ones away; smoothing
    moves the spread into the per-channel weight scales."""
    src = models.residual_block(tmp_path / "block.onnx")
    spread = np.geomspace(0.05, 5.0, 16).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=models.residual_data(64, seed=1) * spread)
    x = models.residual_data(32, seed=7) * spread
    ref = run(src, x)
    errors, reports = {}, {}
    for alpha in ("0.75", "0"):
        out = tmp_path / f"q-{alpha}"
        r = cli(
            "quantize", src, "-o", out, "--calibration", tmp_path / "calib.npz",
            "--outlier-ratio", "0", "--smooth-alpha", alpha, "--preset", PINNED_PRESET,
        )  # fmt: skip
        assert r.code == 0, r.stderr
        errors[alpha] = np.abs(run(out / "model.onnx", x) - ref).mean()
        reports[alpha] = json.loads((out / "report.json").read_text())["calibration"]
    assert errors["0.75"] < errors["0"] / 1.5, errors
    (entry,) = reports["0.75"]["smoothed"]["tensors"]
    assert entry["tensor"] == "x" and entry["nodes"] == ["proj"]
    assert entry["channel_max_after"] < entry["channel_max_before"] / 3
    assert "smoothed" not in reports["0"]
    # in float the smoothed model is the original: X·W = (X/s)·(s·W)
    model = onnx.load(str(src))
    chans = calibrate(src, Dataset({"x": x}), MethodSpec(), Request(channels=["x"]))
    targets = rewrites.split_targets(model, ["proj"])
    res = rewrites.smooth_channels(model, targets, chans.channel_absmax, 0.75)
    assert res.renamed == {"x": "x_smooth"}
    np.testing.assert_allclose(
        run(qdq.save_model(model, tmp_path / "smooth.onnx"), x), ref, rtol=1e-4, atol=1e-4
    )


def test_plan_exclude_op_types_and_their_errors(conv_net):
    model = onnx.load(str(conv_net["model"]))
    preset = named_preset("ort-cpu-vnni")
    plan = make_plan(model, preset, exclude=["conv*"])
    assert "conv1" in plan.excluded and "conv2" in plan.excluded and "fc" in plan.quantized(model)
    plan = make_plan(model, preset, op_types=["Gemm"])
    assert plan.quantized(model) == ["fc"]
    with pytest.raises(InvalidInput, match="matches no node"):
        make_plan(model, preset, exclude=["Conv_1"])
    with pytest.raises(InvalidInput, match="cannot be quantized to QDQ; available"):
        make_plan(model, preset, op_types=["Conv", "Frobnicate"])
    with pytest.raises(InvalidInput, match="nothing to quantize"):
        make_plan(model, preset, op_types=["LayerNormalization"])


def test_attention_style_matmuls_stay_float_on_cpu(tmp_path):
    """A MatMul of two activations is left in float by the CPU presets, quantized for TensorRT."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="qk")],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4, 4]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    assert activation_matmuls(model) == ["qk"]
    with pytest.raises(InvalidInput, match="nothing to quantize"):
        make_plan(model, named_preset("ort-cpu-vnni"))
    assert make_plan(model, named_preset("trt-gpu")).quantized(model) == ["qk"]


def test_dynamic_method_needs_no_calibration(cli, conv_net, tmp_path):
    out = tmp_path / "dyn"
    r = cli("quantize", conv_net["model"], "-o", out, "--method", "dynamic")
    assert r.code == 0, r.stderr
    model = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert "ConvInteger" in ops or "MatMulInteger" in ops
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "dynamic" and report["nodes"]["quantized"] >= 1
    x = np.load(conv_net["eval"])["x"]
    ref, got = run(conv_net["model"], x), run(out / "model.onnx", x)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_ort_cpu_engine_moves_int8_bias_into_the_matmul(cli, tmp_path):
    """The engine build folds each bias Add into the MatMulIntegerToFloat before it, with
    outputs unchanged (a [batch, tokens, features] projection, as in a transformer)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"], name="proj"),
            helper.make_node("Add", ["xw", "b"], ["y"], name="proj_bias"),
        ],
        "proj",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 8])],
        [
            numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "proj.onnx"))
    np.savez(tmp_path / "calib.npz", x=models.residual_data(32, seed=1))
    q, engine = tmp_path / "q", tmp_path / "engine"
    r = cli("quantize", tmp_path / "proj.onnx", "-o", q, "--calibration", tmp_path / "calib.npz")
    assert r.code == 0, r.stderr
    r = cli("build", q, "--target", "ort-cpu", "-o", engine)
    assert r.code == 0, r.stderr
    assert json.loads((engine / "engine.json").read_text())["int8_bias_fused"] == 1
    built = onnx.load(str(engine / "model.onnx"))
    (mm,) = [n for n in built.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert list(mm.input)[6] == "b" and mm.output[0] == "y"
    assert not [n for n in built.graph.node if n.op_type == "Add"]
    x = models.residual_data(8, seed=5)
    np.testing.assert_allclose(run(engine / "model.onnx", x), run(q / "model.onnx", x), atol=1e-5)
