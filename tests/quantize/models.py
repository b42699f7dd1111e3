"""Tiny seeded ONNX models for the quantization tests, built with onnx.helper (no export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


def _save(nodes, inits, inputs, outputs, path: Path, name: str) -> Path:
    graph = helper.make_graph(
        nodes, name, inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def outlier_mlp(path: Path, seed: int = 0) -> Path:
    """x[N,16] → MatMul → Add → Relu → h[N,32] → MatMul → Add → logits[N,4].

    Hidden unit 0 is ~1000x the others and meets a tiny weight, so the fp32 logits hardly see
    it; a per-tensor int8 range over h then rounds every other unit to 0. Quantizing the second
    MatMul destroys the logits; the first one quantizes fine. The loop must put back `fc2`.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((16, 32)).astype(np.float32) * 0.5
    w1[:, 0] = np.abs(w1[:, 0]) * 0 + 60.0  # unit 0: ~1000 for x around 1
    b1 = np.zeros(32, np.float32)
    w2 = rng.standard_normal((32, 4)).astype(np.float32)
    w2[0] = 1e-5
    b2 = rng.standard_normal(4).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "w2"], ["y0"], name="fc2"),
        helper.make_node("Add", ["y0", "b2"], ["logits"], name="fc2_bias"),
    ]
    return _save(
        nodes,
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        path,
        "outlier_mlp",
    )


def outlier_data(n: int, seed: int) -> np.ndarray:
    """Positive inputs (unit 0 of the outlier MLP is then always large)."""
    return np.abs(np.random.default_rng(seed).standard_normal((n, 16))).astype(np.float32) + 0.5


def conv_net(path: Path, seed: int = 0) -> Path:
    """Conv → Relu → Conv → Add(residual) → Relu → Flatten → Gemm(transB) → logits: the
    shapes TensorRT's explicit quantization rules talk about."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    b1 = rng.standard_normal(8).astype(np.float32) * 0.1
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    b2 = rng.standard_normal(8).astype(np.float32) * 0.1
    wf = rng.standard_normal((5, 8 * 8 * 8)).astype(np.float32) * 0.05
    bf = rng.standard_normal(5).astype(np.float32) * 0.1
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=pads),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=pads),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    return _save(
        nodes,
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "wf": wf, "bf": bf},
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        path,
        "conv_net",
    )


def residual_block(path: Path, seed: int = 0) -> Path:
    """x[N,T,16] → MatMul → Add(x) → LayerNorm → y: x feeds a MatMul and the residual Add."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, 16)).astype(np.float32) * 0.3
    scale = np.ones(16, np.float32)
    bias = np.zeros(16, np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="proj"),
        helper.make_node("Add", ["m", "x"], ["s"], name="residual"),
        helper.make_node(
            "LayerNormalization", ["s", "ln_scale", "ln_bias"], ["y"], name="ln", axis=-1
        ),
    ]
    return _save(
        nodes,
        {"w": w, "ln_scale": scale, "ln_bias": bias},
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 16])],
        path,
        "residual_block",
    )


def residual_data(n: int, seed: int, outlier: float | None = None) -> np.ndarray:
    """With `outlier`, channel 3 is that large at token 0 (BERT's [CLS] outlier in miniature)."""
    x = np.random.default_rng(seed).standard_normal((n, 6, 16)).astype(np.float32)
    if outlier is not None:
        x[:, 0, 3] = outlier
    return x


def embedding_net(path: Path, vocab: int = 2048, width: int = 160, seed: int = 0) -> Path:
    """ids[N,S] → Gather(table) → MatMul(w) → out[N,S,8], with a second, small Gather table
    (positions, under 1 MiB) and rows of very different scale in the big one."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, width)).astype(np.float32)
    table *= rng.uniform(0.01, 10.0, (vocab, 1)).astype(np.float32)  # per-row scales differ
    table[5] = 0.0  # an all-zero row
    pos = rng.standard_normal((16, width)).astype(np.float32)
    w = (rng.standard_normal((width, 8)) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], name="word_embeddings", axis=0),
        helper.make_node("Gather", ["pos", "pos_ids"], ["p"], name="position_embeddings"),
        helper.make_node("Add", ["emb", "p"], ["h"], name="add"),
        helper.make_node("MatMul", ["h", "w"], ["out"], name="proj"),
    ]
    inits = {"table": table, "pos": pos, "w": w,
             "pos_ids": np.arange(4, dtype=np.int64)[None].repeat(1, 0)}  # fmt: skip
    return _save(
        nodes,
        inits,
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4, 8])],
        path,
        "embedding",
    )
