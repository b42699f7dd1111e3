"""fp16 for the GPU targets: an fp16 copy of a model with chosen layers kept in fp32.

Precision lives in the model (strong typing): TensorRT 10.12+ deprecates the FP16 builder
flag, and onnxruntime's CUDA provider has none. onnxruntime's own converter does the work;
this module checks the fallback list against the model and keeps Q/DQ scales in fp32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from edgesmith.targets.base import Option, listed
from edgesmith.toolchain.core.errors import InvalidInput

# The two build options of the GPU targets that ask for fp16 (their OPTIONS name these).
FP16 = Option("fp16", bool, False, "build from an fp16 copy of the model (fp32 inputs and outputs)")
FP32_LAYERS = Option(
    "fp32_layers",
    str | list[str],
    (),
    "node names or op types kept in fp32 in an fp16 build (a list, or comma-separated)",
)


def fp32_layers_option(values: Mapping[str, Any], target: str) -> tuple[str, ...]:
    """The checked fp32_layers option as a tuple of names; it needs fp16 = true."""
    names = listed(values["fp32_layers"])
    if names and not values["fp16"]:
        raise InvalidInput(f"{target} option fp32_layers: only with fp16 = true (all else is fp32)")
    return names


def fp32_layer_lists(
    model: onnx.ModelProto, wanted: Sequence[str], target: str = "trt-gpu"
) -> tuple[list[str], list[str]]:
    """The fp32_layers option split into node names and op types, each checked against the
    model: a name that is neither is a typo that would silently leave the layer in fp16."""
    names = {n.name for n in model.graph.node}
    ops = {n.op_type for n in model.graph.node}
    unknown = [w for w in wanted if w not in names and w not in ops]
    if unknown:
        raise InvalidInput(
            f"{target} option fp32_layers: {', '.join(map(repr, unknown))} is neither a node "
            f"name nor an op type of the model (op types here: {', '.join(sorted(ops))})"
        )
    return [w for w in wanted if w in names], [w for w in wanted if w not in names]


def fp16_model(model: onnx.ModelProto, nodes: list[str], ops: list[str], path: Path) -> Path:
    """Write an fp16 copy of the model to `path`: fp32 inputs and outputs, the named nodes and
    op types (and Q/DQ, whose scales stay fp32) kept in fp32, Casts between."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = sorted({*DEFAULT_OP_BLOCK_LIST, *ops, "QuantizeLinear", "DequantizeLinear"})
    half = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=blocked, node_block_list=nodes
    )
    onnx.save(half, str(path), save_as_external_data=half.ByteSize() > (1 << 30))
    return path
