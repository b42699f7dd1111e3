"""The trt-gpu target's plain logic, on any machine: whether int8 and sparsity are on, which
layers stay fp32, what an engine is tied to, I/O types, feed checks and parser messages.

No TensorRT or CUDA here (targets/tensorrt_gpu.py calls those): all of it runs, and is
tested, where neither is installed. Options and profiles: targets/tensorrt_options.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgesmith.targets.tensorrt_options import Profile, shape_str, version_tuple
from edgesmith.toolchain.core.artifact import IoSpec
from edgesmith.toolchain.core.errors import InvalidInput

# Engine I/O types the runner exchanges with numpy, by trt.DataType member name. BF16 travels
# as ml_dtypes' bfloat16 (numpy has none); onnx reads bfloat16 tensors with the same type.
NUMPY_FROM_TRT: dict[str, str] = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}

# ---------------------------------------------------------------- quantization (pure)


def _nodes(model: onnx.ModelProto) -> Iterable[onnx.NodeProto]:
    """Every node: the main graph, subgraphs (If/Loop/Scan bodies) and local functions."""
    stack: list[Iterable[onnx.NodeProto]] = [model.graph.node, *(f.node for f in model.functions)]
    while stack:
        for node in stack.pop():
            yield node
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g.node)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(g.node for g in a.graphs)


def quantized_types(model: onnx.ModelProto) -> dict[str, int]:
    """QuantizeLinear nodes of the main graph by the type they quantize to (their zero point's
    type; uint8 without one, as ONNX defines), so fp8 Q/DQ is not counted as int8."""
    inits = {t.name: t.data_type for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == 4:  # TENSOR
            inits[n.output[0]] = n.attribute[0].t.data_type
    out: dict[str, int] = {}
    for n in _nodes(model):
        if n.op_type != "QuantizeLinear":
            continue
        attr = {a.name: a.i for a in n.attribute}.get("output_dtype", 0)
        zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
        code = attr or (inits.get(zp, 0) if zp else onnx.TensorProto.UINT8)
        name = onnx.helper.tensor_dtype_to_np_dtype(code).name if code else "unknown"
        out[name] = out.get(name, 0) + 1
    return out


def int8_setting(
    requested: bool | None, types: Mapping[str, int], path: Path
) -> tuple[bool, str | None]:
    """Whether the engine has int8 layers, and why (recorded in engine.json).

    Int8 comes only from the model's Q/DQ nodes (explicit quantization): TensorRT 10 builds a
    QDQ model strongly typed with no precision flag, and this target has no calibrator
    (implicit quantization is deprecated since TensorRT 10.1 and gone in 11). So int8 cannot
    be switched off for a model with int8 Q/DQ, nor on for one without.
    """
    n_int8 = types.get("int8", 0) + types.get("uint8", 0)
    listed = ", ".join(f"{k}: {v}" for k, v in sorted(types.items()))
    if n_int8:
        if requested is False:
            raise InvalidInput(
                f"{path}: the model has {n_int8} int8 QuantizeLinear node(s), which TensorRT "
                "builds only as int8; remove int8 = false"
            )
        how = "requested" if requested else "enabled automatically"
        return True, f"{how}: the model has {n_int8} int8 QuantizeLinear node(s) ({listed})"
    if requested:
        raise InvalidInput(
            f"{path}: int8 = true needs a quantized (QDQ) model and this one has no int8 "
            "QuantizeLinear nodes; quantize it first (edgesmith quantize), trt-gpu does not "
            "calibrate"
        )
    return False, None


def sparse_setting(requested: bool | None, model: onnx.ModelProto) -> tuple[bool, dict[str, Any]]:
    """Whether to build with SPARSE_WEIGHTS, and what engine.json records about it: the layers
    whose weights follow 2:4 along their reduction axis (toolchain/core/audit.py), which are
    the ones TensorRT may run on sparse tensor cores (Ampere and later)."""
    from edgesmith.toolchain.core.audit import weight_layers

    layers = [r for r in weight_layers(model) if r["two_four"]]
    on = bool(layers) if requested is None else requested
    record: dict[str, Any] = {"eligible_layers": [r["name"] for r in layers]}
    if on and not layers:
        record["note"] = "no layer follows 2:4: TensorRT will find nothing to run sparse"
    elif on and any(r["quantized"] for r in layers):
        record["note"] = (
            "int8 Q/DQ and 2:4 on the same layers: TensorRT may still pick dense kernels "
            "(TensorRT issue 4694); the engine's layer information says which it chose"
        )
    return on, record


# ---------------------------------------------------------------- I/O and layers (pure)


def io_type_problems(io: IoSpec, network_types: Mapping[str, str]) -> list[str]:
    """Where the network TensorRT parsed takes or gives another type than the model's I/O
    (the parser maps DOUBLE to FLOAT, for one): such an engine could never be fed as the
    model is. `network_types` maps each network I/O tensor to its trt.DataType name."""
    problems = []
    for t in (*io.inputs, *io.outputs):
        got = network_types.get(t.name)
        if got is None:
            problems.append(f"'{t.name}' is not an I/O tensor of the parsed network")
            continue
        as_numpy = NUMPY_FROM_TRT.get(got)
        if as_numpy is None:
            problems.append(f"'{t.name}' is {got} in TensorRT, which numpy cannot exchange")
        elif as_numpy != t.dtype:
            problems.append(
                f"'{t.name}' is {t.dtype} in the model but {as_numpy} in TensorRT "
                f"(export it with {as_numpy} I/O)"
            )
    return problems


# Datatype words in the engine inspector's strings, as precisions (Polygraphy matches
# datatype tokens too): 10.x writes one "Format/Datatype" string per tensor ("Row major linear
# FP32", "Thirty-two wide channel vectorized row major Int8 format", "Float" for a Myelin
# layer); 11 writes the datatype in a field of its own.
PRECISION_TOKENS = {
    "fp32": "fp32", "float": "fp32", "float32": "fp32",
    "fp16": "fp16", "half": "fp16", "float16": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
    "int8": "int8", "uint8": "uint8", "fp8": "fp8", "e4m3": "fp8", "int4": "int4",
    "fp4": "fp4", "int32": "int32", "int64": "int64", "bool": "bool",
}  # fmt: skip
DATATYPE_KEYS = ("Datatype", "DataType", "Format/Datatype")  # 11's own field first


def tensor_precision(tensor: Any) -> str:
    """The precision of one inspector tensor entry ("unknown" when it names none)."""
    if not isinstance(tensor, Mapping):
        return "unknown"
    for key in DATATYPE_KEYS:
        text = tensor.get(key)
        if not isinstance(text, str):
            continue
        for word in re.split(r"[^0-9a-z]+", text.lower()):
            word = word[1:] if word.startswith("k") and word[1:] in PRECISION_TOKENS else word
            if word in PRECISION_TOKENS:
                return PRECISION_TOKENS[word]
    return "unknown"


def layer_precisions(info: Mapping[str, Any]) -> dict[str, int]:
    """Layers by the precision of their first output, from the engine inspector's JSON
    (detailed verbosity), counted by datatype token: {"int8": 29, "fp32": 4, ...}."""
    counts: dict[str, int] = {}
    for layer in info.get("Layers", []):
        if not isinstance(layer, Mapping):
            counts["unnamed"] = counts.get("unnamed", 0) + 1
            continue
        outs = layer.get("Outputs") or [{}]
        kind = tensor_precision(outs[0])
        counts[kind] = counts.get(kind, 0) + 1
    return counts


# ---------------------------------------------------------------- compatibility (pure)


@dataclass(frozen=True)
class DeviceFacts:
    """What a TensorRT plan is tied to: the TensorRT version and the GPU."""

    tensorrt: str
    gpu: str
    compute_capability: str  # "8.6"

    def describe(self) -> str:
        return f"{self.gpu} (compute {self.compute_capability}) with TensorRT {self.tensorrt}"


# Version compatibility: which TensorRT majors load a version-compatible engine built by each
# major (at the build's version or later): 10.x engines on 10.x and on 11 (TensorRT 11's
# support matrix), 11.x on 11.x.
VERSION_COMPATIBLE_RUNTIMES: dict[int, tuple[int, ...]] = {10: (10, 11), 11: (11,)}


def compatibility_problems(recorded: Mapping[str, Any], here: DeviceFacts) -> list[str]:
    """Why TensorRT would refuse this engine here; [] if it would not.

    What TensorRT checks (its "Engine Compatibility" notes): the TensorRT version (exactly,
    or with version compatibility this version or a later one of a major that loads the
    build's: VERSION_COMPATIBLE_RUNTIMES) and the compute capability (exactly, or with
    hardware compatibility "ampere+" any GPU of compute 8.0 or later). The GPU's name is
    recorded but not checked: an A10 engine runs on an A40.
    """
    problems = []
    built, now = recorded.get("tensorrt"), here.tensorrt
    if built is None:
        problems.append("engine.json does not record the TensorRT version")
    elif recorded.get("version_compatible"):
        b, h = version_tuple(built), version_tuple(now)
        majors = VERSION_COMPATIBLE_RUNTIMES.get(b[0], (b[0],))
        if h[0] not in majors or h < b:
            later = " or ".join(f"{m}.x" for m in majors)
            problems.append(
                f"TensorRT {built} at build, {now} here (a version-compatible engine runs on "
                f"{built} or a later {later})"
            )
    elif str(built) != now:
        problems.append(f"TensorRT {built} at build, {now} here")
    cc = recorded.get("compute_capability")
    if cc is None:
        problems.append("engine.json does not record the compute capability")
    elif recorded.get("hardware_compatibility") == "ampere+":
        if version_tuple(now_cc := here.compute_capability) < (8, 0):
            problems.append(
                f"an ampere+ engine needs compute capability 8.0 or later, {now_cc} here"
            )
    elif str(cc) != here.compute_capability:
        problems.append(f"compute capability {cc} at build, {here.compute_capability} here")
    return problems


def check_feeds(io: IoSpec, profiles: Sequence[Profile], feeds: Mapping[str, np.ndarray]) -> int:
    """Feeds must name every input once, with its dtype, rank, fixed dims and a profile that
    holds their shapes. Returns that profile's index (the first that fits; 0 if none needed)."""
    missing = [n for n in io.input_names if n not in feeds]
    extra = [n for n in feeds if n not in io.input_names]
    if missing or extra:
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unexpected {extra}"] if extra else []
        raise InvalidInput(
            f"feeds: {'; '.join(parts)}; the engine takes "
            f"{', '.join(t.describe() for t in io.inputs)}"
        )
    shapes = {}
    for t in io.inputs:
        a = feeds[t.name]
        dtype, shape = np.asarray(a).dtype.name, tuple(np.shape(a))
        if dtype != t.dtype:
            raise InvalidInput(f"input '{t.name}' is {dtype}; the engine takes {t.describe()}")
        if len(shape) != t.rank or any(
            isinstance(d, int) and d != s for d, s in zip(t.dims, shape, strict=True)
        ):
            raise InvalidInput(
                f"input '{t.name}' has shape {shape_str(shape)}; the engine takes {t.describe()}"
            )
        shapes[t.name] = shape
    if not profiles:
        return 0
    for i, p in enumerate(profiles):
        if all(r.holds(shapes[n]) for n, r in p.items()):
            return i
    name = next(n for n, r in profiles[0].items() if not r.holds(shapes[n]))
    accepts = " or ".join(p[name].describe() for p in profiles if name in p)
    raise InvalidInput(
        f"input '{name}' has shape {shape_str(shapes[name])}; this engine accepts {accepts} "
        "(with the other inputs in the same profile); rebuild with a wider max_batch or shapes"
    )


def describe_parser_errors(path: Path, errors: Sequence[Any]) -> str:
    """One line from the ONNX parser's errors (trt.ParserError: node, name, op, desc)."""
    if not errors:
        return f"{path}: TensorRT could not parse the model (no error was reported)"
    e = errors[0]
    node = e.node()
    if node >= 0:
        # node_name/node_operator arrived during TensorRT 10; the index is always there.
        name = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        where = f"node {node}" + (f" '{name}'" if name else "") + (f" ({op})" if op else "")
    else:
        where = "the graph"
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return f"{path}: TensorRT cannot parse {where}: {' '.join(str(e.desc()).split())}{more}"
