"""Run a candidate and its reference on every sample of a data set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgesmith.calibration.sources import Dataset
from edgesmith.targets.base import Runner
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.progress import track


@dataclass
class Outputs:
    reference: dict[str, np.ndarray]
    candidate: dict[str, np.ndarray]
    labels: np.ndarray | None
    origin: str = ""  # the data's file, for messages


def batch_limit(*runners: Runner) -> int | None:
    """The fixed batch size some runner's inputs demand (a model exported at batch 1), if any."""
    fixed = {
        t.dims[0] for r in runners for t in r.io.inputs if t.dims and isinstance(t.dims[0], int)
    }
    return min(fixed) if fixed else None


def outputs_of(runner: Runner, data: Dataset, size: int, what: str) -> dict[str, np.ndarray]:
    """Every output of `runner` on every sample of `data`, in batches of `size`."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in runner.io.output_names}
    total = (len(data) + size - 1) // size
    for feeds, _ in track(data.batches(size), total, f"{what} {len(data)} samples"):
        out = runner.infer(feeds)
        for n in parts:
            parts[n].append(out[n])
    return {n: np.concatenate(v) for n, v in parts.items()}


def check_outputs(reference: Runner, candidate: Runner) -> None:
    missing = [n for n in reference.io.output_names if n not in candidate.io.output_names]
    if missing:
        raise InvalidInput(
            f"the candidate has no output(s) {missing} of the reference "
            f"(candidate outputs: {candidate.io.output_names})"
        )
