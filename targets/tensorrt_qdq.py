"""TensorRT's explicit quantization: the Q/DQ placement it takes, and the quantization preset
that produces it (toolchain/quantize/presets.py builds the trt-gpu preset from TRT_PRESET).

Generic quantization code knows nothing of these rules; the quantize stage asks this module
to check a model meant for trt-gpu before it is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.onnx_model import GraphIndex

TRT_WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")

# The trt-gpu quantization preset's fields (toolchain/quantize/presets.py: Preset).
TRT_PRESET = {
    "name": "trt-gpu",
    "target": "trt-gpu",
    "activation_type": "int8",
    "activation_symmetric": True,
    "op_types": TRT_WEIGHTED,
    "float_outputs": TRT_WEIGHTED,  # Q/DQ on inputs only: Conv→ReLU stays fusable
    "activation_matmuls": True,
    "outlier_ratio": None,
    "smooth_alpha": None,  # Q/DQ on weighted layers' inputs only; not measured on TensorRT
    "keep_removable_activations": True,
    "add_qdq_pair_to_weight": True,
    "dedicated_qdq_pair": True,
    "quantize_bias": False,
    "gather_int8": False,  # Q/DQ on weighted layers only
    "why": "TensorRT explicit quantization: symmetric int8 (zero points 0), per-channel "
    "weight scales on the output channel, Q/DQ on the inputs of weighted layers only, "
    "float biases and activations left for TensorRT to fuse",
}


def _weight_axis(node: onnx.NodeProto, rank: int) -> int:
    """The output-channel axis of a weighted node's weight (input 1) of this rank."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans = {a.name: a.i for a in node.attribute}.get("transB", 0)
        return 0 if trans else 1
    return rank - 1  # MatMul B [..., K, N]: N is last whatever the rank


def _fuses_into_add(add: onnx.NodeProto, dq_out: str, producers) -> bool:
    """A DQ on a residual Add's input is what TensorRT's guide asks for when the Add's other
    input comes from a Conv (or another weighted layer): the Add then fuses into it."""
    others = [i for i in add.input if i != dq_out]
    return any((p := producers.get(i)) is not None and p.op_type in TRT_WEIGHTED for i in others)


def tensorrt_violations(model: onnx.ModelProto) -> list[str]:
    """Where a QDQ model departs from what TensorRT's explicit quantization takes.

    Rules (TensorRT developer guide, "Explicit Quantization"): int8 Q/DQ in the default ONNX
    domain with zero points 0 (symmetric); per-tensor scales on activations; per-channel
    scales only on weights, along the output channel (the last axis of a MatMul weight of any
    rank); weights as Q→DQ pairs on float weights or a DQ on int8 weights; Q/DQ on the inputs
    of weighted layers (Conv, ConvTranspose, MatMul, Gemm) and on a residual Add's input when
    its other input comes from one (the guide's residual rule: the Add fuses into the Conv);
    each Q feeding DQs only; biases left in float for TensorRT to fuse.
    """
    index = GraphIndex(model)
    inits = {name: index.array(name) for name in index.initializers}
    producers, consumers = index.producers, index.consumers
    bad: list[str] = []
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            if n.op_type in ("Conv", "Gemm", "ConvTranspose") and len(n.input) > 2 and n.input[2]:
                b = producers.get(n.input[2])
                if b is not None and b.op_type == "DequantizeLinear":
                    bad.append(f"{n.name}: bias is dequantized (TensorRT takes a float bias)")
            continue
        if n.domain not in ("", "ai.onnx"):
            bad.append(f"{n.name}: {n.op_type} in domain '{n.domain}'")
        zp = inits.get(n.input[2]) if len(n.input) > 2 else None
        if zp is None or zp.dtype != np.int8 or (zp != 0).any():
            bad.append(
                f"{n.name}: zero point must be int8 0 (got {None if zp is None else zp.dtype})"
            )
        scale = inits.get(n.input[1])
        per_channel = scale is not None and scale.size > 1
        if n.op_type == "QuantizeLinear":
            if any(c.op_type != "DequantizeLinear" for c in consumers.get(n.output[0], [])):
                bad.append(f"{n.name}: a Q must feed DequantizeLinear only")
            continue
        q = producers.get(n.input[0])
        source = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else n.input[0]
        is_weight = source in inits
        quantized_weight = is_weight and q is None and inits[source].dtype == np.int8
        if is_weight and not quantized_weight and (q is None or q.op_type != "QuantizeLinear"):
            bad.append(f"{n.name}: weight without a Q→DQ pair or int8 values")
        for c in consumers.get(n.output[0], []):
            if (
                c.op_type == "Add"
                and not per_channel
                and _fuses_into_add(c, n.output[0], producers)
            ):
                continue
            if c.op_type not in TRT_WEIGHTED:
                bad.append(
                    f"{n.name}: DQ feeds {c.op_type} '{c.name}'; Q/DQ belong on weighted "
                    "layers' inputs and on residual Adds after them"
                )
                continue
            if per_channel:
                axis = {a.name: a.i for a in n.attribute}.get("axis", 1)
                rank = inits[source].ndim if is_weight else 0
                axis = axis + rank if axis < 0 else axis
                if not is_weight or list(c.input).index(n.output[0]) != 1:
                    bad.append(f"{n.name}: per-channel scale on an activation")
                elif axis != _weight_axis(c, rank):
                    bad.append(
                        f"{n.name}: per-channel axis {axis}, {c.op_type} '{c.name}' has output "
                        f"channels on axis {_weight_axis(c, rank)}"
                    )
    return bad


def check_qdq_rules(path: Path) -> None:
    """Refuse to hand TensorRT a model its explicit quantization would reject or mis-fuse."""
    bad = tensorrt_violations(onnx.load(str(path)))
    if bad:
        raise InvalidInput(
            f"the QDQ model breaks TensorRT's rules ({len(bad)}): {bad[0]}; check --op-types"
        )
