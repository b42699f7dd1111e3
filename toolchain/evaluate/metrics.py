"""Task metrics of a candidate against a reference, on the same samples.

Every metric gives (reference score, candidate score) and a `drop`: how much worse the
candidate is, in the metric's own units (fractions, not percent). The gate compares the drop
with the budget. A metric applies to the outputs it fits and means something on: accuracy and
agreement to the model's class scores only (`class_outputs`), cosine and max_abs_diff to any
float output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgesmith.toolchain.core.errors import InvalidInput

Scores = tuple[float, float, dict]  # reference, candidate, details


@dataclass(frozen=True)
class MetricValue:
    metric: str
    output: str
    reference: float
    candidate: float
    drop: float
    details: dict


def _is_logits(out: np.ndarray) -> bool:
    return out.ndim == 2 and out.shape[1] >= 2 and np.issubdtype(out.dtype, np.floating)


CLASS_METRICS = ("accuracy", "agreement")  # read an output as class scores
LOGITS_NAME = "logits"  # what transformers and optimum name a classifier's scores


def class_outputs(
    reference: dict[str, np.ndarray], labels: np.ndarray | None, output: str | None = None
) -> tuple[list[str], list[str]]:
    """(the outputs that are the class scores, the candidates when that is ambiguous).

    A [N, k] float output can be class scores or an embedding; a model with both (logits and
    a 16-wide embedding) must not have its embedding's argmax scored against the labels. The
    scores are: the output asked for (`output`); else the only [N, k] float output wide
    enough for every label; else the one named 'logits'; else the only one whose width is the
    number of classes in the data (largest label + 1). Otherwise none is guessed.
    """
    if output is not None:
        return ([output] if _is_logits(reference[output]) else []), []
    fits = [
        n for n, v in reference.items()
        if _is_logits(v) and (labels is None or int(labels.max()) < v.shape[1])
    ]  # fmt: skip
    if len(fits) <= 1:
        return fits, []
    if LOGITS_NAME in fits:
        return [LOGITS_NAME], []
    if labels is not None:
        exact = [n for n in fits if reference[n].shape[1] == int(labels.max()) + 1]
        if len(exact) == 1:
            return exact, []
    return [], fits


def accuracy(ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> Scores | None:
    """Top-1 accuracy against the labels, of each model."""
    if labels is None or not _is_logits(ref) or labels.max() >= ref.shape[1]:
        return None
    r = float((ref.argmax(1) == labels).mean())
    c = float((cand.argmax(1) == labels).mean())
    return r, c, {"samples": len(labels)}


def agreement(ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> Scores | None:
    """Fraction of samples whose top-1 class is the same in both models."""
    if not _is_logits(ref):
        return None
    return 1.0, float((ref.argmax(1) == cand.argmax(1)).mean()), {}


def cosine(ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> Scores | None:
    """Mean over samples of the cosine similarity of each sample's (flattened) output."""
    if not np.issubdtype(ref.dtype, np.floating):
        return None
    r = ref.reshape(len(ref), -1).astype(np.float64)
    c = cand.reshape(len(cand), -1).astype(np.float64)
    denom = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    cos = np.where(denom > 0, (r * c).sum(1) / np.maximum(denom, 1e-300), 1.0)
    return 1.0, float(cos.mean()), {"min": float(cos.min())}


def max_abs_diff(ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> Scores | None:
    """Largest elementwise |candidate - reference|; its drop is the difference itself."""
    diff = np.abs(cand.astype(np.float64) - ref.astype(np.float64))
    return 0.0, float(diff.max(initial=0.0)), {"mean": float(diff.mean())}


METRICS: dict[str, Callable[..., Scores | None]] = {
    "accuracy": accuracy,
    "agreement": agreement,
    "cosine": cosine,
    "max_abs_diff": max_abs_diff,
}
LOWER_IS_BETTER = {"max_abs_diff"}


def check_metric_names(names: list[str]) -> None:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise InvalidInput(f"unknown metric '{unknown[0]}'; available: {', '.join(METRICS)}")


def compute(
    metric: str,
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    labels: np.ndarray | None,
    output: str | None = None,
) -> list[MetricValue]:
    """The metric on every output it fits (a class metric: on the class scores only)."""
    names = list(reference)
    if metric in CLASS_METRICS:
        names = class_outputs(reference, labels, output)[0]
    out = []
    for name in names:
        ref = reference[name]
        scores = METRICS[metric](ref, candidate[name], labels)
        if scores is None:
            continue
        r, c, details = scores
        drop = c - r if metric in LOWER_IS_BETTER else r - c
        out.append(MetricValue(metric, name, r, c, drop, details))
    return out
