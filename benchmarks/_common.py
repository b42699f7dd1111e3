"""Helpers shared by the benchmark scripts: interleaved timing with medians, sentences."""

from __future__ import annotations

from edgesmith.toolchain.core.timing import interleaved  # noqa: F401  (the one timer, re-exported here)


def isa() -> str:
    """The host's instruction set as every benchmark prints it: arch, the ort-cpu preset it
    gets and why, and the int8-relevant flags."""
    from edgesmith.targets.ort_cpu import cpu_preset as cpu_preset_name
    from edgesmith.toolchain.core.presets import detect_isa

    i = detect_isa()
    name, why = cpu_preset_name(i)
    flags = ", ".join(sorted(i.flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni",
                                        "amx_int8"}))  # fmt: skip
    return f"{i.arch}, {why} ({flags}); preset {name}"


def held_out_sentences(n: int) -> list[str]:
    """n real English sentences (stdlib docstrings, the held-out modules), deterministic."""
    from edgesmith.calibration.sentences import split_sentences

    return split_sentences(held_out=0.2, seed=0)[1][:n]
