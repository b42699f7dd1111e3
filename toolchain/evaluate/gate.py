"""The accuracy gate: each gated metric's drop against its budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgesmith.calibration.sources import Dataset
from edgesmith.targets.base import Runner
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.evaluate.compare import Outputs, batch_limit, check_outputs, outputs_of
from edgesmith.toolchain.evaluate.metrics import (
    CLASS_METRICS,
    METRICS,
    MetricValue,
    check_metric_names,
    class_outputs,
    compute,
)


@dataclass(frozen=True)
class Check:
    value: MetricValue
    budget: float | None  # None: reported, not gated

    @property
    def passed(self) -> bool | None:
        return None if self.budget is None else self.value.drop <= self.budget

    def to_dict(self) -> dict:
        return {**asdict(self.value), "budget": self.budget, "passed": self.passed}


@dataclass(frozen=True)
class GateResult:
    checks: list[Check]

    @property
    def gated(self) -> list[Check]:
        return [c for c in self.checks if c.budget is not None]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.gated)

    def verdict(self) -> str:
        failed = [c for c in self.gated if not c.passed]
        if not failed:
            return "PASS: " + ", ".join(
                f"{c.value.metric}[{c.value.output}] drop {c.value.drop:.4f} <= {c.budget}"
                for c in self.gated
            )
        return "FAIL: " + ", ".join(
            f"{c.value.metric}[{c.value.output}] drop {c.value.drop:.4f} > budget {c.budget}"
            for c in failed
        )


def default_metrics(has_labels: bool) -> list[str]:
    return ["accuracy"] if has_labels else ["cosine"]


def evaluate(
    outputs: Outputs,
    metrics: list[str],
    budget: dict[str, float],
    output: str | None = None,
) -> GateResult:
    """Every metric on every output it fits; the `metrics` named are gated (on `output`, or all)."""
    check_metric_names(metrics)
    if output is not None and output not in outputs.reference:
        raise InvalidInput(f"no output named '{output}'; available: {', '.join(outputs.reference)}")
    checks = []
    for metric in METRICS:
        values = compute(metric, outputs.reference, outputs.candidate, outputs.labels, output)
        gated = [v for v in values if metric in metrics and (output is None or v.output == output)]
        if metric in metrics and not gated:
            raise InvalidInput(_fits_no_output(metric, outputs))
        checks += [Check(v, budget[metric] if v in gated else None) for v in values]
    return GateResult(checks)


def _fits_no_output(metric: str, outputs: Outputs) -> str:
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in outputs.reference.items())
    if metric in CLASS_METRICS:
        _, ambiguous = class_outputs(outputs.reference, outputs.labels)
        if ambiguous:
            return (
                f"metric '{metric}': outputs {', '.join(ambiguous)} could each be the class "
                f"scores ({shapes}); name the classifier's with --output"
            )
    where = f"{outputs.origin}: " if outputs.origin else ""
    labels = outputs.labels
    widths = [v.shape[1] for v in outputs.reference.values() if v.ndim == 2 and v.shape[1] >= 2]
    if metric == "accuracy" and labels is not None and widths and labels.max() >= max(widths):
        return (
            f"{where}labels go up to {labels.max()}, but no output has that many classes ({shapes})"
        )
    need = {
        "accuracy": "labels in the data and a [N, classes] output",
        "agreement": "a [N, classes] output",
    }.get(metric, "a float output")
    return f"{where}metric '{metric}' fits no output: it needs {need} ({shapes})"


class Evaluator:
    """The gate on one data set, the reference's outputs computed once: validate gates one
    candidate with it, the quantize loop one after another."""

    def __init__(self, reference: Runner, data: Dataset, gated, batch_size: int) -> None:
        """`gated`: a config with the gate's settings (core/recipe.py: Gated)."""
        self.reference_runner, self.data, self.output = reference, data, gated.output
        self.metrics = gated.metrics or default_metrics(data.labels is not None)
        self.budgets = {m: gated.budget(m) for m in self.metrics}
        self.batch_size = batch_size
        self._reference: dict[str, np.ndarray] | None = None

    def _size(self, *runners: Runner) -> int:
        return min(self.batch_size, batch_limit(*runners) or self.batch_size)

    @property
    def reference(self) -> dict[str, np.ndarray]:
        if self._reference is None:
            size = self._size(self.reference_runner)
            self._reference = outputs_of(self.reference_runner, self.data, size, "reference on")
        return self._reference

    def gate(self, candidate: Runner) -> GateResult:
        check_outputs(self.reference_runner, candidate)
        got = outputs_of(candidate, self.data, self._size(candidate), "validating")
        outputs = Outputs(self.reference, got, self.data.labels, self.data.origin)
        return evaluate(outputs, self.metrics, self.budgets, self.output)
