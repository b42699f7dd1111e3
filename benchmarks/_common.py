"""Helpers shared by the benchmark scripts: interleaved timing with medians, sentences."""

from __future__ import annotations

import inspect
import re
import statistics
import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, inner: int = 1, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call of each fn, timed in alternation so load drifts hit all alike."""
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


def stdlib_sentences(modules: list[str], min_words: int = 6, max_words: int = 40) -> list[str]:
    """Real English: sentences from the docstrings of standard-library modules, deduplicated."""
    import importlib

    seen, out = set(), []
    for name in modules:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod) or ""]
        docs += [inspect.getdoc(obj) or "" for _, obj in inspect.getmembers(mod)
                 if inspect.isfunction(obj) or inspect.isclass(obj)]
        for doc in docs:
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = s.split()
                if min_words <= len(words) <= max_words and s not in seen and s[0].isupper():
                    seen.add(s)
                    out.append(s)
    return out
