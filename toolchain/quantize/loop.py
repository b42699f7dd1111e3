"""The quantize stage's accuracy loop: gate the all-int8 model on the eval data (validate's
evaluator); if it fails, rank the quantized nodes by sensitivity and put the most sensitive
back to float one at a time until it passes, and time what that costs (bench's timer)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from edgesmith.calibration.sources import Dataset
from edgesmith.calibration.statistics import PassSettings
from edgesmith.targets.ort_cpu import SessionSettings, runner_from_onnx
from edgesmith.toolchain.core.progress import track
from edgesmith.toolchain.evaluate.engines import engine_runner, time_engines
from edgesmith.toolchain.evaluate.gate import Evaluator
from edgesmith.toolchain.quantize import qdq
from edgesmith.toolchain.quantize.calibrate import Prepared
from edgesmith.toolchain.quantize.job import Job
from edgesmith.toolchain.quantize.sensitivity import (
    fallback_loop,
    node_sensitivity,
    plot_sensitivity,
    switchable_model,
)

MODEL_FILE = "model.onnx"
PLOT = "sensitivity.png"
LATENCY_ROUNDS = 30


@dataclass
class Outcome:
    """What the loop found: the model that ships, and its records for the stage's report."""

    path: Path
    passed: bool
    summary: str
    gate: dict[str, Any]  # the eval data and the all-int8 model's gate
    sensitivity: dict[str, Any] | None = None  # the per-node ranking (after a failed gate)
    fallback: dict[str, Any] | None = None  # the nodes put back to float, step by step


class AccuracyLoop:
    """One quantize run's gate and fallback loop."""

    def __init__(self, job: Job, eval_data: Dataset):
        cfg = job.cfg
        self.src, self.data, self.cfg, self.preset = Path(job.src.path), eval_data, cfg, job.preset
        self.work, self.log = job.tmp, job.log
        self.evaluator = Evaluator(
            runner_from_onnx(self.src, SessionSettings(threads=cfg.threads)),
            eval_data,
            cfg,
            cfg.batch_size,
        )

    def check(self, path: Path) -> tuple[bool, str, list[dict]]:
        g = self.evaluator.gate(runner_from_onnx(path, SessionSettings(threads=self.cfg.threads)))
        return g.passed, g.verdict(), [c.to_dict() for c in g.checks]

    def run(self, first: Path, prepared: Prepared | None, out: Path) -> Outcome:
        """Gate the all-int8 model `first`; if it fails, the fallback loop (its plot into
        `out`)."""
        passed, verdict, checks = self.check(first)
        gate = {
            "data": self.cfg.eval_data,
            "samples": len(self.data),
            "metrics": self.evaluator.metrics,
            "all_int8": {"passed": passed, "verdict": verdict, "checks": checks},
        }
        self.log(f"quantize: all-int8 model: {verdict}")
        if passed:
            return Outcome(first, True, f"all-int8 {verdict}", gate)
        if prepared is None:
            note = {"note": "the fallback loop works on calibrated (static) methods"}
            summary = f"all-int8 {verdict}; dynamic has no fallback loop (try minmax)"
            return Outcome(first, False, summary, gate, fallback=note)
        return self._fallback(first, prepared, verdict, gate, out)

    def _ranking(self, prepared: Prepared):
        """Each quantized node's sensitivity, from one switchable model (a Q→DQ pair on every
        quantized input, activations kept as nodes) run once per node."""
        quantized = prepared.plan.quantized(onnx.load(str(prepared.path), load_external_data=False))
        pairs = replace(
            self.preset,
            add_qdq_pair_to_weight=True,
            keep_removable_activations=True,
            quantize_bias=False,
        )
        pair_path = qdq.quantize_static_qdq(
            prepared.path, self.work / "pairs.onnx", prepared.ranges, pairs, prepared.plan
        )
        switch, switched = switchable_model(onnx.load(str(pair_path)), quantized)
        switch_path = qdq.save_model(switch, self.work / "switch.onnx")
        n = self.cfg.sensitivity_samples
        sub = Dataset({k: v[:n] for k, v in self.data.feeds.items()})
        batches = [feeds for feeds, _ in sub.batches(min(self.cfg.batch_size, len(sub)))]
        ref = self.evaluator.reference_runner
        reference = [ref.infer(b) for b in batches]
        run = PassSettings(threads=self.cfg.threads, track=track)
        return node_sensitivity(switch_path, switched, batches, reference, run)

    def _cost(self, first: Path, final: Path) -> dict[str, Any]:
        """Median ms per batch-1 call of the ort-cpu engine with and without the fallback,
        timed side by side (evaluate/engines.py)."""
        feeds = {k: v[:1] for k, v in self.data.feeds.items()}
        runners = {
            "all_int8": engine_runner(first, self.cfg.threads, self.work),
            "with_fallback": engine_runner(final, self.cfg.threads, self.work),
        }
        ms = time_engines(runners, {1: feeds}, LATENCY_ROUNDS)[1]
        cost: dict[str, Any] = {f"{k}_ms": round(v, 4) for k, v in ms.items()}
        cost["cost_ms"] = round(cost["with_fallback_ms"] - cost["all_int8_ms"], 4)
        return cost

    def _fallback(
        self, first: Path, prepared: Prepared, verdict: str, gate: dict, out: Path
    ) -> Outcome:
        sens = self._ranking(prepared)
        ranking = [name for name, _ in sens.ranking]

        def make(nodes: list[str], step: int) -> Path:
            path = self.work / f"step-{step}" / MODEL_FILE
            path.parent.mkdir()
            plan = prepared.plan.with_float(nodes, "fallback")
            qdq.quantize_static_qdq(prepared.path, path, prepared.ranges, self.preset, plan)
            return path

        loop = fallback_loop(ranking, make, self.check, self.cfg.max_fallback, self.log)
        final = loop.path or first
        cost = self._cost(first, final) if loop.steps else {}
        fallback = {
            "float_nodes": loop.float_nodes,
            "passed": loop.passed,
            "steps": [s.to_dict() for s in loop.steps],
            "latency_batch1": cost,
        }
        sensitivity = sens.to_dict()
        try:  # matplotlib is an optional dependency (the dev extra); the ranking is in the JSON
            plot_sensitivity(sens.ranking, set(loop.float_nodes), out / PLOT)
            sensitivity["plot"] = PLOT
        except ImportError:
            sensitivity["plot"] = "not drawn: matplotlib is not installed"
        last = loop.steps[-1].verdict if loop.steps else verdict
        n = len(loop.float_nodes)
        if loop.passed:
            extra = f" (+{cost['cost_ms']:.3f} ms at batch 1)" if cost else ""
            summary = f"{n} node(s) back to float to pass: {last}{extra}"
        else:
            summary = f"no fallback passed ({n} of {len(ranking)} nodes in float): {last}"
        return Outcome(final, loop.passed, summary, gate, sensitivity, fallback)
