"""Latency-aware fallback: int8 stays only where the engine is not slower for it.

Int8 pays where a product is large enough for the faster kernel to outrun the Quantize and
Dequantize work around it; on a small layer, or at batch 1, it may not (the digits CNN's
all-int8 engine is slower than its fp32 one, README). Which way it goes depends on the CPU,
so it is measured on the engine that ships, on this machine: the int8 and fp32 ort-cpu
engines side by side (interleaved rounds, medians) at each batch size asked for. While int8
is slower at some batch, quantized products go back to float with the pass-through ops that
follow them (segments()): each weighted op type as a whole, then one product at a time,
smallest weight first; a step is kept only if the engine gets more than KEEP_MARGIN faster.
If int8 is still slower when the candidates run out, or every product went back to float,
the model stays fp32 and the report says so.

The figures hold for this machine's instruction set (the report names it); a device of
another kind should quantize on its own kind (or pass --latency-batches off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgesmith.toolchain.core.onnx_model import GraphIndex
from edgesmith.toolchain.evaluate.engines import engine_runner, time_engines

MAX_TRIALS = 12
# A trial is kept only if it improves the worst ratio by more than this: two runs of one
# engine differ by a few percent on a busy host, and a float island kept on noise is a loss.
KEEP_MARGIN = 0.02


def weight_sizes(model: onnx.ModelProto, nodes: Sequence[str]) -> dict[str, int]:
    """Elements of the initializers each node reads (0 for nodes without weights)."""
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    return {
        name: sum(sizes.get(i, 0) for i in by_name[name].input) for name in nodes if name in by_name
    }


def segments(model: onnx.ModelProto, sizes: dict[str, int]) -> dict[str, list[str]]:
    """Each quantized weighted node (`sizes`: weight_sizes()) with the weightless quantized
    nodes that follow it up to the next weighted one (Conv → Relu → MaxPool): int8
    pass-through ops only pay beside an int8 product, so they go to float with it."""
    index = GraphIndex(model)
    out = {}
    for w in (n for n, size in sizes.items() if size):
        seg, todo = [w], list(index.nodes[w].output)
        while todo:
            for c in index.readers(todo.pop()):
                if c.name in sizes and not sizes[c.name] and c.name not in seg:
                    seg.append(c.name)
                    todo.extend(c.output)
        out[w] = seg
    return out


def trial_groups(model: onnx.ModelProto, nodes: Sequence[str]) -> list[tuple[str, list[str]]]:
    """What to try in float, in order: the segments (segments()) of each weighted op type as a
    whole, smallest total weight first, then single segments, smallest first. A float island
    in an int8 chain costs a Quantize/Dequantize pair, so whole groups come first."""
    sizes = weight_sizes(model, nodes)
    segs = segments(model, sizes)
    ops = {n.name: n.op_type for n in model.graph.node}
    by_type: dict[str, list[str]] = {}
    for w in segs:
        by_type.setdefault(ops[w], []).append(w)
    out = []
    for t, ws in sorted(by_type.items(), key=lambda kv: sum(sizes[w] for w in kv[1])):
        out.append((f"all {t}", [n for w in ws for n in segs[w]]))
    singles = sorted((w for ws in by_type.values() if len(ws) > 1 for w in ws),
                     key=lambda w: (sizes[w], w))  # fmt: skip
    return out + [(w, segs[w]) for w in singles]


@dataclass
class EngineTimer:
    """ort-cpu engines of candidate models, timed against the fp32 engine of the source
    (evaluate/engines.py: one session per model for the whole check, so the incumbent is
    timed by the same session in every trial)."""

    source: Path
    feeds: dict[int | str, dict[str, np.ndarray]]  # shape (feeds_from) → feeds
    rounds: int = 30
    threads: int | None = None
    workdir: Path | None = None
    _runners: dict = field(default_factory=dict)

    def _runner(self, path: Path):
        if path not in self._runners:
            self._runners[path] = engine_runner(path, self.threads, self.workdir)
        return self._runners[path]

    def ratios(self, *paths: Path) -> list[dict[int | str, float]]:
        """Each path's engine over the fp32 engine, per batch: all timed in one interleave."""
        runners = {"fp32": self._runner(self.source)}
        runners.update({str(i): self._runner(p) for i, p in enumerate(paths)})
        times = time_engines(runners, self.feeds, self.rounds)
        return [{b: round(t[str(i)] / t["fp32"], 4) for b, t in times.items()}
                for i in range(len(paths))]  # fmt: skip


@dataclass
class LatencyCheck:
    """What latency_fallback did: the ratios before and after, each trial, the verdict."""

    batches: list[int]
    rounds: int
    int8_over_fp32: dict[int, float]
    trials: list[dict[str, Any]] = field(default_factory=list)
    final_int8_over_fp32: dict[int, float] = field(default_factory=dict)
    float_nodes: list[str] = field(default_factory=list)
    verdict: str = ""
    isa: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Candidates:
    """What latency_fallback may put back to float: `nodes` of `model` (the float model the
    quantizer read), and `make(float_nodes) -> path` that quantizes with those in float."""

    model: onnx.ModelProto
    nodes: Sequence[str]
    make: Callable[[list[str]], Path]


def feeds_from(
    data, batches: Sequence[int], seqs: Sequence[int] | None = None
) -> dict[int | str, dict[str, np.ndarray]]:
    """Real samples for each shape the check times, keyed by the batch (repeated when the
    data has fewer samples) or, for text (an attention mask in the data), by "BxS": batch B
    with the sequences cut to S tokens. The lengths are `seqs`, or by default the data's
    median length (rounded up to a multiple of 8) and the padded length: a deployed encoder
    mostly sees a sentence at its own length, and int8 pays differently there."""
    from edgesmith.toolchain.core.errors import InvalidInput

    by_batch = {b: {name: np.resize(a, (b, *a.shape[1:])) for name, a in data.feeds.items()}
                for b in batches}  # fmt: skip
    mask = next((a for name, a in data.feeds.items() if "mask" in name and a.ndim == 2), None)
    if mask is None:
        if seqs:
            raise InvalidInput("--latency-seq: the data has no attention mask, no sequence to cut")
        return by_batch
    padded = mask.shape[1]
    if seqs and max(seqs) > padded:
        raise InvalidInput(
            f"--latency-seq {max(seqs)}: longer than the data's sequences ({padded} tokens); "
            "raise --seq-len"
        )
    if not seqs:
        median = int(np.median(mask.sum(axis=1)))
        seqs = sorted({min(padded, -(-median // 8) * 8), padded})
    return {
        f"{b}x{s}": {k: v[:, :s] if v.ndim >= 2 and v.shape[1] == padded else v
                     for k, v in feeds.items()}
        for b, feeds in by_batch.items()
        for s in seqs
    }  # fmt: skip


def shape_label(key: int | str) -> str:
    """A timed shape as the report's sentences write it: "batch 8" or "batch 8, seq 16"."""
    batch, _, seq = str(key).partition("x")
    return f"batch {batch}" + (f", seq {seq}" if seq else "")


def latency_fallback(
    first: Path, candidates: Candidates, timer: EngineTimer, log: Callable[[str], None]
) -> tuple[Path | None, LatencyCheck]:
    """(model, what happened); model None: int8 never paid, ship fp32."""
    model, nodes = candidates.model, candidates.nodes
    (ratios,) = timer.ratios(first)
    check = LatencyCheck(sorted(timer.feeds), timer.rounds, ratios)
    current, floated = first, []
    for label, group in trial_groups(model, nodes)[:MAX_TRIALS]:
        if max(ratios.values()) <= 1.0:
            break
        todo = [n for n in group if n not in floated]
        if not todo:
            continue
        path = candidates.make([*floated, *todo])
        now, trial = timer.ratios(current, path)  # the two side by side, against fp32
        kept = max(trial.values()) < max(now.values()) - KEEP_MARGIN
        check.trials.append({"float": label, "nodes": len(todo), "before": now,
                             "after": trial, "kept_float": kept})  # fmt: skip
        log(f"latency: {label} in float: {now} -> {trial} ({'kept' if kept else 'undone'})")
        ratios = trial if kept else now
        if kept:
            current, floated = path, [*floated, *todo]
    worst = max(ratios.values())
    check.final_int8_over_fp32, check.float_nodes = ratios, floated
    products = {n for n, size in weight_sizes(model, nodes).items() if size}
    if products <= set(floated):  # pass-through ops left alone in int8 only cost Q/DQ
        check.verdict = "every quantized product went back to float: the model stays fp32"
        return None, check
    if worst > 1.0:
        check.verdict = (
            f"int8 is slower than fp32 here at {shape_label(max(ratios, key=ratios.get))} "
            f"({worst:.2f}x) with every trial: the model stays fp32"
        )
        return None, check
    check.verdict = f"int8 engine at {worst:.2f}x fp32 or better at every batch measured"
    return current, check
