"""Quantization presets: each target declares its own (PRESETS and default_preset on the
target class); this module asks the target. For ort-cpu the preset follows the instruction set.

A preset is data: the integer types, symmetry, which op types are quantized, and why. The
ort-cpu preset is picked from the CPU's instruction set unless one is named:

- x86 without VNNI (AVX2, AVX-512 without VNNI): the u8 x s8 kernels multiply with
  VPMADDUBSW, which adds pairs of u8·s8 products into a saturating int16. Two products of
  255·127 overflow it (64770 > 32767); Intel Neural Compressor's published tables show CNNs
  losing 5 to 7 points of top-1 on AMD EPYC from this. Weights in 7 bits (reduce_range: onnxruntime
  maps them to [-64, 64]) keep every pair sum within int16: 2·255·64 = 32640 <= 32767.
- x86 with VNNI or AMX: VPDPBUSD accumulates u8·s8 into int32 without saturation, so
  full-range int8 weights are safe; asymmetric uint8 activations use all 256 steps.
- ARM64: the SDOT/I8MM kernels are signed; symmetric int8 activations and weights
  (onnxruntime's guidance for ARM).
- trt-gpu: TensorRT's explicit quantization takes symmetric int8 only (zero points 0),
  per-channel scales on weights along the output channel, Q/DQ on the inputs of weighted
  layers only, float biases.
"""

from __future__ import annotations

from dataclasses import replace

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.presets import Isa, Preset, detect_isa
from edgesmith.toolchain.core.registry import get_target, target_names


def target_presets(target: str) -> dict[str, Preset]:
    """The presets a target declares; a target without any takes no int8 model."""
    presets = _declared(target)
    if not presets:
        raise InvalidInput(f"target '{target}' declares no quantization presets")
    return presets


def preset(name: str) -> Preset:
    """A preset by its name, whichever target declares it."""
    for t in target_names():
        found = _declared(t).get(name)
        if found is not None:
            return found
    raise InvalidInput(f"unknown preset '{name}'")


def resolve_preset(target: str, name: str | None = None, isa: Isa | None = None) -> Preset:
    """The preset to use: the named one, or the target's default (for ort-cpu, by this CPU)."""
    presets = target_presets(target)
    isa = isa or detect_isa()
    if name is not None:
        if name not in presets:
            other = next(
                (p.target for t in target_names() for n, p in _declared(t).items() if n == name),
                None,
            )
            if other:
                raise InvalidInput(
                    f"preset '{name}' is for target {other}, not {target}; presets for "
                    f"{target}: {', '.join(presets)}"
                )
            raise InvalidInput(f"unknown preset '{name}'; available: {', '.join(presets)}")
        return replace(presets[name], isa={**isa.summary(), "chosen_by": "named"})
    chosen, why = get_target(target).default_preset(isa)
    return replace(presets[chosen], isa={**isa.summary(), "chosen_by": why})


def _declared(target: str) -> dict[str, Preset]:
    return dict(getattr(get_target(target), "PRESETS", None) or {})
