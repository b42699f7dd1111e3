"""Graph rewrites before int8, each one pass over one GraphIndex (producers, consumers and
initializers built once): outlier channels kept in float (split_outliers), SmoothQuant-style
channel smoothing (smooth_channels), and private copies of tensors for quantized readers
(isolate_quantized_inputs)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgesmith.toolchain.core.onnx_model import GraphIndex
from edgesmith.toolchain.core.presets import Preset
from edgesmith.toolchain.quantize.plan import constants


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
    index = GraphIndex(model)
    inits = index.initializers
    groups: dict[str, list[tuple[str, str]]] = {}
    spoiled: set[str] = set()
    for n in model.graph.node:
        if n.name not in wanted:
            continue
        w = n.input[1] if len(n.input) > 1 else ""
        splittable = (
            n.op_type == "MatMul"
            and w in inits
            and len(inits[w].dims) == 2
            and len(index.readers(w)) == 1
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
    preset: Preset,
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

    Which channels: outlier_channels() with the preset's outlier_ratio, outlier_channels and
    outlier_min_shrink. `model` must hold its weights; it is modified and returned.
    """
    index = GraphIndex(model)
    inits = index.initializers
    after: dict[str, list[onnx.NodeProto]] = {}  # node name ("" = graph start) → nodes to insert
    done, float_nodes, masked = [], [], {}
    for t in targets:
        a = channel_absmax.get(t.tensor)
        if a is None:
            continue
        idx = outlier_channels(
            a, preset.outlier_ratio, preset.outlier_channels, preset.outlier_min_shrink
        )
        if idx.size == 0:
            continue
        base = t.tensor
        idx_name, outl = f"{base}_outlier_channels", f"{base}_outliers"
        model.graph.initializer.append(numpy_helper.from_array(idx, idx_name))
        after.setdefault(index.producer_name(t.tensor), []).append(
            onnx.helper.make_node(
                "Gather", [t.tensor, idx_name], [outl], name=f"{base}/outliers", axis=-1
            )
        )
        readers = dict(t.consumers)
        for n in model.graph.node:  # in graph order: the inserted nodes keep a valid order
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
    index = GraphIndex(model)
    inits, by_name = index.initializers, index.nodes
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
        after.setdefault(index.producer_name(t.tensor), []).append(
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
    consts = constants(model)
    index = GraphIndex(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in dict.fromkeys(n.input):  # a node reading a tensor twice is one reader
            if i and i not in consts:
                readers.setdefault(i, []).append(n)
    copies: dict[str, str] = {}
    after: dict[str, list[onnx.NodeProto]] = {}
    for tensor, nodes in readers.items():
        qr = [n for n in nodes if n.name in q]
        if not qr or (len(qr) == len(nodes) and tensor not in index.graph_outputs):
            continue
        copy = f"{tensor}_to_int8"
        after.setdefault(index.producer_name(tensor), []).append(
            onnx.helper.make_node("Identity", [tensor], [copy], name=f"{tensor}/to_int8")
        )
        for n in qr:
            for k, i in enumerate(n.input):
                if i == tensor:
                    n.input[k] = copy
        copies[tensor] = copy
    _insert_after(model, after)
    return copies
