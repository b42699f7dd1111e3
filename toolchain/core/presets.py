"""What a quantization preset is (the vocabulary targets declare their presets in), and the
CPU's int8 capabilities. Each target owns its presets (targets/*.py PRESETS, default_preset);
the quantize stage asks the target (toolchain/quantize/presets.py)."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
