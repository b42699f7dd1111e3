"""TensorRT on an NVIDIA GPU: an ONNX model parsed and built into a serialized engine (a plan).

An engine is specific to the GPU model and the TensorRT version that built it (TensorRT's
"Engine Compatibility" notes: without version or hardware compatibility modes, a plan runs
only on the TensorRT version and GPU architecture it was built with). engine.json records
both and `TrtGpu.load` refuses a mismatch with a message that says to rebuild.

Written against the TensorRT 10 Python API. `tensorrt` and `torch` are imported inside the
functions that need them; the option, profile, quantization and compatibility logic are
plain functions in targets/tensorrt_config.py that run (and are tested) without either.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from targets.base import ENGINE_CONFIG, BuildConfig, read_engine_config
from targets.tensorrt_config import (
    DeviceFacts,
    ShapeRange,
    TrtOptions,
    check_feeds,
    compatibility_problems,
    count_quantize_nodes,
    describe_parser_errors,
    int8_setting,
    parse_options,
    profile_shapes,
    shape_str,
    sparse_setting,
)
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
    if opts.sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)  # 2:4 layers may run on sparse cores
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
                        f"input '{t.name}' shape {shape_str(a.shape)} rejected by the engine: "
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
      sparse_weights  build with SPARSE_WEIGHTS (default: when the model has 2:4 layers)
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
        "sparse_weights",
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
        sparse, sparse_record = sparse_setting(opts.sparse_weights, proto)
        why = self.unavailable_reason()
        if why:
            raise TargetUnavailable(f"trt-gpu cannot build here: {why}")

        trt = _trt()
        here = _device_facts()
        # The parser owns the weights the network points to: keep it until the build is done.
        builder, network, _parser = network_from_onnx_path(Path(model.path))
        plan, workspace = engine_bytes_from_network(
            builder, network, replace(opts, sparse_weights=sparse), int8, ranges, out
        )
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
            "sparse_weights": sparse,
            "sparse": sparse_record,
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
