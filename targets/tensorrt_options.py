"""The trt-gpu target's build options and optimization profiles, checked without TensorRT,
and the trtexec command line that builds the same engine.

No TensorRT or CUDA here: all of it runs, and is tested, where neither is installed.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesmith.targets.base import Option, check_options, listed
from edgesmith.targets.fp16 import FP16, FP32_LAYERS, fp32_layers_option
from edgesmith.toolchain.core.artifact import IoSpec
from edgesmith.toolchain.core.errors import InvalidInput

# HardwareCompatibilityLevel members by option value; trtexec's spelling beside each, and the
# first TensorRT that has the member (SAME_COMPUTE_CAPABILITY arrived in 10.9: absent from the
# 10.8 bindings, present in 10.9's; tests/targets/test_tensorrt_api.py checks the dumps).
HARDWARE_COMPATIBILITY = {
    "none": ("NONE", None, None),
    "ampere+": ("AMPERE_PLUS", "ampere+", None),
    "same_compute_capability": ("SAME_COMPUTE_CAPABILITY", "sameComputeCapability", "10.9"),
}
OPTIMIZATION_LEVELS = range(0, 6)  # IBuilderConfig.builder_optimization_level; TensorRT's is 3


@dataclass(frozen=True)
class ShapeRange:
    """The min, opt and max shape of one input in an optimization profile.

    TensorRT tunes kernels for `opt` and accepts any shape between `min` and `max`, per axis.
    """

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> ShapeRange:
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))

    def describe(self) -> str:
        return f"{shape_str(self.min)} to {shape_str(self.max)} (opt {shape_str(self.opt)})"

    def holds(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True)
        )


Profile = dict[str, ShapeRange]  # one optimization profile: a range per dynamic input


@dataclass(frozen=True)
class ProfileOptions:
    """One profile as asked for: the batch range and explicit ranges of other inputs."""

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 32
    shapes: dict[str, ShapeRange] = field(default_factory=dict)


@dataclass(frozen=True)
class TrtOptions:
    """Validated build options of `trt-gpu` (see TrtGpu for their meaning)."""

    fp16: bool = False
    int8: bool | None = None  # None: decided by the model (on when it has QuantizeLinear nodes)
    tf32: bool = False  # fp32 layers may compute in TF32 (Ampere and later); off: real fp32
    workspace_mb: int | None = None  # None: TensorRT's default (the device's global memory)
    profiles: tuple[ProfileOptions, ...] = (ProfileOptions(),)
    timing_cache: Path | None = None  # an earlier build's timing.cache to start from (read only)
    shared_timing_cache: Path | None = None  # read, and merged back after the build, locked
    sparse_weights: bool | None = None  # None: on when the model has 2:4 layers
    optimization_level: int | None = None  # None: TensorRT's default (3)
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    fp32_layers: tuple[str, ...] = ()  # node names or op types kept in fp32 when fp16 is on

    @property
    def min_batch(self) -> int:
        return self.profiles[0].min_batch

    @property
    def opt_batch(self) -> int:
        return self.profiles[0].opt_batch

    @property
    def max_batch(self) -> int:
        return self.profiles[0].max_batch


@dataclass(frozen=True)
class PlanChoices:
    """What a trt-gpu build settled on from its options, the model and the TensorRT at hand:
    what the builder config, the plan and the equivalent trtexec command are made from."""

    profiles: Sequence[Profile]  # the optimization profiles (none for a static model)
    int8: bool  # the engine has int8 layers (from the model's Q/DQ)
    sparse: bool  # built with SPARSE_WEIGHTS
    fp32_nodes: tuple[str, ...] = ()  # kept in fp32 in an fp16 build: node names
    fp32_ops: tuple[str, ...] = ()  # and op types
    major: int = 10  # the TensorRT major that builds it (11 is strongly typed without a flag)


_MOM = ("min", "opt", "max")

# The options of one optimization profile, shared with ort-gpu's TensorRT provider. Unset
# batch bounds follow the ones that are set, so max_batch = 4 alone is a valid request.
PROFILE_OPTIONS = (
    Option("min_batch", int, None, "smallest batch a dynamic first axis takes (unset: 1)",
           minimum=1),
    Option("opt_batch", int, None, "the batch the kernels are tuned for (unset: min_batch)",
           minimum=1),
    Option("max_batch", int, None,
           "largest batch a dynamic first axis takes (unset: 32, or min_batch if larger)",
           minimum=1),
    Option("shapes", str | list[str], None,
           "ranges of the other dynamic axes: 'name:MIN:OPT:MAX' entries with shapes like "
           "1x128 (a list, or comma-separated)"),
)  # fmt: skip
WORKSPACE_MB = Option(
    "workspace_mb", int, None,
    "the TensorRT builder's workspace limit in MiB (unset: TensorRT's, all device memory)",
    minimum=1,
)  # fmt: skip

# trt-gpu's build options (TrtGpu.OPTIONS), checked here by parse_options.
TRT_OPTIONS: tuple[Option, ...] = (
    FP16,
    Option("int8", bool, None,
           "int8 layers from the model's Q/DQ nodes (unset: on exactly when the model has "
           "int8 Q/DQ; trt-gpu does not calibrate)"),
    WORKSPACE_MB,
    *PROFILE_OPTIONS,
    Option("profiles", list[dict], None,
           "several optimization profiles: a list of tables of min_batch, opt_batch, "
           "max_batch, shapes; each run takes the first that holds its shapes"),
    Option("tf32", bool, False,
           "let fp32 layers compute in TF32 on Ampere and later (off: true fp32)"),
    FP32_LAYERS,
    Option("optimization_level", int, None,
           "how long the builder searches for faster kernels (unset: TensorRT's 3)",
           choices=tuple(OPTIMIZATION_LEVELS)),
    Option("hardware_compatibility", str, "none",
           "build for other GPUs too: ampere+ (compute 8.0 and later) or any GPU of this "
           "compute capability", choices=tuple(HARDWARE_COMPATIBILITY)),
    Option("version_compatible", bool, False,
           "the engine also runs on a later TensorRT of its major, and a 10.x engine on 11.x "
           "(its host code is embedded)"),
    Option("timing_cache", Path, None,
           "an earlier build's timing.cache to start from (read, not modified)"),
    Option("shared_timing_cache", Path, None,
           "a timing cache shared by builds: read, then this build's entries merged in "
           "under a lock (created if missing)"),
    Option("sparse_weights", bool, None,
           "let 2:4-sparse layers run on sparse tensor cores (unset: on when the model has "
           "2:4 layers)"),
)  # fmt: skip


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _file_option(value: str | Path | None, key: str, must_exist: bool) -> Path | None:
    """A checked path option: a file that exists, or one that can be written."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if must_exist and not p.is_file():
        raise InvalidInput(f"trt-gpu option {key}: no such file: {value}")
    if not must_exist and (p.is_dir() or not p.parent.is_dir()):
        raise InvalidInput(f"trt-gpu option {key}: {value} is not a file in an existing directory")
    return p


def parse_shape(text: str, what: str, target: str = "trt-gpu") -> tuple[int, ...]:
    """'1x3x224x224' -> (1, 3, 224, 224); every dimension a positive integer."""
    try:
        dims = tuple(int(p) for p in text.strip().split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise InvalidInput(
            f"{target} option shapes: {what}: '{text}' is not a shape like 1x3x224x224"
        )
    return dims


def parse_shapes(value: str | Sequence[str], target: str = "trt-gpu") -> dict[str, ShapeRange]:
    """The checked `shapes` option: entries 'name:MIN:OPT:MAX', each shape written like
    1x3x224x224, as a list or comma-separated (trtexec's --minShapes style). The name is
    everything before the last three colons, so ONNX names that contain colons ('input:0')
    work.
    """
    out: dict[str, ShapeRange] = {}
    for entry in listed(value):
        parts = entry.rsplit(":", 3)
        if len(parts) != 4 or not parts[0]:
            raise InvalidInput(
                f"{target} option shapes: '{entry}' is not 'name:MIN:OPT:MAX' "
                "(e.g. 'x:1x3x224x224:8x3x224x224:32x3x224x224')"
            )
        name = parts[0]
        if name in out:
            raise InvalidInput(f"{target} option shapes: input '{name}' is given twice")
        shapes = (
            parse_shape(p, f"'{name}' {k}", target) for p, k in zip(parts[1:], _MOM, strict=True)
        )
        out[name] = ShapeRange(*shapes)
    return out


def profile_options(values: Mapping[str, Any], target: str = "trt-gpu") -> ProfileOptions:
    """One profile from the checked PROFILE_OPTIONS values (None: unset)."""
    d = ProfileOptions()
    mn = values["min_batch"] or d.min_batch
    mx = values["max_batch"] or max(d.max_batch, mn)
    opt = values["opt_batch"] or min(max(d.opt_batch, mn), mx)
    if not mn <= opt <= mx:
        raise InvalidInput(
            f"{target} options: need min_batch <= opt_batch <= max_batch, got {mn}, {opt}, {mx}"
        )
    shapes = parse_shapes(values["shapes"], target) if values["shapes"] is not None else {}
    return ProfileOptions(mn, opt, mx, shapes)


def _profiles_option(values: Mapping[str, Any]) -> tuple[ProfileOptions, ...]:
    """`profiles`: a list of tables with the profile keys; else the top-level keys make one."""
    if values["profiles"] is None:
        return (profile_options(values),)
    clash = [o.name for o in PROFILE_OPTIONS if values[o.name] is not None]
    if clash:
        raise InvalidInput(
            f"trt-gpu options: {', '.join(clash)} and profiles both given; "
            "put them inside each profile"
        )
    if not values["profiles"]:
        raise InvalidInput("trt-gpu option profiles: expected a list of at least one table")
    return tuple(
        profile_options(check_options(f"trt-gpu profiles[{i}]", PROFILE_OPTIONS, p))
        for i, p in enumerate(values["profiles"])
    )


def parse_options(options: Mapping[str, Any]) -> TrtOptions:
    """trt-gpu's build options, checked without TensorRT: the keys and types against
    TRT_OPTIONS, then what the declaration cannot say (batch order, files, combinations)."""
    o = check_options("trt-gpu", TRT_OPTIONS, options)
    if o["timing_cache"] is not None and o["shared_timing_cache"] is not None:
        raise InvalidInput("trt-gpu options: give timing_cache or shared_timing_cache, not both")
    return TrtOptions(
        fp16=o["fp16"],
        int8=o["int8"],
        tf32=o["tf32"],
        workspace_mb=o["workspace_mb"],
        profiles=_profiles_option(o),
        timing_cache=_file_option(o["timing_cache"], "timing_cache", must_exist=True),
        shared_timing_cache=_file_option(
            o["shared_timing_cache"], "shared_timing_cache", must_exist=False
        ),
        sparse_weights=o["sparse_weights"],
        optimization_level=o["optimization_level"],
        hardware_compatibility=o["hardware_compatibility"],
        version_compatible=o["version_compatible"],
        fp32_layers=fp32_layers_option(o, "trt-gpu"),
    )


# ---------------------------------------------------------------- profiles


def profile_shapes(io: IoSpec, opts: TrtOptions) -> list[Profile]:
    """The optimization profiles: one range per input with dynamic dimensions, per profile.

    A dynamic first axis is the batch: its range is min_batch..max_batch (opt at opt_batch),
    and so is any axis with the same symbolic name. Other dynamic axes (a sequence length,
    an image size) have no default and must be given with `shapes`, which replaces the
    derived range of that input. Axes sharing a symbolic name must get the same range.
    A model without dynamic inputs has no profiles.
    """
    profiles = [_one_profile(io, p) for p in opts.profiles]
    if not any(profiles):
        if len(opts.profiles) > 1:
            raise InvalidInput("trt-gpu option profiles: the model has no dynamic inputs")
        return []
    return profiles


def _one_profile(io: IoSpec, p: ProfileOptions) -> Profile:
    names = io.input_names
    unknown = [n for n in p.shapes if n not in names]
    if unknown:
        raise InvalidInput(
            f"trt-gpu option shapes: no input named {', '.join(map(repr, unknown))}; "
            f"the model's inputs: {', '.join(t.describe() for t in io.inputs)}"
        )
    batch = (p.min_batch, p.opt_batch, p.max_batch)
    batch_names = {t.dims[0] for t in io.inputs if t.rank and isinstance(t.dims[0], str)}
    out: Profile = {}
    for t in io.inputs:
        static = all(isinstance(d, int) for d in t.dims)
        if t.name in p.shapes:
            r = _checked_override(t.name, t.dims, p.shapes[t.name])
            if not static:  # a static input needs no range; the override only had to agree
                out[t.name] = r
            continue
        if static:
            continue
        per_axis = []
        for axis, d in enumerate(t.dims):
            if isinstance(d, int):
                per_axis.append((d, d, d))
            elif d in batch_names:
                per_axis.append(batch)
            else:
                raise InvalidInput(
                    f"input '{t.name}' ({t.describe()}) has dynamic axis {axis} '{d}' besides "
                    f"the batch; give its range with the trt-gpu option shapes = "
                    f"['{t.name}:MIN:OPT:MAX'], shapes written like 1x128"
                )
        out[t.name] = ShapeRange(*(tuple(a[i] for a in per_axis) for i in range(3)))
    _check_shared_dims(io, out)
    return out


def _checked_override(name: str, dims: tuple, r: ShapeRange) -> ShapeRange:
    for k, shape in zip(_MOM, (r.min, r.opt, r.max), strict=True):
        if len(shape) != len(dims):
            raise InvalidInput(
                f"trt-gpu option shapes: '{name}' {k} {shape_str(shape)} has rank {len(shape)}; "
                f"the input has rank {len(dims)} ({', '.join(map(str, dims))})"
            )
        for axis, (d, s) in enumerate(zip(dims, shape, strict=True)):
            if isinstance(d, int) and d != s:
                raise InvalidInput(
                    f"trt-gpu option shapes: '{name}' {k} {shape_str(shape)} sets axis {axis} "
                    f"to {s}; the model fixes it at {d}"
                )
    if not all(a <= b <= c for a, b, c in zip(r.min, r.opt, r.max, strict=True)):
        raise InvalidInput(
            f"trt-gpu option shapes: '{name}' needs min <= opt <= max on every axis, got "
            f"{shape_str(r.min)}, {shape_str(r.opt)}, {shape_str(r.max)}"
        )
    return r


def _check_shared_dims(io: IoSpec, ranges: Profile) -> None:
    """Inputs that share a symbolic axis ('sequence') must be given the same range for it."""
    seen: dict[str, tuple[str, tuple[int, int, int]]] = {}
    for t in io.inputs:
        if t.name not in ranges:
            continue
        r = ranges[t.name]
        for axis, d in enumerate(t.dims):
            if not isinstance(d, str):
                continue
            span = (r.min[axis], r.opt[axis], r.max[axis])
            if d in seen and seen[d][1] != span:
                other, o = seen[d]
                raise InvalidInput(
                    f"trt-gpu option shapes: axis '{d}' is {o[0]}:{o[1]}:{o[2]} for '{other}' "
                    f"but {span[0]}:{span[1]}:{span[2]} for '{t.name}'; they must match"
                )
            seen.setdefault(d, (t.name, span))


def profiles_to_json(profiles: Sequence[Profile]) -> list[dict[str, Any]]:
    return [{n: r.to_dict() for n, r in p.items()} for p in profiles]


def profiles_from_json(value: Any) -> list[Profile]:
    """engine.json's profiles; an engine from before several profiles recorded one mapping."""
    items = [value] if isinstance(value, Mapping) else list(value or [])
    return [{n: ShapeRange.from_dict(r) for n, r in p.items()} for p in items if p]


# ---------------------------------------------------------------- trtexec


def version_tuple(text: str) -> tuple[int, ...]:
    """'10.13.3.9' -> (10, 13, 3, 9); a part without digits counts 0 ('10.7.0.post1')."""
    parts = []
    for p in str(text).split("."):
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_hardware_compatibility(opts: TrtOptions, tensorrt_version: str) -> None:
    """The hardware_compatibility value this TensorRT has; one line (InvalidInput) if not."""
    member, _, since = HARDWARE_COMPATIBILITY[opts.hardware_compatibility]
    if since and version_tuple(tensorrt_version) < version_tuple(since):
        raise InvalidInput(
            f"trt-gpu option hardware_compatibility = {opts.hardware_compatibility} needs "
            f"TensorRT {since} or later (HardwareCompatibilityLevel.{member}); this is "
            f"{tensorrt_version}: use ampere+ or upgrade TensorRT"
        )


# What trtexec does with --timingCacheFile, unlike this target's options (engine.json says it).
TRTEXEC_TIMING_CACHE_NOTE = (
    "trtexec's --timingCacheFile accepts a cache from another GPU or TensorRT (ignoring the "
    "mismatch) and writes the merged cache back to the file; timing_cache here is only read "
    "and shared_timing_cache is merged under a lock, and both refuse a mismatched cache"
)


def trtexec_command(
    onnx_name: str, opts: TrtOptions, choices: PlanChoices, files: Mapping[str, str]
) -> str:
    """The trtexec command line that builds the same engine from the same model.

    Profiles as trtexec's option parser (samples/common/sampleOptions.cpp) takes them: one
    --minShapes/--optShapes/--maxShapes triple for one profile; for several, each triple
    after its --profile=N ("Multiple --minShapes/--optShapes/--maxShapes without --profile are
    not allowed"). TensorRT 11 networks are strongly typed without --stronglyTyped.
    """
    args = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={files['engine']}", "--skipInference"]
    if choices.major < 11:
        args.append("--stronglyTyped")
    if not opts.tf32:
        args.append("--noTF32")
    if opts.workspace_mb:
        args.append(f"--memPoolSize=workspace:{opts.workspace_mb}M")
    several = len(choices.profiles) > 1
    for i, p in enumerate(choices.profiles):
        if several:
            args.append(f"--profile={i}")
        for k in _MOM:
            spec = ",".join(f"{n}:{shape_str(getattr(r, k))}" for n, r in p.items())
            args.append(f"--{k}Shapes={spec}")
    if opts.optimization_level is not None:
        args.append(f"--builderOptimizationLevel={opts.optimization_level}")
    hw = HARDWARE_COMPATIBILITY[opts.hardware_compatibility][1]
    if hw:
        args.append(f"--hardwareCompatibilityLevel={hw}")
    if opts.version_compatible:
        args.append("--versionCompatible")
    if choices.sparse:
        args.append("--sparsity=enable")
    cache = opts.shared_timing_cache or opts.timing_cache
    if cache:
        args.append(f"--timingCacheFile={cache}")
    args += ["--profilingVerbosity=detailed", f"--exportLayerInfo={files['layers']}"]
    return shlex.join(args)
