"""QDQ int8 models through onnxruntime's quantizer, with ranges we computed ourselves.

onnxruntime.quantization.quantize_static calibrates with its own calibrators unless it is given
a calibration cache (`calibration_cache_path`, a JSON of per-tensor ranges). We write our
streaming ranges (calibration/statistics.py) in that format and let its QDQ quantizer place the
Q/DQ nodes, quantize weights per channel and pick scales: onnxruntime never runs the model.

Outlier channels (split_outliers) are ours too: the few input channels of a MatMul whose range
dwarfs the others are computed in float beside it, so the int8 scale fits the rest.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
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
# Outlier channels kept in float


def _insert_after(model: onnx.ModelProto, after: dict[str, list[onnx.NodeProto]]) -> None:
    """Insert nodes after the node of each name ("": at the start), keeping the order valid."""
    nodes = list(after.get("", []))
    for n in model.graph.node:
        nodes.append(n)
        nodes.extend(after.get(n.name, []))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


@dataclass(frozen=True)
class SplitTarget:
    """An activation tensor and the MatMuls that multiply it by a constant 2-D weight."""

    tensor: str
    consumers: tuple[tuple[str, str], ...]  # (MatMul node, weight initializer [K, N])


def split_targets(model: onnx.ModelProto, nodes: Iterable[str]) -> list[SplitTarget]:
    """Inputs of the given MatMul nodes whose second input is a constant [K, N] weight.

    A tensor qualifies only if every quantized node reading it is such a MatMul: its int8
    range will exclude the outlier channels, which is exact only where those channels meet
    zeroed weight rows. A weight read by several nodes is left alone for the same reason.
    """
    wanted = set(nodes)
    inits = _initializers(model)
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    groups: dict[str, list[tuple[str, str]]] = {}
    spoiled: set[str] = set()
    for n in model.graph.node:
        if n.name not in wanted:
            continue
        w = n.input[1] if len(n.input) > 1 else ""
        splittable = (
            n.op_type == "MatMul" and w in inits and len(inits[w].dims) == 2 and uses.get(w, 0) == 1
        )
        if splittable:
            groups.setdefault(n.input[0], []).append((n.name, w))
        spoiled.update(i for i in n.input if not splittable or i != n.input[0])
    return [SplitTarget(t, tuple(c)) for t, c in groups.items() if t not in spoiled]


def outlier_channels(
    absmax: np.ndarray, ratio: float, max_channels: int, min_shrink: float = 1.0
) -> np.ndarray:
    """Channels whose max |x| exceeds `ratio` × the median channel's: at most `max_channels`,
    largest first. Empty when no channel stands out, or when leaving them out would shrink the
    tensor's range (so its int8 step) by less than `min_shrink`: then the float MatMul and Add
    the split adds would cost more time than the accuracy they buy."""
    med = float(np.median(absmax))
    if med <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(absmax)[::-1][:max_channels]
    idx = np.sort(order[absmax[order] > ratio * med]).astype(np.int64)
    rest = np.delete(absmax, idx)
    if idx.size == 0 or (rest.size and absmax.max() < min_shrink * rest.max()):
        return np.zeros(0, dtype=np.int64)
    return idx


@dataclass
class SplitResult:
    split: list[dict]  # per tensor: name, channels kept in float, their max, the rest's max
    float_nodes: list[str]  # the MatMuls added for the outlier channels: they stay in float
    masked: dict[str, np.ndarray]  # tensor → outlier channels its int8 range must leave out
    model: onnx.ModelProto


def split_outliers(
    model: onnx.ModelProto,
    targets: list[SplitTarget],
    channel_absmax: dict[str, np.ndarray],
    ratio: float,
    max_channels: int,
    min_shrink: float = 1.0,
) -> SplitResult:
    """Compute the few outlier input channels of each target in float, the rest in int8.

    X·W = X·W_rest + X[..., idx]·W[idx, :], with W_rest = W with the rows idx zeroed. X's int8
    range is then taken over the other channels only (`masked`, for calibration): the outlier
    channels saturate in int8, harmlessly, since they meet zero weights there. In BERT-family
    encoders one channel at the [CLS] token reaches 20-30 while the others stay under 6;
    quantizing it with the rest leaves the other tokens with a step of ~0.1. This is LLM.int8()'s
    decomposition with the channels chosen once, from calibration. SmoothQuant (moving the
    channel's scale into the weight) was measured on all-MiniLM-L6-v2 and did not help: the
    outlier is one token, so the weight row absorbs a range the other tokens never use.

    `model` must hold its weights; it is modified and returned.
    """
    inits = _initializers(model)
    producers = {o: n.name for n in model.graph.node for o in n.output}
    after: dict[str, list[onnx.NodeProto]] = {}  # node name ("" = graph start) → nodes to insert
    done, float_nodes, masked = [], [], {}
    for t in targets:
        a = channel_absmax.get(t.tensor)
        if a is None:
            continue
        idx = outlier_channels(a, ratio, max_channels, min_shrink)
        if idx.size == 0:
            continue
        base = t.tensor
        idx_name, outl = f"{base}_outlier_channels", f"{base}_outliers"
        model.graph.initializer.append(numpy_helper.from_array(idx, idx_name))
        after.setdefault(producers.get(t.tensor, ""), []).append(
            onnx.helper.make_node(
                "Gather", [t.tensor, idx_name], [outl], name=f"{base}/outliers", axis=-1
            )
        )
        readers = dict(t.consumers)
        for n in model.graph.node:
            if n.name not in readers:
                continue
            w_name = readers[n.name]
            w = numpy_helper.to_array(inits[w_name])
            rows = w[idx].copy()
            w_rest = w.copy()
            w_rest[idx] = 0
            inits[w_name].CopyFrom(numpy_helper.from_array(w_rest, w_name))
            rows_name = f"{w_name}_outlier_rows"
            model.graph.initializer.append(numpy_helper.from_array(rows, rows_name))
            y = n.output[0]
            n.output[0] = f"{y}_inliers"
            mm = onnx.helper.make_node(
                "MatMul", [outl, rows_name], [f"{y}_outliers"], name=f"{n.name}/outliers"
            )
            add = onnx.helper.make_node(
                "Add", [f"{y}_inliers", f"{y}_outliers"], [y], name=f"{n.name}/outliers/Add"
            )
            after.setdefault(n.name, []).extend([mm, add])
            float_nodes.append(mm.name)
        masked[t.tensor] = idx
        rest = np.delete(a, idx)
        done.append(
            {
                "tensor": t.tensor,
                "float_channels": idx.tolist(),
                "float_channel_max": round(float(a[idx].max()), 4),
                "int8_channel_max": round(float(rest.max()), 4) if rest.size else 0.0,
                "nodes": sorted(readers),
            }
        )
    _insert_after(model, after)
    return SplitResult(done, float_nodes, masked, model)


@dataclass
class SmoothResult:
    smoothed: list[dict]  # per tensor: name, its smoothed copy, range before and after
    renamed: dict[str, str]  # tensor → the smoothed tensor its quantized readers now read
    model: onnx.ModelProto


def smooth_channels(
    model: onnx.ModelProto,
    targets: list[SplitTarget],
    channel_absmax: dict[str, np.ndarray],
    alpha: float,
    masked: dict[str, np.ndarray] | None = None,
) -> SmoothResult:
    """Equalize the input channels of weighted MatMuls before int8 (SmoothQuant, Xiao et al.).

    X·W = (X·diag(1/s))·(diag(s)·W) with s_j = max|X_j|^alpha / max|W_j,:|^(1-alpha): the wide
    channels of X are narrowed and the matching weight rows widened, so one per-tensor
    activation scale fits all channels better while per-channel weight scales absorb the rest.
    On all-MiniLM-L6-v2 (after the outlier channels are split off) it raises the held-out
    nearest-neighbour agreement from 0.928 to 0.964 (benchmarks/quantize_minilm.py --variants).

    A Mul by 1/s (X_smooth = X·(1/s)) goes in front of the quantized readers only; float
    readers (residual Adds, LayerNorms, the outlier MatMuls) keep reading X. In a post-LN
    encoder X is a LayerNorm output that the residual also reads, so the Mul cannot fold into
    the LayerNorm. Folding it into a per-channel QuantizeLinear scale (exact, and valid QDQ)
    was tried and made the MiniLM model several times slower: onnxruntime's per-axis
    QuantizeLinear on the last axis runs element by element.
    Channels in `masked` (outliers computed in float) keep s = 1.
    `model` must hold its weights; it is modified and returned.
    """
    inits = _initializers(model)
    producers = {o: n.name for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    after: dict[str, list[onnx.NodeProto]] = {}
    done, renamed = [], {}
    for t in targets:
        a = channel_absmax.get(t.tensor)
        if a is None:
            continue
        ws = [numpy_helper.to_array(inits[w]) for _, w in t.consumers]
        w_max = np.max([np.abs(w).max(axis=1) for w in ws], axis=0).astype(np.float64)
        a64 = a.astype(np.float64)
        ok = (a64 > 0) & (w_max > 0)
        if masked and t.tensor in masked:
            ok[masked[t.tensor]] = False
        if ok.sum() < 2:
            continue
        s = np.ones_like(a64)
        s[ok] = a64[ok] ** alpha / w_max[ok] ** (1 - alpha)
        s[ok] /= np.exp(np.log(s[ok]).mean())  # geometric mean 1: values stay near their own
        name, inv = f"{t.tensor}_smooth", f"{t.tensor}_smooth_inverse"
        model.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), inv))
        after.setdefault(producers.get(t.tensor, ""), []).append(
            onnx.helper.make_node("Mul", [t.tensor, inv], [name], name=f"{t.tensor}/smooth")
        )
        for (node_name, w_name), w in zip(t.consumers, ws, strict=True):
            node = by_name[node_name]
            node.input[0] = name
            inits[w_name].CopyFrom(
                numpy_helper.from_array((w * s[:, None]).astype(w.dtype), w_name)
            )
        renamed[t.tensor] = name
        kept = a64[ok]
        done.append(
            {
                "tensor": t.tensor,
                "smoothed": name,
                "channel_max_before": round(float(kept.max()), 4),
                "channel_max_after": round(float((kept / s[ok]).max()), 4),
                "scale_sha256": hashlib.sha256((1 / s).astype(np.float32).tobytes()).hexdigest(),
                "nodes": sorted(n for n, _ in t.consumers),
            }
        )
    _insert_after(model, after)
    return SmoothResult(done, renamed, model)


def isolate_quantized_inputs(model: onnx.ModelProto, quantized: Iterable[str]) -> dict[str, str]:
    """Give the quantized readers of a tensor their own copy of it (an Identity) when float
    readers share it; returns tensor → copy.

    onnxruntime's QDQ quantizer rewires *every* reader of a quantized tensor to the DQ output
    (qdq_quantizer._add_qdq_pair_for_activation), so a residual Add or LayerNorm reading a
    quantized MatMul's input would get the rounded values too: on all-MiniLM-L6-v2 that alone
    cost more than half of the cosine lost. onnxruntime removes the Identity when it loads the
    model, so it costs nothing at run time.
    """
    q = set(quantized)
    consts = _constants(model)
    outputs = {o.name for o in model.graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in dict.fromkeys(n.input):
            if i and i not in consts:
                readers.setdefault(i, []).append(n)
    producers = {o: n.name for n in model.graph.node for o in n.output}
    copies: dict[str, str] = {}
    after: dict[str, list[onnx.NodeProto]] = {}
    for tensor, nodes in readers.items():
        qr = [n for n in nodes if n.name in q]
        if not qr or (len(qr) == len(nodes) and tensor not in outputs):
            continue
        copy = f"{tensor}_to_int8"
        after.setdefault(producers.get(tensor, ""), []).append(
            onnx.helper.make_node("Identity", [tensor], [copy], name=f"{tensor}/to_int8")
        )
        for n in qr:
            for k, i in enumerate(n.input):
                if i == tensor:
                    n.input[k] = copy
        copies[tensor] = copy
    _insert_after(model, after)
    return copies


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
        "OpTypesToExcludeOutputQuantization": list(preset.float_outputs),
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
    """Write the QDQ model of `model_path` to `out_path` using `ranges` (no calibration run).

    The plan's quantized readers of a tensor that float readers share get their own copy first
    (isolate_quantized_inputs), for every plan: a node the fallback loop puts back to float
    then reads float, not its neighbours' rounded input."""
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
    model = onnx.load(str(model_path))
    copies = isolate_quantized_inputs(model, plan.quantized(model))
    ranges = {**ranges, **{c: ranges[t] for t, c in copies.items() if t in ranges}}
    data = {
        k: (np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))) for k, (lo, hi) in ranges.items()
    }
    with tempfile.TemporaryDirectory(prefix="edgesmith-q-", dir=Path(out_path).parent) as tmp:
        model_path = save_model(model, Path(tmp) / "isolated.onnx")
        del model
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


INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QAttention")


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that read a DequantizeLinear output (QDQ), or integer ops (dynamic quantization)."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in INTEGER_OPS
        or (n.op_type not in ("QuantizeLinear", "DequantizeLinear") and set(n.input) & dq_out)
    ]
