"""Per-node sensitivity, and the loop that puts the most sensitive nodes back to float.

Sensitivity of a node: the relative output error (Σ(y − y_fp32)² / Σ y_fp32², averaged over
the float outputs) when that node alone runs quantized. Measuring it by quantizing each node
alone would cost one quantizer call and one session per node. Instead we build one model in
which every quantized input of every node goes through Where(selected == i, DQ(Q(x)), x): a
single session, and one pass over the samples per node, measures all of them. The rounding is
the same as in the real model (the same scales and zero points); only the kernels differ
(float arithmetic on dequantized values instead of int8 products), which changes the error by
float rounding, not by anything the ranking can see.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgesmith.calibration.statistics import PassSettings

SELECT_INPUT = "edgesmith_quantized_node"


def switchable_model(qdq: onnx.ModelProto, nodes: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """`qdq` (Q→DQ pairs on every quantized input, weights included, activations kept) with node
    i's quantized inputs live only when the int64 input SELECT_INPUT equals i.

    An op outside `nodes` that reads a quantized tensor (a Reshape after a quantized MaxPool)
    has that input switched with the tensor's producer, when the producer is one of `nodes`.
    Returns the model and the nodes that have at least one switchable input, in `nodes` order
    (their index is what SELECT_INPUT selects).
    """
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    wanted = set(nodes)
    edges: dict[str, list[tuple[onnx.NodeProto, int, str]]] = {}  # owner → (node, input, float)
    for node in g.node:
        for k, inp in enumerate(node.input):
            dq = producers.get(inp)
            if dq is None or dq.op_type != "DequantizeLinear" or node.op_type == "QuantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue  # an integer initializer without a float original stays quantized
            src = producers.get(q.input[0])
            owner = node.name if node.name in wanted else (src.name if src is not None else "")
            if owner in wanted:
                edges.setdefault(owner, []).append((node, k, q.input[0]))
    g.input.append(helper.make_tensor_value_info(SELECT_INPUT, onnx.TensorProto.INT64, [1]))
    switched = [n for n in nodes if n in edges]
    before: dict[str, list[onnx.NodeProto]] = {}
    head: list[onnx.NodeProto] = []
    for i, owner in enumerate(switched):
        cond, const = f"{SELECT_INPUT}_is_{i}", f"{SELECT_INPUT}_index_{i}"
        g.initializer.append(numpy_helper.from_array(np.array([i], dtype=np.int64), const))
        head.append(helper.make_node("Equal", [SELECT_INPUT, const], [cond]))
        for node, k, float_src in edges[owner]:
            out = f"{node.input[k]}_switch_{i}_{node.name}_{k}"
            before.setdefault(node.name, []).append(
                helper.make_node("Where", [cond, node.input[k], float_src], [out])
            )
            node.input[k] = out
    ordered = list(head)
    for n in g.node:
        ordered.extend(before.get(n.name, []))
        ordered.append(n)
    del g.node[:]
    g.node.extend(ordered)
    return model, switched


def relative_error(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    """Mean over float outputs of Σ(c − r)² / Σ r²."""
    errs = []
    for k, r in reference.items():
        if not np.issubdtype(r.dtype, np.floating):
            continue
        r64, c64 = r.astype(np.float64), candidate[k].astype(np.float64)
        errs.append(float(((c64 - r64) ** 2).sum() / max(float((r64**2).sum()), 1e-30)))
    return float(np.mean(errs)) if errs else 0.0


@dataclass
class Sensitivity:
    ranking: list[tuple[str, float]]  # most sensitive first
    baseline_error: float  # every node in float: should be ~0 (a check on the switching)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": "relative output error Σ(y−y_fp32)²/Σy_fp32² with the node alone quantized",
            "ranking": [{"node": n, "error": e} for n, e in self.ranking],
            "baseline_error": self.baseline_error,
            "seconds": round(self.seconds, 2),
        }


def node_sensitivity(
    switch_path: Path,
    switched: list[str],
    batches: list[dict[str, np.ndarray]],
    reference: list[dict[str, np.ndarray]],
    run: PassSettings = PassSettings(),
) -> Sensitivity:
    """Run the switchable model once per node (and once with none) over `batches`."""
    from edgesmith.toolchain.core.ort_session import SessionSettings, ort_session

    start = time.perf_counter()
    sess = ort_session(switch_path, SessionSettings(threads=run.threads))  # as the engine's
    names = [o.name for o in sess.get_outputs()]

    def error(index: int) -> float:
        sel = np.array([index], dtype=np.int64)
        errs = []
        for feeds, ref in zip(batches, reference, strict=True):
            outs = dict(zip(names, sess.run(names, {**feeds, SELECT_INPUT: sel}), strict=True))
            errs.append(relative_error(ref, outs))
        return float(np.mean(errs))

    baseline = error(-1)
    order = range(len(switched))
    if run.track is not None:
        order = run.track(order, len(switched), f"sensitivity of {len(switched)} quantized nodes")
    values = {switched[i]: error(i) for i in order}
    ranking = sorted(values.items(), key=lambda kv: kv[1], reverse=True)
    return Sensitivity(ranking, baseline, time.perf_counter() - start)


@dataclass
class Step:
    float_nodes: list[str]
    passed: bool
    verdict: str
    checks: list[dict]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "float_nodes": list(self.float_nodes),
            "passed": self.passed,
            "verdict": self.verdict,
            "checks": self.checks,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class LoopResult:
    steps: list[Step] = field(default_factory=list)
    passed: bool = False
    path: Path | None = None  # the model of the last step

    @property
    def float_nodes(self) -> list[str]:
        return self.steps[-1].float_nodes if self.steps else []


def fallback_loop(
    ranking: list[str],
    make: Callable[[list[str], int], Path],
    check: Callable[[Path], tuple[bool, str, list[dict]]],
    max_fallback: int | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> LoopResult:
    """Put the most sensitive nodes back to float one at a time until `check` passes.

    `make(float_nodes, step)` writes a model with those nodes in float and returns its path;
    `check(path)` returns (passed, verdict, checks). Stops at the first pass, or after
    `max_fallback` nodes (default: all of them) with passed False.
    """
    result = LoopResult()
    limit = len(ranking) if max_fallback is None else min(max_fallback, len(ranking))
    for k in range(1, limit + 1):
        start = time.perf_counter()
        nodes = ranking[:k]
        path = make(nodes, k)
        passed, verdict, checks = check(path)
        result.steps.append(Step(nodes, passed, verdict, checks, time.perf_counter() - start))
        result.path = path
        log(f"fallback {k}/{limit}: {nodes[-1]} back to float → {verdict}")
        if passed:
            result.passed = True
            break
    return result


def plot_sensitivity(
    ranking: list[tuple[str, float]], fallback: set[str], path: Path, top: int = 40
) -> Path:
    """Horizontal bars, most sensitive first (log scale); nodes put back to float in red."""
    # a Figure of its own, drawn by its file type's canvas: no pyplot, no process-wide backend
    from matplotlib.figure import Figure

    shown = ranking[:top]
    fig = Figure(figsize=(9, 0.28 * len(shown) + 1.6))
    ax = fig.subplots()
    labels = [n if len(n) <= 60 else "…" + n[-59:] for n, _ in shown]
    values = [max(e, 1e-12) for _, e in shown]
    colors = ["#c0392b" if n in fallback else "#2e86c1" for n, _ in shown]
    ax.barh(range(len(shown)), values, color=colors)
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("relative output error with only this node quantized")
    more = f" (top {top} of {len(ranking)})" if len(ranking) > top else ""
    ax.set_title(f"Quantization sensitivity per node{more}; red: kept in float", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
