"""The trt-gpu target's plain logic, on any machine: build options, optimisation profiles,
whether int8 is on, what an engine is tied to, feed checks and parser messages.

No TensorRT or CUDA here (targets/tensorrt_gpu.py calls those): all of it runs, and is
tested, where neither is installed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from toolchain.core.artifact import IoSpec
from toolchain.core.errors import InvalidInput

# ---------------------------------------------------------------- options (pure)


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


@dataclass(frozen=True)
class TrtOptions:
    """Validated build options of `trt-gpu` (see TrtGpu for their meaning)."""

    fp16: bool = False
    int8: bool | None = None  # None: decided by the model (on when it has QuantizeLinear nodes)
    workspace_mb: int | None = None  # None: TensorRT's default (the device's global memory)
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 32
    shapes: dict[str, ShapeRange] = field(default_factory=dict)
    timing_cache: Path | None = None  # an earlier build's timing.cache to start from (read only)
    sparse_weights: bool | None = None  # None: on when the model has 2:4 layers


_MOM = ("min", "opt", "max")


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _bool_option(options: Mapping[str, Any], key: str) -> bool | None:
    if key not in options:
        return None
    v = options[key]
    if not isinstance(v, bool):
        raise InvalidInput(f"trt-gpu option {key}: expected true or false, got {v!r}")
    return v


def _positive_int_option(options: Mapping[str, Any], key: str) -> int | None:
    if key not in options:
        return None
    v = options[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InvalidInput(f"trt-gpu option {key}: expected a positive integer, got {v!r}")
    return v


def parse_shape(text: str, what: str) -> tuple[int, ...]:
    """'1x3x224x224' -> (1, 3, 224, 224); every dimension a positive integer."""
    try:
        dims = tuple(int(p) for p in text.strip().split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise InvalidInput(
            f"trt-gpu option shapes: {what}: '{text}' is not a shape like 1x3x224x224"
        )
    return dims


def parse_shapes(value: str | Sequence[str]) -> dict[str, ShapeRange]:
    """The `shapes` option: entries 'name:MIN:OPT:MAX', each shape written like 1x3x224x224.

    A string holds comma-separated entries (trtexec's --minShapes style); a list holds one
    entry per item. The name is everything before the last three colons, so ONNX names that
    contain colons ('input:0') work.
    """
    if isinstance(value, str):
        entries = [e for e in value.split(",") if e.strip()]
    elif isinstance(value, Sequence) and all(isinstance(e, str) for e in value):
        entries = list(value)
    else:
        raise InvalidInput(
            f"trt-gpu option shapes: expected 'name:MIN:OPT:MAX' strings, got {value!r}"
        )
    out: dict[str, ShapeRange] = {}
    for entry in entries:
        parts = entry.strip().rsplit(":", 3)
        if len(parts) != 4 or not parts[0]:
            raise InvalidInput(
                f"trt-gpu option shapes: '{entry}' is not 'name:MIN:OPT:MAX' "
                "(e.g. 'x:1x3x224x224:8x3x224x224:32x3x224x224')"
            )
        name = parts[0]
        if name in out:
            raise InvalidInput(f"trt-gpu option shapes: input '{name}' is given twice")
        shapes = (parse_shape(p, f"'{name}' {k}") for p, k in zip(parts[1:], _MOM, strict=True))
        out[name] = ShapeRange(*shapes)
    return out


def parse_options(options: Mapping[str, Any], known: Iterable[str]) -> TrtOptions:
    """Check BuildConfig.options without TensorRT: unknown keys, types, ranges, batch order."""
    known = tuple(known)
    unknown = set(options) - set(known)
    if unknown:
        raise InvalidInput(
            f"unknown trt-gpu option(s) {sorted(unknown)}; available: {', '.join(known)}"
        )
    d = TrtOptions()
    fp16 = _bool_option(options, "fp16")
    int8 = _bool_option(options, "int8")
    workspace = _positive_int_option(options, "workspace_mb")
    given = {k: _positive_int_option(options, k) for k in ("min_batch", "opt_batch", "max_batch")}
    # Unset batch bounds follow the ones that are set, so max_batch=4 alone is a valid request.
    mn = given["min_batch"] or d.min_batch
    mx = given["max_batch"] or max(d.max_batch, mn)
    opt = given["opt_batch"] or min(max(d.opt_batch, mn), mx)
    if not mn <= opt <= mx:
        raise InvalidInput(
            f"trt-gpu options: need min_batch <= opt_batch <= max_batch, got {mn}, {opt}, {mx}"
        )
    sparse = _bool_option(options, "sparse_weights")
    shapes = parse_shapes(options["shapes"]) if "shapes" in options else {}
    cache = None
    if "timing_cache" in options:
        v = options["timing_cache"]
        if not isinstance(v, str | Path) or not Path(v).is_file():
            raise InvalidInput(f"trt-gpu option timing_cache: no such file: {v}")
        cache = Path(v)
    return TrtOptions(
        fp16=bool(fp16),
        int8=int8,
        workspace_mb=workspace,
        min_batch=mn,
        opt_batch=opt,
        max_batch=mx,
        shapes=shapes,
        timing_cache=cache,
        sparse_weights=sparse,
    )


# ---------------------------------------------------------------- profiles (pure)


def profile_shapes(io: IoSpec, opts: TrtOptions) -> dict[str, ShapeRange]:
    """One shape range per input that has dynamic dimensions, for one optimization profile.

    A dynamic first axis is the batch: its range is min_batch..max_batch (opt at opt_batch),
    and so is any axis with the same symbolic name. Other dynamic axes (a sequence length,
    an image size) have no default and must be given with `shapes`, which replaces the
    derived range of that input. Axes sharing a symbolic name must get the same range.
    """
    names = io.input_names
    unknown = [n for n in opts.shapes if n not in names]
    if unknown:
        raise InvalidInput(
            f"trt-gpu option shapes: no input named {', '.join(map(repr, unknown))}; "
            f"the model's inputs: {', '.join(t.describe() for t in io.inputs)}"
        )
    batch = (opts.min_batch, opts.opt_batch, opts.max_batch)
    batch_names = {t.dims[0] for t in io.inputs if t.rank and isinstance(t.dims[0], str)}
    out: dict[str, ShapeRange] = {}
    for t in io.inputs:
        static = all(isinstance(d, int) for d in t.dims)
        if t.name in opts.shapes:
            r = _checked_override(t.name, t.dims, opts.shapes[t.name])
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


def _check_shared_dims(io: IoSpec, ranges: Mapping[str, ShapeRange]) -> None:
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


# ---------------------------------------------------------------- quantization (pure)


def _nodes(model: onnx.ModelProto) -> Iterable[onnx.NodeProto]:
    """Every node: the main graph, subgraphs (If/Loop/Scan bodies) and local functions."""
    stack: list[Iterable[onnx.NodeProto]] = [model.graph.node, *(f.node for f in model.functions)]
    while stack:
        for node in stack.pop():
            yield node
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g.node)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(g.node for g in a.graphs)


def count_quantize_nodes(model: onnx.ModelProto) -> int:
    """QuantizeLinear nodes anywhere in the model: non-zero means explicit (QDQ) quantization."""
    return sum(n.op_type == "QuantizeLinear" for n in _nodes(model))


def int8_setting(requested: bool | None, n_quantize: int, path: Path) -> tuple[bool, str | None]:
    """Whether to build with INT8, and why (recorded in engine.json).

    TensorRT builds a QDQ model only with INT8 enabled, so it is switched on for one and
    cannot be switched off. INT8 without Q/DQ nodes would need a calibrator, which this
    target does not provide (implicit quantization is deprecated since TensorRT 10.1).
    """
    if n_quantize:
        if requested is False:
            raise InvalidInput(
                f"{path}: the model has {n_quantize} QuantizeLinear node(s), which TensorRT "
                "builds only with int8 enabled; remove int8 = false"
            )
        how = "requested" if requested else "enabled automatically"
        return True, f"{how}: the model has {n_quantize} QuantizeLinear node(s) (explicit QDQ)"
    if requested:
        raise InvalidInput(
            f"{path}: int8 = true needs a quantized (QDQ) model and this one has no "
            "QuantizeLinear nodes; quantize it first (edgesmith quantize), trt-gpu does not "
            "calibrate"
        )
    return False, None


def sparse_setting(requested: bool | None, model: onnx.ModelProto) -> tuple[bool, dict[str, Any]]:
    """Whether to build with SPARSE_WEIGHTS, and what engine.json records about it: the layers
    whose weights follow 2:4 along their reduction axis (toolchain/prune/audit.py), which are
    the ones TensorRT may run on sparse tensor cores (Ampere and later)."""
    from toolchain.prune.audit import weight_layers

    layers = [r for r in weight_layers(model) if r["two_four"]]
    on = bool(layers) if requested is None else requested
    record: dict[str, Any] = {"eligible_layers": [r["name"] for r in layers]}
    if on and not layers:
        record["note"] = "no layer follows 2:4: TensorRT will find nothing to run sparse"
    elif on and any(r["quantized"] for r in layers):
        record["note"] = (
            "int8 Q/DQ and 2:4 on the same layers: TensorRT may still pick dense kernels "
            "(TensorRT issue 4694); the engine's layer information says which it chose"
        )
    return on, record


# ---------------------------------------------------------------- compatibility (pure)


@dataclass(frozen=True)
class DeviceFacts:
    """What a TensorRT plan is tied to: the TensorRT version and the GPU."""

    tensorrt: str
    gpu: str
    compute_capability: str  # "8.6"

    def describe(self) -> str:
        return f"{self.gpu} (compute {self.compute_capability}) with TensorRT {self.tensorrt}"


def compatibility_problems(recorded: Mapping[str, Any], here: DeviceFacts) -> list[str]:
    """How the machine that built an engine (engine.json) differs from this one; [] if not."""
    problems = []
    for key, label in (
        ("tensorrt", "TensorRT"),
        ("gpu", "GPU"),
        ("compute_capability", "compute capability"),
    ):
        built = recorded.get(key)
        now = getattr(here, key)
        if built is None:
            problems.append(f"engine.json does not record the {label}")
        elif str(built) != now:
            problems.append(f"{label} {built} at build, {now} here")
    return problems


def check_feeds(
    io: IoSpec, ranges: Mapping[str, ShapeRange], feeds: Mapping[str, np.ndarray]
) -> None:
    """Feeds must name every input once, with its dtype, rank, fixed dims and profile range."""
    missing = [n for n in io.input_names if n not in feeds]
    extra = [n for n in feeds if n not in io.input_names]
    if missing or extra:
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unexpected {extra}"] if extra else []
        raise InvalidInput(
            f"feeds: {'; '.join(parts)}; the engine takes "
            f"{', '.join(t.describe() for t in io.inputs)}"
        )
    for t in io.inputs:
        a = feeds[t.name]
        dtype, shape = np.asarray(a).dtype.name, tuple(np.shape(a))
        if dtype != t.dtype:
            raise InvalidInput(f"input '{t.name}' is {dtype}; the engine takes {t.describe()}")
        if len(shape) != t.rank or any(
            isinstance(d, int) and d != s for d, s in zip(t.dims, shape, strict=True)
        ):
            raise InvalidInput(
                f"input '{t.name}' has shape {shape_str(shape)}; the engine takes {t.describe()}"
            )
        r = ranges.get(t.name)
        if r and not all(lo <= s <= hi for lo, s, hi in zip(r.min, shape, r.max, strict=True)):
            raise InvalidInput(
                f"input '{t.name}' has shape {shape_str(shape)}; this engine accepts "
                f"{r.describe()}; rebuild with a wider max_batch or shapes"
            )


def describe_parser_errors(path: Path, errors: Sequence[Any]) -> str:
    """One line from the ONNX parser's errors (trt.ParserError: node, name, op, desc)."""
    if not errors:
        return f"{path}: TensorRT could not parse the model (no error was reported)"
    e = errors[0]
    node = e.node()
    if node >= 0:
        # node_name/node_operator arrived during TensorRT 10; the index is always there.
        name = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        where = f"node {node}" + (f" '{name}'" if name else "") + (f" ({op})" if op else "")
    else:
        where = "the graph"
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return f"{path}: TensorRT cannot parse {where}: {' '.join(str(e.desc()).split())}{more}"
