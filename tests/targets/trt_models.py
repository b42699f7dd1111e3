"""Tiny ONNX models built in code, for the GPU targets' tests (real and fake TensorRT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_net(path: Path, *, qdq: bool = False, seed: int = 0) -> Path:
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


def custom_op_net(path: Path) -> Path:
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


def _save(nodes, inputs, outputs, path: Path, inits=(), opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def double_input_net(path: Path) -> Path:
    """x: float64 → Relu: builds in TensorRT (the parser reads DOUBLE as FLOAT), then could
    never be fed the float64 the model declares."""
    return _save(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 4])],
        path,
    )


def bf16_net(path: Path) -> Path:
    """bfloat16 in and out: Cast → Relu → Cast."""
    return _save(
        [
            helper.make_node("Cast", ["x"], ["f"], name="up", to=TensorProto.FLOAT),
            helper.make_node("Relu", ["f"], ["r"], name="relu"),
            helper.make_node("Cast", ["r"], ["y"], name="down", to=TensorProto.BFLOAT16),
        ],
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 4])],
        path,
    )


def nonzero_net(path: Path) -> Path:
    """NonZero: an output whose size depends on the values, not the shapes."""
    return _save(
        [helper.make_node("NonZero", ["x"], ["idx"], name="nonzero")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [2, "count"])],
        path,
    )


def residual_qdq_net(*, dq_into_add: bool = True, int8_weight: bool = False) -> onnx.ModelProto:
    """x → Q/DQ → Conv(w) → Add(residual) where the residual x goes through its own Q/DQ, as
    TensorRT's guide places it so the Add fuses into the Conv. int8_weight: the weight is
    stored int8 behind a DQ (no Q on a float weight)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32)
    scale = (np.abs(w).reshape(3, -1).max(axis=1) / 127).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(scale, "w_s"),
        numpy_helper.from_array(np.zeros(3, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_x"),
    ]
    if int8_weight:
        wq = np.clip(np.round(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
        inits.append(numpy_helper.from_array(wq, "wq"))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        nodes.append(helper.make_node("QuantizeLinear", ["w", "w_s", "w_zp"], ["wq"], axis=0))
    nodes += [
        helper.make_node("DequantizeLinear", ["wq", "w_s", "w_zp"], ["wd"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
    ]
    residual = "x"
    if dq_into_add:
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["rq"], name="q_r"),
            helper.make_node("DequantizeLinear", ["rq", "s", "zp"], ["rd"], name="dq_r"),
        ]
        residual = "rd"
    nodes.append(helper.make_node("Add", ["c", residual], ["y"], name="add"))
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def rank3_matmul_qdq(axis: int) -> onnx.ModelProto:
    """A batched MatMul with a rank-3 int8 weight [2, K, N], per-channel along `axis`."""
    w = np.ones((2, 4, 5), np.int8)
    scale = np.full(w.shape[axis], 0.1, np.float32)
    inits = [
        numpy_helper.from_array(w, "wq"),
        numpy_helper.from_array(scale, "w_s"),
        numpy_helper.from_array(np.zeros(w.shape[axis], np.int8), "w_zp"),
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["wq", "w_s", "w_zp"], ["wd"], name="dq_w", axis=axis),
        helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "mm3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
