"""What pruning buys, measured on the engine that ships: each model exported to ONNX, built
for ort-cpu (targets/ort_cpu.py, the same build `edgesmith build` makes) and timed side by
side with the unpruned engine (interleaved rounds, warmed up, medians; toolchain/bench.py).

The amount to prune for a latency target is searched on those measurements, not estimated
from FLOPs: the search takes any `measure(fraction) -> ratio` (tests inject their own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from targets.base import BuildConfig
from toolchain.core.artifact import Format, ModelArtifact
from toolchain.core.timing import interleaved, synthetic_feeds


@dataclass
class Engine:
    """An ort-cpu engine of a model, loaded, with the path of its directory."""

    path: Path
    runner: Any


def engine_of(candidate, directory: Path, opset: int, threads: int | None) -> Engine:
    """Export a candidate (prune/structured.py) into `directory` and build it for ort-cpu."""
    import onnx

    from targets.ort_cpu import OrtCpu
    from toolchain.core.onnx_model import io_from_onnx

    onnx_dir, engine_dir = directory / "onnx", directory / "engine"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    engine_dir.mkdir(parents=True, exist_ok=True)
    path = candidate.export(onnx_dir, opset)
    art = ModelArtifact(
        path, Format.onnx, io=io_from_onnx(onnx.load(str(path), load_external_data=False))
    )
    OrtCpu().build(art, BuildConfig({"threads": threads} if threads else {}), engine_dir)
    return Engine(engine_dir, timed_runner(engine_dir, threads))


def timed_runner(engine_dir: Path, threads: int | None):
    """An ort-cpu engine loaded to be timed beside others in this process: its options as
    engine.json records them, intra-op spinning off (core/ort_session.py says why)."""
    from targets.ort_cpu import OrtCpu

    art = ModelArtifact(Path(engine_dir), Format.engine)
    return OrtCpu().load(art, threads=threads, spinning=False)


def compare(
    engines: dict[str, Engine], batches: list[int], seq: int | None, rounds: int
) -> dict[str, dict[str, float]]:
    """batch → {name: median ms}, every engine timed in alternation at each batch size."""
    out = {}
    io = next(iter(engines.values())).runner.io
    for b in batches:
        feeds = synthetic_feeds(io, b, seq)
        fns = {n: (lambda e=e, f=feeds: e.runner.infer(f)) for n, e in engines.items()}
        out[str(b)] = {k: round(v, 4) for k, v in interleaved(fns, rounds, warmup=3).items()}
    return out


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


def search_fraction(
    measure: Callable[[float], float],
    target: float,
    low: float = 0.0,
    high: float = 0.9,
    steps: int = 6,
    log: Callable[[str], None] = lambda _m: None,
    near: float = 0.05,
) -> Search:
    """The smallest pruned fraction whose measured latency ratio is at most `target`.

    Bisection on [low, high], assuming more pruning is not slower; first `high` itself: if
    the most pruning allowed misses the target, nothing less will reach it. A point that
    measures within `near` (relative) of the target decides which way the search goes on
    noise, so it is measured twice more and the median of the three decides."""
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
    for _ in range(steps):
        mid = (low + high) / 2
        if probe(mid) <= target:
            high = search.chosen = mid
        else:
            low = mid
    return search
