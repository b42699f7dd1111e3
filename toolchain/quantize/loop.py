"""The quantize stage's accuracy loop: gate the all-int8 model on the eval data (validate's
evaluator); if it fails, rank the quantized nodes by sensitivity and put the most sensitive
back to float one at a time until it passes, and time what that costs (bench's timer)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from calibration.sources import Dataset
from targets.ort_cpu import runner_from_onnx
from toolchain.core.presets import Preset
from toolchain.core.progress import track
from toolchain.core.timing import interleaved
from toolchain.evaluate.gate import Evaluator
from toolchain.quantize import qdq
from toolchain.quantize.calibrate import Prepared
from toolchain.quantize.sensitivity import (
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
    path: Path  # the model that ships
    passed: bool
    summary: str


class AccuracyLoop:
    """One quantize run's gate and fallback loop; writes its findings into `report`."""

    def __init__(self, src: Path, eval_data: Dataset, cfg, preset: Preset, work: Path, log):
        self.src, self.data, self.cfg, self.preset = src, eval_data, cfg, preset
        self.work, self.log = work, log
        self.evaluator = Evaluator(
            runner_from_onnx(src, threads=cfg.threads), eval_data, cfg, cfg.batch_size
        )

    def check(self, path: Path) -> tuple[bool, str, list[dict]]:
        g = self.evaluator.gate(runner_from_onnx(path, threads=self.cfg.threads))
        return g.passed, g.verdict(), [c.to_dict() for c in g.checks]

    def run(self, first: Path, prepared: Prepared | None, report: dict, out: Path) -> Outcome:
        passed, verdict, checks = self.check(first)
        report["gate"] = {
            "data": self.cfg.eval,
            "samples": len(self.data),
            "metrics": self.evaluator.metrics,
            "all_int8": {"passed": passed, "verdict": verdict, "checks": checks},
        }
        self.log(f"quantize: all-int8 model: {verdict}")
        if passed:
            return Outcome(first, True, f"all-int8 {verdict}")
        if prepared is None:
            report["fallback"] = {"note": "the fallback loop works on calibrated (static) methods"}
            return Outcome(
                first, False, f"all-int8 {verdict}; dynamic has no fallback loop (try minmax)"
            )
        return self._fallback(first, prepared, verdict, report, out)

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
        return node_sensitivity(switch_path, switched, batches, reference, self.cfg.threads, track)

    def _cost(self, first: Path, final: Path) -> dict[str, Any]:
        """Median ms per batch-1 call with and without the fallback, timed side by side."""
        feeds = {k: v[:1] for k, v in self.data.feeds.items()}
        runners = {
            "all_int8": runner_from_onnx(first, threads=self.cfg.threads, spinning=False),
            "with_fallback": runner_from_onnx(final, threads=self.cfg.threads, spinning=False),
        }
        ms = interleaved(
            {k: (lambda r=r: r.infer(feeds)) for k, r in runners.items()}, LATENCY_ROUNDS
        )
        cost: dict[str, Any] = {f"{k}_ms": round(v, 4) for k, v in ms.items()}
        cost["cost_ms"] = round(cost["with_fallback_ms"] - cost["all_int8_ms"], 4)
        return cost

    def _fallback(
        self, first: Path, prepared: Prepared, verdict: str, report: dict, out: Path
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
        report["sensitivity"] = sens.to_dict()
        report["fallback"] = {
            "float_nodes": loop.float_nodes,
            "passed": loop.passed,
            "steps": [s.to_dict() for s in loop.steps],
            "latency_batch1": cost,
        }
        try:  # matplotlib is an optional dependency (the dev extra); the ranking is in the JSON
            plot_sensitivity(sens.ranking, set(loop.float_nodes), out / PLOT)
            report["sensitivity"]["plot"] = PLOT
        except ImportError:
            report["sensitivity"]["plot"] = "not drawn: matplotlib is not installed"
        last = loop.steps[-1].verdict if loop.steps else verdict
        n = len(loop.float_nodes)
        if loop.passed:
            extra = f" (+{cost['cost_ms']:.3f} ms at batch 1)" if cost else ""
            return Outcome(final, True, f"{n} node(s) back to float to pass: {last}{extra}")
        return Outcome(
            final, False, f"no fallback passed ({n} of {len(ranking)} nodes in float): {last}"
        )
