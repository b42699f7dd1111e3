"""Helpers shared by the benchmark scripts: interleaved timing with medians, sentences."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, inner: int = 1, warmup: int = 3
) -> dict[str, float]:
    """Median ms per call of each fn, timed in alternation so load drifts hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - t) * 1e3 / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def held_out_sentences(n: int) -> list[str]:
    """n real English sentences (stdlib docstrings, the held-out modules), deterministic."""
    from calibration.sentences import split_sentences

    return split_sentences(held_out=0.2, seed=0)[1][:n]
