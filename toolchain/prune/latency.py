"""What pruning buys, measured on the engine that ships: each model exported to ONNX, built
for ort-cpu (targets/ort_cpu.py, the same build `edgesmith build` makes) and timed side by
side with the unpruned engine (evaluate/engines.py: interleaved rounds, warmed up, medians).

The amount to prune for a latency target is searched on those measurements, not estimated
from FLOPs: the search takes any `measure(fraction) -> ratio` (tests inject their own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesmith.toolchain.core.timing import synthetic_feeds
from edgesmith.toolchain.evaluate.engines import build_engine, time_engines, timed_runner


@dataclass
class Engine:
    """An ort-cpu engine of a model, loaded, with the path of its directory."""

    path: Path
    runner: Any


def engine_of(candidate, directory: Path, opset: int, threads: int | None) -> Engine:
    """Export a candidate (prune/structured.py) into `directory` and build it for ort-cpu."""
    onnx_dir = directory / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    engine_dir = build_engine(candidate.export(onnx_dir, opset), directory / "engine", threads)
    return Engine(engine_dir, timed_runner(engine_dir, threads))


def compare(
    engines: dict[str, Engine], batches: list[int], seq: int | None, rounds: int
) -> dict[str, dict[str, float]]:
    """batch → {name: median ms}, every engine timed in alternation at each batch size."""
    io = next(iter(engines.values())).runner.io
    feeds = {b: synthetic_feeds(io, b, seq) for b in batches}
    times = time_engines({n: e.runner for n, e in engines.items()}, feeds, rounds)
    return {str(b): t for b, t in times.items()}


@dataclass
class SearchPoint:
    fraction: float
    ratio: float  # pruned engine latency / unpruned, at the search's batch size

    def to_dict(self) -> dict[str, float]:
        return {"fraction": round(self.fraction, 4), "ratio": round(self.ratio, 4)}


@dataclass
class Search:
    target: float
    points: list[SearchPoint] = field(default_factory=list)
    chosen: float | None = None  # the smallest fraction measured at or under the target

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_ratio": self.target,
            "chosen_fraction": self.chosen,
            "reached": self.chosen is not None,
            "tried": [p.to_dict() for p in self.points],
        }


@dataclass(frozen=True)
class Bisection:
    """Where and how finely search_fraction looks: fractions in [low, high], `steps` halvings;
    a point within `near` (relative) of the target is measured twice more (median of three)."""

    low: float = 0.0
    high: float = 0.9
    steps: int = 6
    near: float = 0.05


def search_fraction(
    measure: Callable[[float], float],
    target: float,
    log: Callable[[str], None] = lambda _m: None,
    bisection: Bisection = Bisection(),
) -> Search:
    """The smallest pruned fraction whose measured latency ratio is at most `target`.

    Bisection on [low, high], assuming more pruning is not slower; first `high` itself: if
    the most pruning allowed misses the target, nothing less will reach it. A point that
    measures near the target decides which way the search goes on noise, so it is measured
    twice more and the median of the three decides."""
    low, high, near = bisection.low, bisection.high, bisection.near
    search = Search(target)

    def probe(f: float) -> float:
        r = measure(f)
        if abs(r - target) <= near * target:
            r = float(np.median([r, measure(f), measure(f)]))
        search.points.append(SearchPoint(f, r))
        log(f"prune: {f:.1%} pruned: engine latency {r:.3f}x the unpruned")
        return r

    if probe(high) > target:
        return search
    search.chosen = high
    for _ in range(bisection.steps):
        mid = (low + high) / 2
        if probe(mid) <= target:
            high = search.chosen = mid
        else:
            low = mid
    return search
