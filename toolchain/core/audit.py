"""What a model's zeros are, read from its ONNX (a stage's output or an engine's model): per
layer the weight sparsity and whether it follows the 2:4 pattern along its reduction axis,
and what the zeros save once the file is compressed.

The reduction axis is the node's: MatMul's weight B is [K, N] (axis 0), Gemm's is [K, N] or,
with transB, [N, K] (axis 1), Conv's is [M, C/group, kH, kW] (axis 1, the input channels).
"""

from __future__ import annotations

import lzma
import zlib
from pathlib import Path
from typing import Any

import numpy as np


def two_four(w: np.ndarray, axis: int) -> bool:
    """Whether every 4 consecutive weights along `axis` hold at least 2 zeros."""
    if w.ndim < 2 or w.shape[axis] % 4:
        return False
    groups = np.moveaxis(w, axis, -1).reshape(-1, 4)
    return bool(((groups != 0).sum(1) <= 2).all())


# op → (the weight's input index, its reduction axis; None: decided by transB)
WEIGHT_INPUTS = {
    "MatMul": (1, 0), "MatMulInteger": (1, 0), "MatMulIntegerToFloat": (1, 0),
    "DynamicQuantizeMatMul": (1, 0), "QLinearMatMul": (3, 0), "FusedMatMul": (1, None),
    "Gemm": (1, None), "FusedGemm": (1, None),
    "Conv": (1, 1), "FusedConv": (1, 1), "ConvInteger": (1, 1), "QLinearConv": (3, 1),
}  # fmt: skip


def _weight_axis(node, index: int) -> int | None:
    """The reduction axis of the node's input `index` when it is a weight, else None (the
    engines' fused and integer ops too: an ort-cpu engine's model is audited as it runs)."""
    at, axis = WEIGHT_INPUTS.get(node.op_type, (None, None))
    if at != index:
        return None
    if axis is None:  # [K, N], or [N, K] with transB
        trans = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 1 if trans else 0
    return axis


def weight_layers(model) -> list[dict[str, Any]]:
    """Per weight of a MatMul, Gemm or Conv (an initializer, or an int8 one behind a
    DequantizeLinear): name, shape, sparsity, 2:4, and whether it is quantized."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    dequantized = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    rows, seen = [], set()
    for node in model.graph.node:
        for idx, name in enumerate(node.input):
            axis = _weight_axis(node, idx)
            zero, quantized = np.zeros(1), name in dequantized
            if quantized:  # the stored weight is the DequantizeLinear's int8 input
                dq = dequantized[name]
                name = dq.input[0]
                if len(dq.input) > 2 and dq.input[2] in inits:
                    zero = numpy_helper.to_array(inits[dq.input[2]]).reshape(-1)[:1]
            if axis is None or name not in inits or name in seen:
                continue
            w = numpy_helper.to_array(inits[name])
            if w.dtype == np.uint8 and not quantized:
                continue  # an integer op's uint8 weight: its zero point is not read here
            quantized = quantized or w.dtype == np.int8
            if w.ndim < 2:
                continue
            if not (quantized or np.issubdtype(w.dtype, np.floating)):
                continue
            seen.add(name)
            zeros = w == np.atleast_1d(zero)[0]
            rows.append({
                "name": name, "op": node.op_type, "shape": list(w.shape), "axis": axis,
                "sparsity": round(float(zeros.mean()), 4),
                "two_four": two_four(np.where(zeros, 0, 1), axis), "quantized": quantized,
            })  # fmt: skip
    return rows


def compressed_sizes(path: Path) -> dict[str, int]:
    """Bytes of the model file as stored, deflated (zip's method) and xz-compressed."""
    data = Path(path).read_bytes()
    return {
        "raw": len(data),
        "deflate": len(zlib.compress(data, 6)),
        "xz": len(lzma.compress(data, preset=6)),
    }


def audit(path: Path) -> dict[str, Any]:
    """The sparsity audit of one .onnx file."""
    import onnx

    model = onnx.load(str(path))
    rows = weight_layers(model)
    total = sum(int(np.prod(r["shape"])) for r in rows)
    zeros = sum(r["sparsity"] * int(np.prod(r["shape"])) for r in rows)
    return {
        "layers": rows,
        "weight_sparsity": round(zeros / total, 4) if total else 0.0,
        "two_four_layers": [r["name"] for r in rows if r["two_four"]],
        "bytes": compressed_sizes(path),
    }


def describe(a: dict[str, Any]) -> list[str]:
    """The audit as lines for `edgesmith inspect`."""
    b = a["bytes"]
    lines = [
        f"weights:   {len(a['layers'])} layers, {a['weight_sparsity']:.1%} zero; "
        f"2:4 in {len(a['two_four_layers'])}",
        f"size:      {b['raw'] / 1e6:.2f} MB, deflate {b['deflate'] / 1e6:.2f} MB, "
        f"xz {b['xz'] / 1e6:.2f} MB",
    ]
    for r in a["layers"]:
        if r["sparsity"] > 0:
            lines.append(
                f"  {r['name']} {r['op']} {r['shape']}: {r['sparsity']:.1%} zero"
                + (", 2:4" if r["two_four"] else "")
            )
    return lines
