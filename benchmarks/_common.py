"""Helpers shared by the benchmark scripts: interleaved timing with medians, sentences."""

from __future__ import annotations

from toolchain.bench import interleaved  # noqa: F401  (the one timer, re-exported here)


def held_out_sentences(n: int) -> list[str]:
    """n real English sentences (stdlib docstrings, the held-out modules), deterministic."""
    from calibration.sentences import split_sentences

    return split_sentences(held_out=0.2, seed=0)[1][:n]
