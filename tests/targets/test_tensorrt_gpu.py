"""trt-gpu: option, profile, QDQ and compatibility logic everywhere; engines where a GPU is."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from targets.base import ENGINE_CONFIG, BuildConfig
from targets.tensorrt_config import (
    DeviceFacts,
    ShapeRange,
    check_feeds,
    compatibility_problems,
    count_quantize_nodes,
    describe_parser_errors,
    int8_setting,
    parse_options,
    profile_shapes,
)
from targets.tensorrt_gpu import TrtGpu
from toolchain.core.artifact import Format, IoSpec, ModelArtifact, Precision, TensorSpec
from toolchain.core.errors import InvalidInput, TargetUnavailable
from toolchain.core.onnx_model import io_from_onnx
from toolchain.core.registry import get_target

OPTIONS = TrtGpu.OPTIONS
REASON = TrtGpu().unavailable_reason()
needs_gpu = pytest.mark.skipif(REASON is not None, reason=f"trt-gpu unavailable: {REASON}")


# ---------------------------------------------------------------- tiny models, built in code


def _conv_net(path: Path, *, qdq: bool = False, seed: int = 0) -> Path:
    """x[batch,3,8,8] -> Conv(4) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y[batch,5].

    With qdq, the input and the conv weights go through Quantize/DequantizeLinear (int8,
    symmetric, per-channel weights), as a quantize stage would leave them.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, 4).astype(np.float32)
    fc_w = rng.normal(0, 0.5, (5, 4)).astype(np.float32)
    fc_b = rng.normal(0, 0.1, 5).astype(np.float32)
    inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(fc_w, "fc_w")]
    inits.append(numpy_helper.from_array(fc_b, "fc_b"))
    nodes = []
    x, weight = "x", "w"
    if qdq:
        w_scale = (np.abs(w).reshape(4, -1).max(axis=1) / 127).astype(np.float32)
        w_q = np.clip(np.round(w / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
        inits += [
            numpy_helper.from_array(w_q, "w_q"),
            numpy_helper.from_array(w_scale, "w_scale"),
            numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
            numpy_helper.from_array(np.array(0.03, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x"),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_x"),
            helper.make_node(
                "DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dq_w", axis=0
            ),
        ]
        x, weight = "x_dq", "w_dq"
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes += [
        helper.make_node("Conv", [x, weight, "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _custom_op_net(path: Path) -> Path:
    """A valid ONNX model whose one node TensorRT has no importer for."""
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example", name="odd_one")
    graph = helper.make_graph(
        [node],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _onnx_artifact(path: Path) -> ModelArtifact:
    return ModelArtifact.at(path, Format.onnx)


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _spec(name: str, dims: tuple, dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, dtype, dims)


IMAGE_IO = IoSpec((_spec("x", ("batch", 3, 8, 8)),), (_spec("y", ("batch", 5)),))
TEXT_IO = IoSpec(
    (_spec("ids", ("batch", "sequence"), "int64"), _spec("mask", ("batch", "sequence"), "int64")),
    (_spec("logits", ("batch", 2)),),
)


# ---------------------------------------------------------------- availability and import


def test_import_pulls_in_neither_tensorrt_nor_torch():
    code = (
        "import sys, targets.tensorrt_gpu; print('tensorrt' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_registry_resolves_trt_gpu():
    assert isinstance(get_target("trt-gpu"), TrtGpu)
    assert TrtGpu.name == "trt-gpu"


def test_unavailable_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    assert TrtGpu().unavailable_reason() == "tensorrt is not installed (pip install tensorrt)"


def test_unavailable_without_cuda_device(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = TrtGpu().unavailable_reason()
    assert reason is not None and reason.startswith("no CUDA device")


def test_unavailable_with_another_tensorrt_major(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="11.0.0"))
    reason = TrtGpu().unavailable_reason()
    assert reason is not None and "11.0.0 is not supported" in reason


# ---------------------------------------------------------------- options


def test_defaults():
    o = parse_options({}, OPTIONS)
    assert (o.fp16, o.int8, o.workspace_mb) == (False, None, None)
    assert (o.min_batch, o.opt_batch, o.max_batch) == (
        TrtGpu.DEFAULT_MIN_BATCH,
        TrtGpu.DEFAULT_OPT_BATCH,
        TrtGpu.DEFAULT_MAX_BATCH,
    )


def test_unknown_option_lists_the_known_ones():
    with pytest.raises(InvalidInput) as e:
        parse_options({"fp61": True}, OPTIONS)
    assert "['fp61']" in str(e.value) and "fp16, int8, workspace_mb" in str(e.value)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"fp16": "yes"}, "fp16: expected true or false"),
        ({"int8": 1}, "int8: expected true or false"),
        ({"workspace_mb": 0}, "workspace_mb: expected a positive integer"),
        ({"max_batch": True}, "max_batch: expected a positive integer"),
        ({"min_batch": 8, "max_batch": 4}, "min_batch <= opt_batch <= max_batch"),
        ({"opt_batch": 64}, "got 1, 64, 32"),
        ({"shapes": "x:1x3:2x3"}, "is not 'name:MIN:OPT:MAX'"),
        ({"shapes": "x:1x3:2xQ:4x3"}, "'2xQ' is not a shape"),
        ({"shapes": ["x:1x3:1x3:1x3", "x:1x3:1x3:1x3"]}, "given twice"),
        ({"shapes": 3}, "expected 'name:MIN:OPT:MAX' strings"),
        ({"timing_cache": "/nonexistent/timing.cache"}, "timing_cache: no such file"),
    ],
)
def test_bad_options_are_invalid_input(options, words):
    with pytest.raises(InvalidInput, match="trt-gpu") as e:
        parse_options(options, OPTIONS)
    assert words in str(e.value)


def test_unset_batch_bounds_follow_the_set_ones():
    o = parse_options({"max_batch": 4}, OPTIONS)
    assert (o.min_batch, o.opt_batch, o.max_batch) == (1, 1, 4)
    o = parse_options({"min_batch": 8}, OPTIONS)
    assert (o.min_batch, o.opt_batch, o.max_batch) == (8, 8, 32)


def test_shapes_string_and_list_forms_agree_and_allow_colons_in_names():
    text = "input:0:1x3:4x3:8x3, mask:1x2:1x2:1x2"
    listed = ["input:0:1x3:4x3:8x3", "mask:1x2:1x2:1x2"]
    a = parse_options({"shapes": text}, OPTIONS).shapes
    assert a == parse_options({"shapes": listed}, OPTIONS).shapes
    assert a["input:0"] == ShapeRange((1, 3), (4, 3), (8, 3))


# ---------------------------------------------------------------- profiles


def test_batch_profile_from_the_iospec():
    ranges = profile_shapes(IMAGE_IO, parse_options({"max_batch": 16, "opt_batch": 4}, OPTIONS))
    assert ranges == {"x": ShapeRange((1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))}


def test_static_inputs_need_no_profile():
    io = IoSpec((_spec("x", (1, 3, 8, 8)),), (_spec("y", (1, 5)),))
    assert profile_shapes(io, parse_options({}, OPTIONS)) == {}
    # An override for a static input must agree with it, and adds nothing.
    same = parse_options({"shapes": "x:1x3x8x8:1x3x8x8:1x3x8x8"}, OPTIONS)
    assert profile_shapes(io, same) == {}
    with pytest.raises(InvalidInput, match="fixes it at 8"):
        profile_shapes(io, parse_options({"shapes": "x:1x3x8x9:1x3x8x9:1x3x8x9"}, OPTIONS))


def test_non_batch_dynamic_axis_needs_shapes():
    with pytest.raises(InvalidInput) as e:
        profile_shapes(TEXT_IO, parse_options({}, OPTIONS))
    assert "'ids'" in str(e.value) and "'sequence'" in str(e.value) and "shapes" in str(e.value)


def test_shapes_override_replaces_the_derived_range():
    opts = parse_options({"shapes": ["ids:1x16:4x64:8x128", "mask:1x16:4x64:8x128"]}, OPTIONS)
    ranges = profile_shapes(TEXT_IO, opts)
    assert ranges["ids"] == ranges["mask"] == ShapeRange((1, 16), (4, 64), (8, 128))


def test_shared_axis_must_get_one_range():
    opts = parse_options({"shapes": ["ids:1x16:4x64:8x128", "mask:1x16:4x64:8x256"]}, OPTIONS)
    with pytest.raises(InvalidInput, match="axis 'sequence'.*must match"):
        profile_shapes(TEXT_IO, opts)


@pytest.mark.parametrize(
    "entry, words",
    [
        ("nope:1x3x8x8:1x3x8x8:1x3x8x8", "no input named 'nope'; the model's inputs: x:float32"),
        ("x:1x3x8:1x3x8:1x3x8", "has rank 3; the input has rank 4"),
        ("x:1x4x8x8:1x4x8x8:1x4x8x8", "sets axis 1 to 4; the model fixes it at 3"),
        ("x:4x3x8x8:2x3x8x8:8x3x8x8", "min <= opt <= max"),
    ],
)
def test_bad_overrides(entry, words):
    with pytest.raises(InvalidInput) as e:
        profile_shapes(IMAGE_IO, parse_options({"shapes": entry}, OPTIONS))
    assert words in str(e.value)


def test_profile_from_a_real_onnx_file(tmp_path):
    io = io_from_onnx(onnx.load(_conv_net(tmp_path / "m.onnx")))
    assert profile_shapes(io, parse_options({}, OPTIONS))["x"].max == (32, 3, 8, 8)


# ---------------------------------------------------------------- quantization


def test_quantize_nodes_are_counted_in_qdq_models_only(tmp_path):
    assert count_quantize_nodes(onnx.load(_conv_net(tmp_path / "f.onnx"))) == 0
    assert count_quantize_nodes(onnx.load(_conv_net(tmp_path / "q.onnx", qdq=True))) == 1


def test_quantize_nodes_inside_subgraphs_count():
    q = helper.make_node("QuantizeLinear", ["a", "s"], ["b"])
    body = helper.make_graph([q], "then", [], [helper.make_tensor_value_info("b", 3, [1])])
    branch = helper.make_node("If", ["cond"], ["out"], then_branch=body, else_branch=body)
    graph = helper.make_graph([branch], "g", [], [])
    assert count_quantize_nodes(helper.make_model(graph)) == 2


def test_int8_decision():
    p = Path("m.onnx")
    assert int8_setting(None, 0, p) == (False, None)
    assert int8_setting(False, 0, p) == (False, None)
    on, why = int8_setting(None, 3, p)
    assert on and why.startswith("enabled automatically") and "3 QuantizeLinear" in why
    on, why = int8_setting(True, 3, p)
    assert on and why.startswith("requested")
    with pytest.raises(InvalidInput, match="remove int8 = false"):
        int8_setting(False, 3, p)
    with pytest.raises(InvalidInput, match="no QuantizeLinear nodes; quantize it first"):
        int8_setting(True, 0, p)


# ---------------------------------------------------------------- compatibility and feeds


HERE = DeviceFacts(tensorrt="10.3.0", gpu="NVIDIA A10", compute_capability="8.6")


def test_same_machine_is_compatible():
    rec = {"tensorrt": "10.3.0", "gpu": "NVIDIA A10", "compute_capability": "8.6"}
    assert compatibility_problems(rec, HERE) == []


def test_other_tensorrt_or_gpu_is_not():
    rec = {"tensorrt": "10.1.0", "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    problems = compatibility_problems(rec, HERE)
    assert problems == [
        "TensorRT 10.1.0 at build, 10.3.0 here",
        "GPU NVIDIA L4 at build, NVIDIA A10 here",
        "compute capability 8.9 at build, 8.6 here",
    ]
    assert compatibility_problems({"target": "trt-gpu"}, HERE)[0].startswith(
        "engine.json does not record the TensorRT"
    )


def test_feeds_are_checked_against_io_and_profile():
    ranges = {"x": ShapeRange((1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))}
    ok = {"x": np.zeros((2, 3, 8, 8), np.float32)}
    check_feeds(IMAGE_IO, ranges, ok)
    cases = [
        ({}, "missing ['x']"),
        ({**ok, "z": ok["x"]}, "unexpected ['z']"),
        ({"x": np.zeros((2, 3, 8, 8))}, "is float64; the engine takes x:float32"),
        ({"x": np.zeros((2, 3, 8), np.float32)}, "has shape 2x3x8"),
        ({"x": np.zeros((2, 3, 9, 8), np.float32)}, "has shape 2x3x9x8"),
        ({"x": np.zeros((5, 3, 8, 8), np.float32)}, "accepts 1x3x8x8 to 4x3x8x8"),
    ]
    for feeds, words in cases:
        with pytest.raises(InvalidInput) as e:
            check_feeds(IMAGE_IO, ranges, feeds)
        assert words in str(e.value), (words, str(e.value))


def test_parser_errors_become_one_line():
    def err(node, name, op, desc):
        return SimpleNamespace(
            node=lambda: node, node_name=lambda: name, node_operator=lambda: op, desc=lambda: desc
        )

    msg = describe_parser_errors(
        Path("m.onnx"),
        [
            err(3, "odd_one", "Frobnicate", "No importer registered\nfor op: Frobnicate"),
            err(-1, "", "", "x"),
        ],
    )
    assert msg == (
        "m.onnx: TensorRT cannot parse node 3 'odd_one' (Frobnicate): "
        "No importer registered for op: Frobnicate (and 1 more error(s))"
    )
    assert "cannot parse the graph: bad" in describe_parser_errors(
        Path("m"), [err(-1, "", "", "bad")]
    )


# ---------------------------------------------------------------- build and load, no GPU needed


def test_build_rejects_bad_options_before_touching_tensorrt(tmp_path):
    model = _onnx_artifact(_conv_net(tmp_path / "m.onnx"))
    with pytest.raises(InvalidInput, match="unknown trt-gpu option"):
        TrtGpu().build(model, BuildConfig({"precision": "fp16"}), tmp_path / "out")
    with pytest.raises(InvalidInput, match="no QuantizeLinear"):
        TrtGpu().build(model, BuildConfig({"int8": True}), tmp_path / "out")
    qdq = _onnx_artifact(_conv_net(tmp_path / "q.onnx", qdq=True))
    with pytest.raises(InvalidInput, match="remove int8 = false"):
        TrtGpu().build(qdq, BuildConfig({"int8": False}), tmp_path / "out")


@pytest.mark.skipif(REASON is None, reason="this machine can build trt-gpu engines")
def test_build_without_tensorrt_or_gpu_says_why(tmp_path):
    model = _onnx_artifact(_conv_net(tmp_path / "m.onnx"))
    with pytest.raises(TargetUnavailable, match=re.escape(f"trt-gpu cannot build here: {REASON}")):
        TrtGpu().build(model, BuildConfig({"fp16": True}), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_load_refuses_another_targets_engine(tmp_path):
    (tmp_path / ENGINE_CONFIG).write_text(json.dumps({"target": "ort-cpu"}))
    with pytest.raises(InvalidInput, match="built for target 'ort-cpu', not 'trt-gpu'"):
        TrtGpu().load(ModelArtifact(tmp_path, Format.engine))


@pytest.mark.skipif(REASON is None, reason="this machine can run trt-gpu engines")
def test_load_without_tensorrt_or_gpu_says_why(tmp_path):
    (tmp_path / ENGINE_CONFIG).write_text(json.dumps({"target": "trt-gpu"}))
    with pytest.raises(TargetUnavailable, match=re.escape(f"here: {REASON}")):
        TrtGpu().load(ModelArtifact(tmp_path, Format.engine))


# ---------------------------------------------------------------- on a GPU with TensorRT


@pytest.fixture(scope="module")
def fp32_engine(tmp_path_factory):
    if REASON:
        pytest.skip(f"trt-gpu unavailable: {REASON}")
    d = tmp_path_factory.mktemp("fp32")
    src = _conv_net(d / "m.onnx")
    (d / "engine").mkdir()
    opts = {"min_batch": 1, "opt_batch": 2, "max_batch": 8, "workspace_mb": 256}
    art = TrtGpu().build(_onnx_artifact(src), BuildConfig(opts), d / "engine")
    return src, art


@pytest.mark.gpu
@needs_gpu
def test_fp32_engine_matches_onnxruntime_across_batches(fp32_engine):
    src, art = fp32_engine
    runner = TrtGpu().load(art)
    rng = np.random.default_rng(1)
    for batch in (1, 3, 8):
        x = rng.normal(size=(batch, 3, 8, 8)).astype(np.float32)
        got = runner.infer({"x": x})
        assert list(got) == ["y"] and got["y"].shape == (batch, 5)
        np.testing.assert_allclose(got["y"], _ort(src, {"x": x}), atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
@needs_gpu
def test_engine_directory_records_what_the_plan_is_tied_to(fp32_engine):
    import tensorrt as trt
    import torch

    _, art = fp32_engine
    cfg = json.loads((art.path / ENGINE_CONFIG).read_text())
    assert cfg["target"] == "trt-gpu" and cfg["tensorrt"] == trt.__version__
    assert cfg["gpu"] == torch.cuda.get_device_name()
    assert cfg["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability())
    assert (cfg["fp16"], cfg["int8"], cfg["workspace_mb"]) == (False, False, 256)
    assert cfg["profiles"] == {"x": {"min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [8, 3, 8, 8]}}
    assert (art.path / "engine.plan").stat().st_size > 0
    assert (art.path / "timing.cache").stat().st_size > 0
    assert art.format is Format.engine and art.precision is Precision.fp32
    assert art.io.input_names == ["x"]


@pytest.mark.gpu
@needs_gpu
def test_batch_beyond_the_profile_is_invalid_input(fp32_engine):
    runner = TrtGpu().load(fp32_engine[1])
    with pytest.raises(InvalidInput, match="accepts 1x3x8x8 to 8x3x8x8"):
        runner.infer({"x": np.zeros((9, 3, 8, 8), np.float32)})


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(
    "key, value, words",
    [("tensorrt", "9.9.9", "TensorRT 9.9.9 at build"), ("gpu", "Imaginary GPU", "GPU Imaginary")],
)
def test_load_refuses_an_engine_from_another_machine(fp32_engine, tmp_path, key, value, words):
    moved = tmp_path / "engine"
    shutil.copytree(fp32_engine[1].path, moved)
    cfg = json.loads((moved / ENGINE_CONFIG).read_text())
    (moved / ENGINE_CONFIG).write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(InvalidInput, match="does not fit this machine") as e:
        TrtGpu().load(ModelArtifact(moved, Format.engine))
    assert words in str(e.value) and "rebuild it here" in str(e.value)


@pytest.mark.gpu
@needs_gpu
def test_fp16_engine_matches_loosely_and_reuses_a_timing_cache(fp32_engine, tmp_path):
    src, first = fp32_engine
    opts = {"fp16": True, "max_batch": 4, "timing_cache": str(first.path / "timing.cache")}
    art = TrtGpu().build(_onnx_artifact(src), BuildConfig(opts), tmp_path)
    cfg = json.loads((tmp_path / ENGINE_CONFIG).read_text())
    assert cfg["fp16"] and cfg["timing_cache_seeded"] and art.precision is Precision.fp16
    x = np.random.default_rng(2).normal(size=(4, 3, 8, 8)).astype(np.float32)
    got = TrtGpu().load(art).infer({"x": x})["y"]
    np.testing.assert_allclose(got, _ort(src, {"x": x}), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@needs_gpu
def test_qdq_model_builds_int8_by_itself_and_matches_onnxruntime(tmp_path):
    src = _conv_net(tmp_path / "q.onnx", qdq=True)
    (tmp_path / "engine").mkdir()
    art = TrtGpu().build(_onnx_artifact(src), BuildConfig({"max_batch": 4}), tmp_path / "engine")
    cfg = json.loads((art.path / ENGINE_CONFIG).read_text())
    assert cfg["int8"] and "enabled automatically" in cfg["int8_reason"]
    assert art.precision is Precision.int8
    x = np.random.default_rng(3).normal(size=(4, 3, 8, 8)).astype(np.float32)
    got = TrtGpu().load(art).infer({"x": x})["y"]
    # Same integer arithmetic on both sides; only float rounding of the scales differs.
    np.testing.assert_allclose(got, _ort(src, {"x": x}), atol=1e-2, rtol=1e-2)


@pytest.mark.gpu
@needs_gpu
def test_parser_error_names_the_node(tmp_path):
    src = _custom_op_net(tmp_path / "custom.onnx")
    with pytest.raises(InvalidInput, match=r"TensorRT cannot parse node 0 'odd_one'") as e:
        TrtGpu().build(_onnx_artifact(src), BuildConfig({}), tmp_path)
    assert "\n" not in str(e.value)
