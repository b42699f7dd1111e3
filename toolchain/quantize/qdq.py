"""QDQ int8 models through onnxruntime's quantizer, with ranges we computed ourselves.

onnxruntime.quantization.quantize_static calibrates with its own calibrators unless it is given
a calibration cache (`calibration_cache_path`, a JSON of per-tensor ranges). We write our
streaming ranges (calibration/statistics.py) in that format and let its QDQ quantizer place the
Q/DQ nodes, quantize weights per channel and pick scales: onnxruntime never runs the model.

SmoothQuant (Xiao et al., 2023) is ours too: onnxruntime's needs Intel Neural Compressor and
keeps calibration data in memory. Dividing a MatMul input's channel j by s_j and multiplying
row j of its weight by s_j leaves the product unchanged and moves activation outliers into the
weights, which are quantized per output channel and absorb them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from toolchain.core.errors import InvalidInput
from toolchain.quantize.presets import Preset

TWO_GB = 2**31
SMOOTH_SCALE_RANGE = (1e-4, 1e4)  # a zero or huge channel max must not give a degenerate scale


@contextlib.contextmanager
def quiet_ort_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger at WARNING; keep our output ours."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def _constants(model: onnx.ModelProto) -> set[str]:
    """Names of tensors whose value is fixed: initializers and Constant outputs."""
    out = set(_initializers(model))
    out.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return out


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes whose two inputs are both computed at run time (attention's Q·Kᵀ and P·V)."""
    consts = _constants(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[0] not in consts and n.input[1] not in consts
    ]


def match_nodes(model: onnx.ModelProto, patterns: Iterable[str]) -> list[str]:
    """Node names matching any fnmatch pattern ("*/attention/*", "/0/Conv_1")."""
    pats = list(patterns)
    return [n.name for n in model.graph.node if any(fnmatch.fnmatchcase(n.name, p) for p in pats)]


def check_op_types(op_types: Iterable[str]) -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry

    known = set(QDQRegistry)
    bad = [o for o in op_types if o not in known]
    if bad:
        raise InvalidInput(
            f"op type(s) {bad} cannot be quantized to QDQ; available: {', '.join(sorted(known))}"
        )
    return list(op_types)


@dataclass(frozen=True)
class Plan:
    """Which nodes are quantized: op types, and the nodes left in float (with why)."""

    op_types: tuple[str, ...]
    excluded: dict[str, str] = field(default_factory=dict)  # node → reason

    def quantized(self, model: onnx.ModelProto) -> list[str]:
        return [
            n.name
            for n in model.graph.node
            if n.op_type in self.op_types and n.name not in self.excluded
        ]

    def with_float(self, nodes: Iterable[str], reason: str) -> Plan:
        return Plan(self.op_types, {**self.excluded, **{n: reason for n in nodes}})


def make_plan(
    model: onnx.ModelProto,
    preset: Preset,
    op_types: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> Plan:
    """The preset's op types (or `op_types`), minus excluded patterns and, per the preset,
    MatMuls of two activations. An --exclude pattern that matches nothing is an error: a typo
    would otherwise quantize the node the user meant to protect."""
    types = tuple(check_op_types(op_types)) if op_types else preset.op_types
    excluded: dict[str, str] = {}
    for pattern in list(preset.exclude) + list(exclude):
        hits = match_nodes(model, [pattern])
        if not hits:
            sample = ", ".join(n.name for n in list(model.graph.node)[:5])
            raise InvalidInput(
                f"--exclude '{pattern}' matches no node (node names look like: {sample}, ...)"
            )
        excluded.update({h: f"excluded by pattern '{pattern}'" for h in hits})
    if not preset.activation_matmuls:
        for name in activation_matmuls(model):
            excluded.setdefault(
                name, f"preset {preset.name}: MatMul of two activations stays in float"
            )
    if not [n for n in model.graph.node if n.op_type in types and n.name not in excluded]:
        present = sorted({n.op_type for n in model.graph.node})
        raise InvalidInput(
            f"nothing to quantize: no node of op types {list(types)} is left "
            f"(the model has {', '.join(present)})"
        )
    return Plan(types, excluded)


# ---------------------------------------------------------------------------------------------
# SmoothQuant


@dataclass(frozen=True)
class SmoothTarget:
    """An activation tensor and the weighted nodes that read it (weight name, input-channel axis)."""

    tensor: str
    consumers: tuple[tuple[str, str, int], ...]  # (node, weight initializer, in-channel axis)


def smooth_targets(model: onnx.ModelProto, nodes: Iterable[str]) -> list[SmoothTarget]:
    """Inputs of the given MatMul/Gemm nodes that multiply a constant 2-D weight.

    A weight shared by several nodes, or a Gemm with transA, is left alone: scaling it for
    one reader would change the others.
    """
    wanted = set(nodes)
    inits = _initializers(model)
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    groups: dict[str, list[tuple[str, str, int]]] = {}
    for n in model.graph.node:
        if n.name not in wanted or n.op_type not in ("MatMul", "Gemm"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        w = n.input[1]
        if w not in inits or len(inits[w].dims) != 2 or uses.get(w, 0) != 1:
            continue
        if n.op_type == "Gemm" and attrs.get("transA", 0):
            continue
        axis = 1 if (n.op_type == "Gemm" and attrs.get("transB", 0)) else 0
        groups.setdefault(n.input[0], []).append((n.name, w, axis))
    return [SmoothTarget(t, tuple(c)) for t, c in groups.items()]


def channel_spread(absmax: np.ndarray) -> float:
    """max / median of the channel maxima: how much a few channels dominate the range."""
    med = float(np.median(absmax))
    return float(absmax.max()) / med if med > 0 else float("inf")


@dataclass
class SmoothResult:
    smoothed: list[dict]  # per tensor: name, channels, spread, consumers
    model: onnx.ModelProto


def smooth(
    model: onnx.ModelProto,
    targets: list[SmoothTarget],
    channel_absmax: dict[str, np.ndarray],
    alpha: float,
    min_spread: float,
) -> SmoothResult:
    """Insert x·(1/s) before each target whose channel maxima spread at least `min_spread`, and
    scale the weights' input channels by s, with s_j = a_j^alpha / w_j^(1-alpha).

    The inserted Mul feeds only the target nodes; other readers of x (a residual Add) keep x.
    `model` must hold its weights (loaded with external data); it is modified and returned.
    """
    inits = _initializers(model)
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    done, inserts = [], []
    for t in targets:
        a = channel_absmax.get(t.tensor)
        if a is None:
            continue
        spread = channel_spread(a)
        if spread < min_spread:
            continue
        weights = {w: numpy_helper.to_array(inits[w]) for _, w, _ in t.consumers}
        wmax = np.zeros_like(a)
        for _, w, axis in t.consumers:
            arr = np.abs(weights[w])
            wmax = np.maximum(wmax, arr.max(axis=1 - axis))
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.power(a, alpha) / np.power(wmax, 1 - alpha)
        s = np.where(np.isfinite(s) & (a > 0) & (wmax > 0), s, 1.0)
        s = np.clip(s, *SMOOTH_SCALE_RANGE).astype(np.float32)
        for _, w, axis in t.consumers:
            shape = (-1, 1) if axis == 0 else (1, -1)
            scaled = (weights[w] * s.reshape(shape)).astype(weights[w].dtype)
            inits[w].CopyFrom(numpy_helper.from_array(scaled, w))
        scale_name, out_name = f"{t.tensor}_smooth_scale", f"{t.tensor}_smoothed"
        model.graph.initializer.append(
            numpy_helper.from_array((1.0 / s).astype(np.float32), scale_name)
        )
        mul = onnx.helper.make_node(
            "Mul", [t.tensor, scale_name], [out_name], name=f"{t.tensor}/SmoothQuant/Mul"
        )
        readers = {c for c, _, _ in t.consumers}
        for n in model.graph.node:
            if n.name in readers:
                n.input[0] = out_name
        inserts.append((producer.get(t.tensor, -1), mul))
        done.append(
            {
                "tensor": t.tensor,
                "channels": int(a.size),
                "spread": round(spread, 2),
                "nodes": sorted(readers),
            }
        )
    # insert right after each producer (from the back, so earlier indices stay valid)
    nodes = list(model.graph.node)
    for pos, mul in sorted(inserts, key=lambda x: x[0], reverse=True):
        nodes.insert(pos + 1, mul)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return SmoothResult(done, model)


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Save, with weights in one external file beside it when the model is over 2 GB."""
    big = model.ByteSize() > TWO_GB - (1 << 26)
    if big:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, str(path))
    return path


def is_large(path: Path) -> bool:
    proto = onnx.load(str(path), load_external_data=False)
    return (
        any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer)
        and sum(p.stat().st_size for p in Path(path).parent.glob(Path(path).name + "*")) > TWO_GB
    )


# ---------------------------------------------------------------------------------------------
# Quantizing


def extra_options(preset: Preset) -> dict:
    return {
        "ActivationSymmetric": preset.activation_symmetric,
        "WeightSymmetric": preset.weight_symmetric,
        "QDQKeepRemovableActivations": preset.keep_removable_activations,
        "AddQDQPairToWeight": preset.add_qdq_pair_to_weight,
        "DedicatedQDQPair": preset.dedicated_qdq_pair,
        "QuantizeBias": preset.quantize_bias,
        # a Gemm/MatMul weight [K, N] has its output channels on axis 1
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
    }


def quantize_static_qdq(
    model_path: Path,
    out_path: Path,
    ranges: dict[str, tuple[float, float]],
    preset: Preset,
    plan: Plan,
    *,
    overrides: dict[str, dict] | None = None,
) -> Path:
    """Write the QDQ model of `model_path` to `out_path` using `ranges` (no calibration run)."""
    import inspect

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise InvalidInput(
            f"onnxruntime {onnxruntime.__version__} cannot take precomputed ranges "
            "(quantize_static has no calibration_cache_path); install onnxruntime >= 1.22"
        )
    options = extra_options(preset)
    if overrides:
        options["TensorQuantOverrides"] = overrides
    data = {
        k: (np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))) for k, (lo, hi) in ranges.items()
    }
    with tempfile.TemporaryDirectory(prefix="edgesmith-q-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        with quiet_ort_quantizer():
            quantize_static(
                str(model_path),
                str(out_path),
                calibration_data_reader=None,
                calibration_cache_path=str(cache),
                calibrate_method=CalibrationMethod.MinMax,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(plan.op_types),
                nodes_to_exclude=sorted(plan.excluded),
                per_channel=preset.per_channel,
                reduce_range=preset.reduce_range,
                activation_type=_qtype(preset.activation_type),
                weight_type=_qtype(preset.weight_type),
                use_external_data_format=is_large(model_path),
                extra_options=options,
            )
    return out_path


def quantize_dynamic_model(model_path: Path, out_path: Path, preset: Preset, plan: Plan) -> Path:
    """Dynamic quantization (Optimum's baseline): int8 weights, activations quantized per call
    from their own min/max. Only weighted MatMul/Gemm/Conv/Attention-style ops apply."""
    from onnxruntime.quantization import quantize_dynamic

    with quiet_ort_quantizer():
        quantize_dynamic(
            str(model_path),
            str(out_path),
            op_types_to_quantize=[o for o in plan.op_types if o in ("MatMul", "Gemm", "Conv")],
            nodes_to_exclude=sorted(plan.excluded),
            per_channel=preset.per_channel,
            reduce_range=preset.reduce_range,
            weight_type=_qtype("int8"),
            use_external_data_format=is_large(model_path),
            extra_options={"MatMulConstBOnly": True},
        )
    return out_path


def quantized_nodes(qdq: onnx.ModelProto) -> list[str]:
    """Nodes of a QDQ model that read at least one DequantizeLinear output (they run in int8)."""
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name
        for n in qdq.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and set(n.input) & dq_out
    ]
