"""trt-gpu: option, profile, QDQ and compatibility logic everywhere; engines where a GPU is."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import helper

from edgesmith.targets.base import ENGINE_CONFIG, BuildConfig
from edgesmith.targets.tensorrt_config import (
    DeviceFacts,
    check_feeds,
    compatibility_problems,
    describe_parser_errors,
    int8_setting,
    quantized_types,
)
from edgesmith.targets.tensorrt_gpu import TrtGpu
from edgesmith.targets.tensorrt_options import ShapeRange, parse_options, profile_shapes
from edgesmith.toolchain.core.artifact import Format, IoSpec, ModelArtifact, TensorSpec
from edgesmith.toolchain.core.errors import InvalidInput, TargetUnavailable
from edgesmith.toolchain.core.onnx_model import io_from_onnx
from edgesmith.toolchain.core.registry import get_target
from tests.targets.trt_models import conv_net as _conv_net

REASON = TrtGpu().unavailable_reason()
needs_gpu = pytest.mark.skipif(REASON is not None, reason=f"trt-gpu unavailable: {REASON}")


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
    assert (
        TrtGpu().unavailable_reason() == "tensorrt is not installed (pip install 'edgesmith[gpu]')"
    )


def test_unavailable_without_cuda_device(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = TrtGpu().unavailable_reason()
    assert reason is not None and reason.startswith("no CUDA device")


def test_unavailable_with_another_tensorrt_major(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="12.0.0"))
    reason = TrtGpu().unavailable_reason()
    assert reason is not None
    assert "12.0.0 is not supported (trt-gpu needs TensorRT 10.x or 11.x)" in reason


@pytest.mark.parametrize("version", ["10.0.1", "10.16.1.11", "11.4.0.106"])
def test_tensorrt_10_and_11_are_supported(monkeypatch, version):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__=version))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TrtGpu().unavailable_reason().startswith("no CUDA device")


# ---------------------------------------------------------------- options


def test_defaults():
    o = parse_options({})
    assert (o.fp16, o.int8, o.workspace_mb) == (False, None, None)
    assert (o.min_batch, o.opt_batch, o.max_batch) == (
        TrtGpu.DEFAULT_MIN_BATCH,
        TrtGpu.DEFAULT_OPT_BATCH,
        TrtGpu.DEFAULT_MAX_BATCH,
    )


def test_unknown_option_lists_the_known_ones():
    with pytest.raises(InvalidInput) as e:
        parse_options({"fp61": True})
    assert "'fp61' (did you mean 'fp16'?)" in str(e.value)
    assert "trt-gpu takes fp16, int8, workspace_mb" in str(e.value)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"fp16": "yes"}, "fp16: expected bool, got 'yes'"),
        ({"int8": 1}, "int8: expected bool, got 1"),
        ({"workspace_mb": 0}, "workspace_mb: expected int >= 1, got 0"),
        ({"max_batch": True}, "max_batch: expected int >= 1, got True"),
        ({"min_batch": 8, "max_batch": 4}, "min_batch <= opt_batch <= max_batch"),
        ({"opt_batch": 64}, "got 1, 64, 32"),
        ({"shapes": "x:1x3:2x3"}, "is not 'name:MIN:OPT:MAX'"),
        ({"shapes": "x:1x3:2xQ:4x3"}, "'2xQ' is not a shape"),
        ({"shapes": ["x:1x3:1x3:1x3", "x:1x3:1x3:1x3"]}, "given twice"),
        ({"shapes": 3}, "shapes: expected str | list[str], got 3"),
        ({"timing_cache": "/nonexistent/timing.cache"}, "timing_cache: no such file"),
    ],
)
def test_bad_options_are_invalid_input(options, words):
    with pytest.raises(InvalidInput, match="trt-gpu") as e:
        parse_options(options)
    assert words in str(e.value)


def test_unset_batch_bounds_follow_the_set_ones():
    o = parse_options({"max_batch": 4})
    assert (o.min_batch, o.opt_batch, o.max_batch) == (1, 1, 4)
    o = parse_options({"min_batch": 8})
    assert (o.min_batch, o.opt_batch, o.max_batch) == (8, 8, 32)


def test_shapes_string_and_list_forms_agree_and_allow_colons_in_names():
    text = "input:0:1x3:4x3:8x3, mask:1x2:1x2:1x2"
    listed = ["input:0:1x3:4x3:8x3", "mask:1x2:1x2:1x2"]
    a = parse_options({"shapes": text}).profiles[0].shapes
    assert a == parse_options({"shapes": listed}).profiles[0].shapes
    assert a["input:0"] == ShapeRange((1, 3), (4, 3), (8, 3))


# ---------------------------------------------------------------- profiles


def test_batch_profile_from_the_iospec():
    ranges = profile_shapes(IMAGE_IO, parse_options({"max_batch": 16, "opt_batch": 4}))
    assert ranges == [{"x": ShapeRange((1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))}]


def test_static_inputs_need_no_profile():
    io = IoSpec((_spec("x", (1, 3, 8, 8)),), (_spec("y", (1, 5)),))
    assert profile_shapes(io, parse_options({})) == []
    # An override for a static input must agree with it, and adds nothing.
    same = parse_options({"shapes": "x:1x3x8x8:1x3x8x8:1x3x8x8"})
    assert profile_shapes(io, same) == []
    with pytest.raises(InvalidInput, match="fixes it at 8"):
        profile_shapes(io, parse_options({"shapes": "x:1x3x8x9:1x3x8x9:1x3x8x9"}))


def test_non_batch_dynamic_axis_needs_shapes():
    with pytest.raises(InvalidInput) as e:
        profile_shapes(TEXT_IO, parse_options({}))
    assert "'ids'" in str(e.value) and "'sequence'" in str(e.value) and "shapes" in str(e.value)


def test_shapes_override_replaces_the_derived_range():
    opts = parse_options({"shapes": ["ids:1x16:4x64:8x128", "mask:1x16:4x64:8x128"]})
    (ranges,) = profile_shapes(TEXT_IO, opts)
    assert ranges["ids"] == ranges["mask"] == ShapeRange((1, 16), (4, 64), (8, 128))


def test_shared_axis_must_get_one_range():
    opts = parse_options({"shapes": ["ids:1x16:4x64:8x128", "mask:1x16:4x64:8x256"]})
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
        profile_shapes(IMAGE_IO, parse_options({"shapes": entry}))
    assert words in str(e.value)


def test_profile_from_a_real_onnx_file(tmp_path):
    io = io_from_onnx(onnx.load(_conv_net(tmp_path / "m.onnx")))
    assert profile_shapes(io, parse_options({}))[0]["x"].max == (32, 3, 8, 8)


# ---------------------------------------------------------------- quantization


def test_quantize_nodes_are_counted_in_qdq_models_only(tmp_path):
    assert quantized_types(onnx.load(_conv_net(tmp_path / "f.onnx"))) == {}
    assert quantized_types(onnx.load(_conv_net(tmp_path / "q.onnx", qdq=True))) == {"int8": 1}


def test_quantize_nodes_inside_subgraphs_count():
    q = helper.make_node("QuantizeLinear", ["a", "s"], ["b"])
    body = helper.make_graph([q], "then", [], [helper.make_tensor_value_info("b", 3, [1])])
    branch = helper.make_node("If", ["cond"], ["out"], then_branch=body, else_branch=body)
    graph = helper.make_graph([branch], "g", [], [])
    assert quantized_types(helper.make_model(graph)) == {"uint8": 2}  # no zero point: uint8


def test_int8_decision():
    p = Path("m.onnx")
    assert int8_setting(None, {}, p) == (False, None)
    assert int8_setting(False, {}, p) == (False, None)
    on, why = int8_setting(None, {"int8": 3}, p)
    assert on and why.startswith("enabled automatically") and "3 int8 QuantizeLinear" in why
    on, why = int8_setting(True, {"int8": 3}, p)
    assert on and why.startswith("requested")
    with pytest.raises(InvalidInput, match="remove int8 = false"):
        int8_setting(False, {"int8": 3}, p)
    with pytest.raises(InvalidInput, match="no int8 QuantizeLinear nodes; quantize it first"):
        int8_setting(True, {}, p)
    # fp8 Q/DQ is not int8: the engine has no int8 layers, and int8 = true is refused
    assert int8_setting(None, {"float8_e4m3fn": 2}, p) == (False, None)
    with pytest.raises(InvalidInput, match="no int8 QuantizeLinear"):
        int8_setting(True, {"float8_e4m3fn": 2}, p)


# ---------------------------------------------------------------- compatibility and feeds


HERE = DeviceFacts(tensorrt="10.3.0", gpu="NVIDIA A10", compute_capability="8.6")


def test_same_machine_is_compatible():
    rec = {"tensorrt": "10.3.0", "gpu": "NVIDIA A10", "compute_capability": "8.6"}
    assert compatibility_problems(rec, HERE) == []


def test_what_tensorrt_checks_is_what_load_checks():
    """TensorRT refuses another version or compute capability, not another GPU's name."""
    rec = {"tensorrt": "10.1.0", "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    assert compatibility_problems(rec, HERE) == [
        "TensorRT 10.1.0 at build, 10.3.0 here",
        "compute capability 8.9 at build, 8.6 here",
    ]
    same_cc = {"tensorrt": "10.3.0", "gpu": "NVIDIA A40", "compute_capability": "8.6"}
    assert compatibility_problems(same_cc, HERE) == []
    assert compatibility_problems({"target": "trt-gpu"}, HERE)[0].startswith(
        "engine.json does not record the TensorRT"
    )


@pytest.mark.parametrize(
    "built, here, ok",
    [("10.1.0", "10.3.0", True), ("10.3.0", "10.3.0", True), ("10.4.1", "10.3.0", False),
     ("9.3.0", "10.3.0", False),
     # TensorRT 11's support matrix: version-compatible 10.x engines run on 11
     ("10.13.3.9", "11.4.0.106", True), ("11.0.0.114", "11.4.0.106", True),
     ("11.4.0.106", "10.16.1.11", False), ("11.4.0.106", "11.0.0.114", False)],
)  # fmt: skip
def test_version_compatible_engines_run_on_a_later_version(built, here, ok):
    rec = {"tensorrt": built, "compute_capability": "8.6", "version_compatible": True}
    facts = DeviceFacts(tensorrt=here, gpu="NVIDIA A10", compute_capability="8.6")
    assert (compatibility_problems(rec, facts) == []) is ok


@pytest.mark.parametrize("cc, ok", [("8.0", True), ("9.0", True), ("12.0", True), ("7.5", False)])
def test_ampere_plus_engines_run_on_compute_8_and_later(cc, ok):
    rec = {"tensorrt": "10.3.0", "compute_capability": "8.6", "hardware_compatibility": "ampere+"}
    facts = DeviceFacts(tensorrt="10.3.0", gpu="any", compute_capability=cc)
    assert (compatibility_problems(rec, facts) == []) is ok
    same_cc = {**rec, "hardware_compatibility": "same_compute_capability"}
    assert (compatibility_problems(same_cc, facts) == []) is (cc == "8.6")


def test_feeds_pick_the_first_profile_that_holds_them():
    two = [
        {"x": ShapeRange((1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))},
        {"x": ShapeRange((5, 3, 8, 8), (8, 3, 8, 8), (16, 3, 8, 8))},
    ]
    assert check_feeds(IMAGE_IO, two, {"x": np.zeros((2, 3, 8, 8), np.float32)}) == 0
    assert check_feeds(IMAGE_IO, two, {"x": np.zeros((9, 3, 8, 8), np.float32)}) == 1
    with pytest.raises(InvalidInput, match="accepts 1x3x8x8 to 4x3x8x8 .* or 5x3x8x8 to 16x3x8x8"):
        check_feeds(IMAGE_IO, two, {"x": np.zeros((17, 3, 8, 8), np.float32)})


def test_feeds_are_checked_against_io_and_profile():
    ranges = [{"x": ShapeRange((1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))}]
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
    with pytest.raises(InvalidInput, match="no int8 QuantizeLinear"):
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


# ---------------------------------------------------------------- the newer options


@pytest.mark.parametrize(
    "options, words",
    [
        ({"profiles": [{"max_batch": 4}], "max_batch": 8}, "max_batch and profiles both given"),
        ({"profiles": []}, "expected a list of at least one table"),
        ({"profiles": [{"max_batch": 4}, 3]}, "profiles: expected list[table], got"),
        ({"profiles": [{"max_batch": 4, "fp16": True}]}, "unknown trt-gpu profiles[0] option"),
        ({"profiles": [{"max_batch": "4"}]}, "profiles[0] option max_batch: expected int >= 1"),
        ({"profiles": [{"min_batch": 8, "max_batch": 4}]}, "min_batch <= opt_batch"),
        ({"optimization_level": 6}, "optimization_level: expected one of 0, 1, 2, 3, 4, 5, got 6"),
        ({"optimization_level": -1}, "expected one of 0, 1, 2, 3, 4, 5, got -1"),
        ({"hardware_compatibility": "turing+"}, "one of none, ampere+, same_compute_capability"),
        ({"fp32_layers": ["fc"]}, "fp32_layers: only with fp16 = true"),
        ({"fp16": True, "fp32_layers": [3]}, "fp32_layers: expected str | list[str], got [3]"),
        ({"tf32": "on"}, "tf32: expected bool, got 'on'"),
        ({"timing_cache": "a", "shared_timing_cache": "b"}, "not both"),
        ({"shared_timing_cache": "/nonexistent/dir/t.cache"}, "not a file in an existing dir"),
    ],
)
def test_bad_newer_options(options, words):
    with pytest.raises(InvalidInput) as e:
        parse_options(options)
    assert words in str(e.value)


def test_fp32_layers_must_name_nodes_or_op_types(tmp_path):
    from edgesmith.targets.fp16 import fp32_layer_lists

    model = onnx.load(_conv_net(tmp_path / "m.onnx"))
    assert fp32_layer_lists(model, ["fc", "Relu"]) == (["fc"], ["Relu"])
    with pytest.raises(InvalidInput, match="'fcc' is neither a node name nor an op type"):
        fp32_layer_lists(model, ["fcc"])


def test_fp8_qdq_is_counted_apart_from_int8(tmp_path):
    from onnx import TensorProto, helper

    model = onnx.load(_conv_net(tmp_path / "q.onnx", qdq=True))
    assert quantized_types(model) == {"int8": 1}
    zp = helper.make_tensor("fp8_zp", TensorProto.FLOAT8E4M3FN, [], [0])
    model.graph.initializer.append(zp)
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    q.input[2] = "fp8_zp"
    assert quantized_types(model) == {"float8_e4m3fn": 1}


# ---------------------------------------------------------------- TensorRT's Q/DQ rules


def test_a_dq_on_a_residual_add_after_a_conv_is_allowed():
    from edgesmith.targets.tensorrt_qdq import tensorrt_violations
    from tests.targets.trt_models import residual_qdq_net

    assert tensorrt_violations(residual_qdq_net()) == []


def test_a_dq_feeding_an_add_of_two_activations_is_not():
    from onnx import helper

    from edgesmith.targets.tensorrt_qdq import tensorrt_violations
    from tests.targets.trt_models import residual_qdq_net

    model = residual_qdq_net()
    add = next(n for n in model.graph.node if n.op_type == "Add")
    model.graph.node.insert(0, helper.make_node("Relu", ["x"], ["xr"], name="relu"))
    add.input[0] = "xr"  # the Add's other input no longer comes from the Conv
    bad = tensorrt_violations(model)
    assert any("DQ feeds Add 'add'" in b for b in bad), bad


def test_int8_weights_behind_a_dq_are_accepted():
    from edgesmith.targets.tensorrt_qdq import tensorrt_violations
    from tests.targets.trt_models import residual_qdq_net

    assert tensorrt_violations(residual_qdq_net(int8_weight=True)) == []


@pytest.mark.parametrize("axis, ok", [(2, True), (-1, True), (1, False)])
def test_a_rank3_matmul_weight_has_its_channels_last(axis, ok):
    from edgesmith.targets.tensorrt_qdq import tensorrt_violations
    from tests.targets.trt_models import rank3_matmul_qdq

    bad = tensorrt_violations(rank3_matmul_qdq(axis))
    assert (bad == []) is ok, bad
    if not ok:
        assert "MatMul 'mm' has output channels on axis 2" in bad[0]


# ---------------------------------------------------------------- what real TensorRT writes


# The engine inspector's strings as TensorRT 10.x writes them (NVIDIA's QAT example, trtexec
# --exportLayerInfo) and as 11 writes them (the datatype in a field of its own).
REAL_10X_LAYERS = {"Layers": [
    {"Name": "conv1", "Outputs": [{"Format/Datatype":
        "Thirty-two wide channel vectorized row major Int8 format"}]},
    {"Name": "conv2", "Outputs": [{"Format/Datatype":
        "Four wide channel vectorized row major Int8 format"}]},
    {"Name": "head", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
    {"Name": "ln", "Outputs": [{"Format/Datatype": "Two wide channel vectorized row major "
                                                   "FP16 format"}]},
    {"Name": "myelin", "LayerType": "Myelin", "Outputs": [{"Format/Datatype": "Float"}]},
    {"Name": "myelin_h", "LayerType": "Myelin", "Outputs": [{"Format/Datatype": "Half"}]},
    {"Name": "shape", "Outputs": [{"Format/Datatype": "Row major linear Int32 format"}]},
]}  # fmt: skip
REAL_11_LAYERS = {"Layers": [
    {"Name": "conv1", "Outputs": [{"Format": "Thirty-two wide channel vectorized row major",
                                   "Datatype": "Int8"}]},
    {"Name": "head", "Outputs": [{"Format": "Row major linear", "Datatype": "FP32"}]},
    {"Name": "ln", "Outputs": [{"Format": "Row major linear", "Datatype": "kHALF"}]},
]}  # fmt: skip


def test_layer_precisions_count_datatype_tokens_not_first_words():
    from edgesmith.targets.tensorrt_config import layer_precisions

    assert layer_precisions(REAL_10X_LAYERS) == {"int8": 2, "fp32": 2, "fp16": 2, "int32": 1}
    assert layer_precisions(REAL_11_LAYERS) == {"int8": 1, "fp32": 1, "fp16": 1}
    assert layer_precisions({"Layers": ["conv1", {"Outputs": [{"Format/Datatype": "?"}]}]}) == {
        "unnamed": 1, "unknown": 1}  # fmt: skip


def _choices(profiles, major=10):
    from edgesmith.targets.tensorrt_options import PlanChoices

    return PlanChoices(profiles, int8=False, sparse=False, major=major)


FILES = {"engine": "engine.plan", "layers": "layers.json"}


def test_trtexec_takes_one_profile_without_and_several_with_profile_n():
    """sampleOptions.cpp: "Multiple --minShapes/--optShapes/--maxShapes without --profile are
    not allowed"; each triple follows its --profile=N."""
    import shlex

    from edgesmith.targets.tensorrt_options import trtexec_command

    one = {"x": ShapeRange((1, 3), (2, 3), (4, 3))}
    two = {"x": ShapeRange((5, 3), (8, 3), (16, 3))}
    args = shlex.split(trtexec_command("m.onnx", parse_options({}), _choices([one]), FILES))
    assert not [a for a in args if a.startswith("--profile")]
    triple = ["--minShapes=x:1x3", "--optShapes=x:2x3", "--maxShapes=x:4x3"]
    assert [a for a in args if "Shapes=" in a] == triple
    args = shlex.split(trtexec_command("m.onnx", parse_options({}), _choices([one, two]), FILES))
    order = [a for a in args if a.startswith("--profile=") or "Shapes=" in a]
    assert order == ["--profile=0", "--minShapes=x:1x3", "--optShapes=x:2x3", "--maxShapes=x:4x3",
                     "--profile=1", "--minShapes=x:5x3", "--optShapes=x:8x3",
                     "--maxShapes=x:16x3"]  # fmt: skip
    assert "--stronglyTyped" in args
    eleven = trtexec_command("m.onnx", parse_options({}), _choices([one], major=11), FILES)
    assert "--stronglyTyped" not in eleven and "--fp16" not in eleven


def test_same_compute_capability_needs_tensorrt_10_9():
    from edgesmith.targets.tensorrt_options import check_hardware_compatibility

    opts = parse_options({"hardware_compatibility": "same_compute_capability"})
    for ok in ("10.9.0.34", "10.16.1.11", "11.4.0.106"):
        check_hardware_compatibility(opts, ok)
    with pytest.raises(InvalidInput) as e:
        check_hardware_compatibility(opts, "10.8.0.43")
    assert str(e.value) == (
        "trt-gpu option hardware_compatibility = same_compute_capability needs TensorRT 10.9 "
        "or later (HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY); this is 10.8.0.43: "
        "use ampere+ or upgrade TensorRT"
    )
    check_hardware_compatibility(parse_options({"hardware_compatibility": "ampere+"}), "10.0.1")


def test_the_weak_typing_fallback_is_gone():
    """Every 10.x has STRONGLY_TYPED and 11 is strongly typed without it (the dumps say so,
    tests/targets/test_tensorrt_api.py): no precision-flag path is left in the target."""
    import inspect as _inspect

    from edgesmith.targets import tensorrt_gpu, tensorrt_options

    for module in (tensorrt_gpu, tensorrt_options):
        source = _inspect.getsource(module)
        assert "BuilderFlag.FP16" not in source and "BuilderFlag.INT8" not in source
        assert '"--fp16"' not in source and '"--int8"' not in source
    assert not hasattr(tensorrt_gpu, "strongly_typed")
