"""TensorRT on an NVIDIA GPU: an ONNX model parsed and built into a serialized engine (a plan).

An engine is specific to the GPU model and the TensorRT version that built it (TensorRT's
"Engine Compatibility" notes: without version or hardware compatibility modes, a plan runs
only on the TensorRT version and GPU architecture it was built with). engine.json records
both and `TrtGpu.load` refuses a mismatch with a message that says to rebuild.

Written against the TensorRT 10 Python API. `tensorrt` and `torch` are imported inside the
functions that need them; the option, profile, quantization and compatibility logic are
plain functions that run (and are tested) on machines without either.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from targets.base import ENGINE_CONFIG, BuildConfig, read_engine_config
from toolchain.core.artifact import Format, IoSpec, ModelArtifact, Precision
from toolchain.core.errors import InvalidInput, TargetUnavailable
from toolchain.core.onnx_model import check_onnx, io_from_onnx

ENGINE_FILE = "engine.plan"
TIMING_CACHE_FILE = "timing.cache"
SUPPORTED_TRT_MAJOR = 10  # TensorRT 11 removes BuilderFlag.FP16/INT8, which this target uses

# Engine I/O types this runner can exchange with numpy, by trt.DataType member name.
NUMPY_FROM_TRT: dict[str, str] = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}

_pylog = logging.getLogger("edgesmith.trt")


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
        return f"{_shape_str(self.min)} to {_shape_str(self.max)} (opt {_shape_str(self.opt)})"


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


_MOM = ("min", "opt", "max")


def _shape_str(shape: Sequence[int]) -> str:
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
                f"trt-gpu option shapes: '{name}' {k} {_shape_str(shape)} has rank {len(shape)}; "
                f"the input has rank {len(dims)} ({', '.join(map(str, dims))})"
            )
        for axis, (d, s) in enumerate(zip(dims, shape, strict=True)):
            if isinstance(d, int) and d != s:
                raise InvalidInput(
                    f"trt-gpu option shapes: '{name}' {k} {_shape_str(shape)} sets axis {axis} "
                    f"to {s}; the model fixes it at {d}"
                )
    if not all(a <= b <= c for a, b, c in zip(r.min, r.opt, r.max, strict=True)):
        raise InvalidInput(
            f"trt-gpu option shapes: '{name}' needs min <= opt <= max on every axis, got "
            f"{_shape_str(r.min)}, {_shape_str(r.opt)}, {_shape_str(r.max)}"
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
                f"input '{t.name}' has shape {_shape_str(shape)}; the engine takes {t.describe()}"
            )
        r = ranges.get(t.name)
        if r and not all(lo <= s <= hi for lo, s, hi in zip(r.min, shape, r.max, strict=True)):
            raise InvalidInput(
                f"input '{t.name}' has shape {_shape_str(shape)}; this engine accepts "
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


# ---------------------------------------------------------------- TensorRT and CUDA


def _trt():
    import tensorrt as trt

    return trt


@functools.cache
def _logger():
    """The process's one TensorRT logger (TensorRT keeps the first logger it is given).

    It forwards warnings to Python logging and keeps the latest errors, so that a failed
    parse, build or run can say why in one line.
    """
    trt = _trt()
    sev = trt.ILogger.Severity

    class _Log(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors.append(" ".join(str(msg).split()))
                _pylog.error("%s", msg)
            elif severity == sev.WARNING:
                _pylog.warning("%s", msg)
            else:
                _pylog.debug("%s", msg)

        def last_error(self, default: str) -> str:
            return self.errors[-1] if self.errors else default

    return _Log()


def _device_facts() -> DeviceFacts:
    import torch

    idx = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    return DeviceFacts(_trt().__version__, torch.cuda.get_device_name(idx), f"{major}.{minor}")


def network_from_onnx_path(path: Path):
    """Builder, network and parser for an ONNX file, parsed by path so external data loads."""
    trt = _trt()
    logger = _logger()
    logger.errors.clear()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    if not ok or parser.num_errors:
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise InvalidInput(describe_parser_errors(path, errors))
    return builder, network, parser


def engine_bytes_from_network(
    builder, network, opts: TrtOptions, int8: bool, ranges: Mapping[str, ShapeRange], out: Path
):
    """Build the serialized engine; the builder's timing cache is written to out."""
    trt = _trt()
    logger = _logger()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if t.is_shape_tensor:
            raise InvalidInput(f"input '{t.name}' is a shape tensor; trt-gpu does not support it")
        if any(d < 0 for d in t.shape) and t.name not in ranges:
            raise InvalidInput(f"input '{t.name}' is dynamic in TensorRT but has no shape range")
    config = builder.create_builder_config()
    if opts.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    if opts.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ scales come from the model: no calibrator
    if ranges:
        profile = builder.create_optimization_profile()
        for name, r in ranges.items():
            try:
                profile.set_shape(name, r.min, r.opt, r.max)
            except RuntimeError as e:
                raise InvalidInput(f"shape range for '{name}' rejected by TensorRT: {e}") from None
        if config.add_optimization_profile(profile) < 0:
            raise InvalidInput(f"optimization profile rejected: {logger.last_error('invalid')}")
    seed = opts.timing_cache.read_bytes() if opts.timing_cache else b""
    cache = config.create_timing_cache(seed)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise InvalidInput(
            f"timing cache {opts.timing_cache} was made on another GPU or TensorRT version; "
            "drop the timing_cache option"
        )
    logger.errors.clear()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InvalidInput(f"TensorRT could not build the engine: {logger.last_error('no reason')}")
    with open(out / TIMING_CACHE_FILE, "wb") as f:
        f.write(config.get_timing_cache().serialize())
    workspace = config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) >> 20
    return plan, workspace


@dataclass
class TrtRunner:
    """Runs a deserialized engine: numpy in, torch CUDA buffers on the GPU, numpy out.

    One execution context and one CUDA stream; not safe to call from several threads at once.
    """

    io: IoSpec
    ranges: dict[str, ShapeRange]
    engine: Any
    context: Any
    stream: Any  # torch.cuda.Stream
    device: Any  # torch.device
    output_dtypes: dict[str, Any]  # torch dtypes by output name
    runtime: Any = None  # kept alive as long as the engine

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        check_feeds(self.io, self.ranges, feeds)
        logger = _logger()
        logger.errors.clear()
        ctx = self.context
        inputs = []  # device copies must outlive the run
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for t in self.io.inputs:
                a = np.ascontiguousarray(feeds[t.name])
                if not ctx.set_input_shape(t.name, a.shape):
                    raise InvalidInput(
                        f"input '{t.name}' shape {_shape_str(a.shape)} rejected by the engine: "
                        f"{logger.last_error('outside its profile')}"
                    )
                host = torch.from_numpy(a if a.flags.writeable else a.copy())
                dev = host.to(self.device)  # enqueued on self.stream
                inputs.append(dev)
                ctx.set_tensor_address(t.name, dev.data_ptr())
            unset = ctx.infer_shapes()
            if unset:
                raise InvalidInput(f"engine inputs without a shape: {list(unset)}")
            outputs = {}
            for name, dtype in self.output_dtypes.items():
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise InvalidInput(
                        f"output '{name}' has a data-dependent shape {shape}; trt-gpu runs "
                        "only models whose output shapes follow from the input shapes"
                    )
                outputs[name] = torch.empty(shape, dtype=dtype, device=self.device)
                ctx.set_tensor_address(name, outputs[name].data_ptr())
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise InvalidInput(
                    f"TensorRT execution failed: {logger.last_error('see the log above')}"
                )
            # .cpu() copies on self.stream (the current stream) and waits for it.
            result = {name: t.cpu().numpy() for name, t in outputs.items()}
        self.stream.synchronize()
        return result


class TrtGpu:
    """Target `trt-gpu`: TensorRT 10 on the CUDA device torch sees as current.

    Options (BuildConfig.options):
      fp16          allow FP16 kernels (bool, default false)
      int8          allow INT8 kernels (bool); on by itself for a QDQ model, which needs it,
                    and refused for a model without QuantizeLinear nodes (no calibration)
      workspace_mb  the builder's workspace limit in MiB (default: TensorRT's, all memory)
      min_batch, opt_batch, max_batch
                    the range of a dynamic first axis (defaults below); opt is what the
                    kernels are tuned for
      shapes        'name:MIN:OPT:MAX' ranges (shapes like 1x128) for other dynamic axes,
                    replacing that input's derived range
      timing_cache  an earlier build's timing.cache to start from (not modified)
    """

    name: ClassVar[str] = "trt-gpu"
    DEFAULT_MIN_BATCH: ClassVar[int] = TrtOptions.min_batch
    DEFAULT_OPT_BATCH: ClassVar[int] = TrtOptions.opt_batch
    DEFAULT_MAX_BATCH: ClassVar[int] = TrtOptions.max_batch
    OPTIONS: ClassVar[tuple[str, ...]] = (
        "fp16",
        "int8",
        "workspace_mb",
        "min_batch",
        "opt_batch",
        "max_batch",
        "shapes",
        "timing_cache",
    )

    def unavailable_reason(self) -> str | None:
        try:
            trt = _trt()
        except ModuleNotFoundError:
            return "tensorrt is not installed (pip install tensorrt)"
        except (ImportError, OSError) as e:
            return f"tensorrt failed to import ({str(e).strip().splitlines()[0]})"
        version = str(getattr(trt, "__version__", "unknown"))
        if version.split(".")[0] != str(SUPPORTED_TRT_MAJOR):
            return f"tensorrt {version} is not supported (trt-gpu needs TensorRT 10.x)"
        import torch

        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                return f"no CUDA device (torch {torch.__version__} is a CPU-only build)"
            return "no CUDA device"
        return None

    def build(self, model: ModelArtifact, cfg: BuildConfig, out: Path) -> ModelArtifact:
        out = Path(out)
        # Everything that can be checked without TensorRT is checked first, so bad options
        # and models give InvalidInput on any machine.
        opts = parse_options(cfg.options, self.OPTIONS)
        proto = check_onnx(model.path)
        io = io_from_onnx(proto)
        ranges = profile_shapes(io, opts)
        int8, int8_reason = int8_setting(opts.int8, count_quantize_nodes(proto), model.path)
        why = self.unavailable_reason()
        if why:
            raise TargetUnavailable(f"trt-gpu cannot build here: {why}")

        trt = _trt()
        here = _device_facts()
        # The parser owns the weights the network points to: keep it until the build is done.
        builder, network, _parser = network_from_onnx_path(Path(model.path))
        plan, workspace = engine_bytes_from_network(builder, network, opts, int8, ranges, out)
        with open(out / ENGINE_FILE, "wb") as f:
            f.write(plan)
        settings = {
            "target": self.name,
            "engine": ENGINE_FILE,
            "timing_cache": TIMING_CACHE_FILE,
            "timing_cache_seeded": opts.timing_cache is not None,
            "fp16": opts.fp16,
            "int8": int8,
            "int8_reason": int8_reason,
            "workspace_mb": workspace,
            "profiles": {name: r.to_dict() for name, r in ranges.items()},
            "tensorrt": trt.__version__,
            "gpu": here.gpu,
            "compute_capability": here.compute_capability,
            "files": [ENGINE_FILE, TIMING_CACHE_FILE],
        }
        config = {**settings, "io": io.to_dict()}
        (out / ENGINE_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if int8:
            precision = Precision.mixed if opts.fp16 else Precision.int8
        else:
            precision = Precision.fp16 if opts.fp16 else model.precision
        return ModelArtifact.at(
            out,
            Format.engine,
            precision=precision,
            io=io,
            parent=model.sha256,
            meta={"target": self.name, **settings},
        )

    def load(self, engine: ModelArtifact, threads: int | None = None) -> TrtRunner:
        """A runner for an engine directory. `threads` does not apply to a GPU and is ignored."""
        directory = Path(engine.path)
        cfg = read_engine_config(directory)
        if cfg.get("target") != self.name:
            raise InvalidInput(
                f"{directory}: built for target '{cfg.get('target')}', not '{self.name}'"
            )
        why = self.unavailable_reason()
        if why:
            raise TargetUnavailable(f"trt-gpu cannot run {directory} here: {why}")
        here = _device_facts()
        problems = compatibility_problems(cfg, here)
        if problems:
            raise InvalidInput(
                f"{directory}: this engine does not fit this machine ({'; '.join(problems)}); "
                f"TensorRT engines run only where they were built: rebuild it here"
            )
        return self._runner(directory, cfg)

    def _runner(self, directory: Path, cfg: Mapping[str, Any]) -> TrtRunner:
        import torch

        missing = [k for k in ("engine", "io") if k not in cfg]
        if missing:
            raise InvalidInput(f"{directory / ENGINE_CONFIG}: no {', '.join(missing)}; rebuild it")
        io = IoSpec.from_dict(cfg["io"])

        trt = _trt()
        logger = _logger()
        logger.errors.clear()
        runtime = trt.Runtime(logger)
        eng = runtime.deserialize_cuda_engine((directory / cfg["engine"]).read_bytes())
        if eng is None:
            raise InvalidInput(
                f"{directory / cfg['engine']}: TensorRT could not load it: "
                f"{logger.last_error('not a plan for this TensorRT')}"
            )
        context = eng.create_execution_context()
        if context is None:
            raise InvalidInput(
                f"{directory}: no execution context: {logger.last_error('out of GPU memory?')}"
            )
        tensors = {}
        for i in range(eng.num_io_tensors):
            name = eng.get_tensor_name(i)
            is_input = eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            tensors[name] = (is_input, eng.get_tensor_dtype(name).name)
        expected = {t.name: (True, t.dtype) for t in io.inputs}
        expected |= {t.name: (False, t.dtype) for t in io.outputs}
        actual = {n: (inp, NUMPY_FROM_TRT.get(dt, dt)) for n, (inp, dt) in tensors.items()}
        if actual != expected:
            raise InvalidInput(
                f"{directory}: {cfg['engine']} does not match {ENGINE_CONFIG} "
                f"(engine I/O {actual}, recorded {expected}); rebuild it"
            )
        device = torch.device("cuda", torch.cuda.current_device())
        return TrtRunner(
            io=io,
            ranges={n: ShapeRange.from_dict(r) for n, r in cfg.get("profiles", {}).items()},
            engine=eng,
            context=context,
            stream=torch.cuda.Stream(device=device),
            device=device,
            output_dtypes={t.name: getattr(torch, t.dtype) for t in io.outputs},
            runtime=runtime,
        )
