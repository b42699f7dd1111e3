"""Quantization presets per target, and for ort-cpu per instruction set.

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

import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from toolchain.core.errors import InvalidInput

CPUINFO = Path("/proc/cpuinfo")

# Op types with weights, or matrix products: where int8 pays for its Q/DQ. Element-wise ops
# (Add, Mul, Softmax) quantized on CPU cost a Q/DQ pair each and save little.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Quantized too on CNN-style graphs so that int8 flows through them without a round trip to
# float: onnxruntime's QDQ fusions turn Conv→Relu→MaxPool into int8 kernels end to end.
CNN_PASS_THROUGH = ("MaxPool", "Relu", "Clip", "GlobalAveragePool", "AveragePool")


@dataclass(frozen=True)
class Preset:
    """How a model is quantized for one target. `why` goes into the manifest."""

    name: str
    target: str
    why: str
    activation_type: str = "uint8"  # "uint8" or "int8"
    weight_type: str = "int8"
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights (|w| <= 64)
    op_types: tuple[str, ...] = WEIGHTED_OPS + CNN_PASS_THROUGH
    # A MatMul of two activations (attention's Q·Kᵀ, P·V) has no weight to pre-quantize; its
    # inputs would be quantized per tensor on every call. False: such MatMuls stay in float.
    activation_matmuls: bool = False
    # Input channels of a weighted MatMul whose max |x| exceeds outlier_ratio × the median
    # channel's are computed in float beside the int8 product (at most outlier_channels per
    # tensor; rewrites.split_outliers). None: off.
    outlier_ratio: float | None = 4.0
    outlier_channels: int = 8
    outlier_min_shrink: float = 3.0  # split only if the int8 range shrinks at least this much
    # SmoothQuant's migration strength for the remaining channels of those MatMuls' inputs
    # (rewrites.smooth_channels); None: off. 0.75 did better than 0.5 and 0.85 on all-MiniLM-L6-v2
    # (--smooth-alpha, scored as benchmarks/quantize_minilm.py scores its variants).
    smooth_alpha: float | None = 0.75
    # Op types whose output stays float: DQ→MatMul with a float output becomes onnxruntime's
    # MatMulIntegerToFloat (int8 product, float result), which spares a requantization of the
    # result; a transformer's MatMul results feed float Adds and LayerNorms anyway.
    float_outputs: tuple[str, ...] = ("MatMul", "Gemm")
    keep_removable_activations: bool = False
    add_qdq_pair_to_weight: bool = False
    dedicated_qdq_pair: bool = False
    quantize_bias: bool = True
    exclude: tuple[str, ...] = ()  # node-name patterns (fnmatch) that stay in float
    # Embedding tables (Gather on a float table >= 256 KiB) stored as int8 rows with a scale per
    # row (quantize/gather.py): a quarter of their size, within half a step per element.
    gather_int8: bool = True
    isa: dict[str, Any] = field(default_factory=dict, compare=False)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Isa:
    """What the CPU can do for int8, read from /proc/cpuinfo (x86) or the machine name (ARM)."""

    arch: str
    flags: frozenset[str]

    @property
    def vnni(self) -> bool:
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def amx(self) -> bool:
        return "amx_int8" in self.flags

    def summary(self) -> dict[str, Any]:
        keep = {
            f
            for f in self.flags
            if f.startswith(("avx", "amx", "sse4", "asimd", "i8mm", "sve", "dotprod"))
        }
        return {"arch": self.arch, "int8_flags": sorted(keep)}


def detect_isa(cpuinfo: Path = CPUINFO, machine: str | None = None) -> Isa:
    """This CPU's architecture and its int8-relevant feature flags."""
    machine = (machine or platform.machine()).lower()
    arch = (
        "arm64"
        if machine in ("aarch64", "arm64")
        else "x86_64"
        if machine in ("x86_64", "amd64")
        else machine
    )
    flags: set[str] = set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                flags.update(value.split())
                break  # every core lists the same flags
    return Isa(arch, frozenset(flags))


def _cpu_presets() -> dict[str, Preset]:
    return {
        "ort-cpu-vnni": Preset(
            name="ort-cpu-vnni",
            target="ort-cpu",
            why="x86 with VNNI/AMX: int8 dot products accumulate in int32 without saturation, "
            "so weights use the full int8 range; activations asymmetric uint8 (all 256 steps)",
        ),
        "ort-cpu-avx2": Preset(
            name="ort-cpu-avx2",
            target="ort-cpu",
            reduce_range=True,
            why="x86 without VNNI: u8·s8 pairs are summed into a saturating int16 "
            "(VPMADDUBSW); 7-bit weights (|w| <= 64) keep 2·255·64 = 32640 within int16",
        ),
        "ort-cpu-arm64": Preset(
            name="ort-cpu-arm64",
            target="ort-cpu",
            activation_type="int8",
            activation_symmetric=True,
            why="ARM64: signed dot-product kernels (SDOT/I8MM); symmetric int8 activations and "
            "weights, no saturation, so full range",
        ),
    }


def _trt_preset() -> Preset:
    """TensorRT's preset lives with its target (targets/tensorrt_qdq.py), beside its rules."""
    from targets.tensorrt_qdq import TRT_PRESET

    return Preset(**TRT_PRESET)


PRESETS: dict[str, Preset] = {**_cpu_presets(), "trt-gpu": _trt_preset()}
TARGET_PRESETS = {
    "ort-cpu": ("ort-cpu-vnni", "ort-cpu-avx2", "ort-cpu-arm64"),
    "trt-gpu": ("trt-gpu",),
}


def cpu_preset_name(isa: Isa) -> tuple[str, str]:
    """The ort-cpu preset for this instruction set, and the reason in words."""
    if isa.arch == "arm64":
        return "ort-cpu-arm64", "ARM64 CPU"
    if isa.vnni:
        which = "AMX" if isa.amx else "VNNI"
        found = ", ".join(sorted(isa.flags & {"avx512_vnni", "avx_vnni", "amx_int8"}))
        return "ort-cpu-vnni", f"x86 CPU with {which} ({found})"
    if "avx2" in isa.flags or isa.arch == "x86_64":
        return "ort-cpu-avx2", "x86 CPU without VNNI"
    return "ort-cpu-avx2", f"unrecognised CPU '{isa.arch}': the saturation-safe preset"


def resolve_preset(target: str, name: str | None = None, isa: Isa | None = None) -> Preset:
    """The preset to use: the named one, or the target's default (for ort-cpu, by this CPU)."""
    if target not in TARGET_PRESETS:
        raise InvalidInput(
            f"unknown quantization target '{target}'; available: {', '.join(TARGET_PRESETS)}"
        )
    isa = isa or detect_isa()
    if name is not None:
        if name not in PRESETS:
            raise InvalidInput(f"unknown preset '{name}'; available: {', '.join(PRESETS)}")
        preset = PRESETS[name]
        if preset.target != target:
            raise InvalidInput(
                f"preset '{name}' is for target {preset.target}, not {target}; "
                f"presets for {target}: {', '.join(TARGET_PRESETS[target])}"
            )
        return replace(preset, isa={**isa.summary(), "chosen_by": "named"})
    if target == "trt-gpu":
        return replace(PRESETS["trt-gpu"], isa={"chosen_by": "target"})
    chosen, reason = cpu_preset_name(isa)
    return replace(PRESETS[chosen], isa={**isa.summary(), "chosen_by": f"detected: {reason}"})
