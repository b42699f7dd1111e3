"""The one timer: every latency figure edgesmith reports (validate, bench, quantize's latency
check and fallback cost, prune's engine search, benchmarks/) comes from these. Engines timed
side by side are ort-cpu engines loaded by toolchain/evaluate/engines.py."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgesmith.toolchain.core.artifact import Format, ModelArtifact

DEFAULT_SEQ = 128  # a symbolic non-batch axis (sequence length) is timed at this size
# what a stage writes beside a model that does not ship with it
REPORT_FILES = {"manifest.json", "report.json", "junit.xml", "summary.md", "bench.json"}


def latency(
    runner: Any, feeds: dict[str, np.ndarray], warmup: int = 10, iterations: int = 50
) -> dict:
    """Milliseconds per call: p50/p90/p99 and mean, after `warmup` untimed calls."""
    for _ in range(warmup):
        runner.infer(feeds)
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        runner.infer(feeds)
        times.append((time.perf_counter() - t) * 1e3)
    a = np.asarray(times)
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "iterations": iterations,
    }


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, inner: int = 1, warmup: int = 3
) -> dict[str, float]:
    """Median ms per call of each fn, timed in alternation so load drifts hit all alike: the
    one timer for side-by-side figures (quantize's fallback cost, benchmarks/). onnxruntime
    sessions timed this way are made with spinning=False (core/ort_session.py says why)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for r in range(rounds):
        # every other round in reverse (A B, B A): a slot's own bias (the first call after
        # another model's ran, with colder caches) falls on each fn alike
        for name, fn in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - t) * 1e3 / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def side_by_side(
    fns: dict[str, Callable[[], object]], rounds: int, floor_ms: float = 5.0
) -> dict[str, float]:
    """interleaved(), each sample repeating its call until it takes about `floor_ms` (sized on
    the first fn), each fn warmed for as long as three samples take: microsecond models time
    steadily, and a new session's slow first calls (allocations, thread start) are not timed.
    The timer of every side-by-side engine comparison (evaluate/engines.py)."""
    first = next(iter(fns.values()))
    t = time.perf_counter()
    for _ in range(3):
        first()
    per_call = max((time.perf_counter() - t) / 3, 1e-7)
    inner = max(1, int(floor_ms / 1e3 / per_call))
    return interleaved(fns, rounds, inner=inner, warmup=3 * inner)


def size_bytes(art: ModelArtifact) -> int:
    """Bytes a deployment ships: the engine directory, the .onnx (+ external data), the weights."""
    p = Path(art.path)
    if art.format is Format.onnx:
        p = p.parent if (p.parent / "manifest.json").exists() else p
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.name not in REPORT_FILES)


def synthetic_feeds(io: Any, batch: int, seq: int | None = None, seed: int = 0) -> dict:
    """Seeded inputs to time a model with (bench, prune's engine search, benchmarks/): `batch`
    on axis 0, `seq` (default DEFAULT_SEQ) on the other symbolic axes; floats standard
    normal, masks ones, token types zeros, other integers ids below 50 (in every vocabulary;
    the ids do not change an encoder's time)."""
    from edgesmith.toolchain.core.errors import InvalidInput

    rng = np.random.default_rng(seed)
    feeds = {}
    for t in io.inputs:
        if isinstance(t.dims[0], int) and t.dims[0] != batch:
            raise InvalidInput(
                f"input '{t.name}' has a fixed batch of {t.dims[0]}; cannot time batch {batch}"
            )
        shape = [batch if i == 0 else (d if isinstance(d, int) else seq or DEFAULT_SEQ)
                 for i, d in enumerate(t.dims)]  # fmt: skip
        dtype = np.dtype(t.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[t.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in t.name or dtype == np.bool_:
            feeds[t.name] = np.ones(shape, dtype=dtype)
        elif "type" in t.name:
            feeds[t.name] = np.zeros(shape, dtype=dtype)
        else:
            feeds[t.name] = rng.integers(3, 50, size=shape).astype(dtype)
    return feeds
