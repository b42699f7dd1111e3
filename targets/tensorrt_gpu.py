"""TensorRT on an NVIDIA GPU: an ONNX model parsed and built into a serialized engine (a plan).

Written against the TensorRT 10 and 11 Python APIs (checked against NVIDIA's bindings of
10.0.1, 10.13.3.9, 10.16.1.11 and 11.4.0.106 by tests/targets/test_tensorrt_api.py), strongly
typed: every tensor's precision comes from the model (10.12 deprecated the weak-typing flags
FP16/INT8, 11 removed them; every 10.x has STRONGLY_TYPED, and 11 is strongly typed without
it). Int8 comes from Q/DQ nodes (explicit quantization); fp16 is an fp16 copy of the model
made here (fp32 I/O, `fp32_layers` kept fp32), the AutoCast step TensorRT's migration guide
names.

An engine is tied to the TensorRT version and compute capability that built it, unless built
with version or hardware compatibility (targets/tensorrt_config.py: compatibility_problems);
engine.json records both and `load` refuses a mismatch with a message that says to rebuild.
Beside the plan: the timing cache, the engine inspector's layer information (layers.json:
which layers run in int8, fp16, sparse) and the equivalent trtexec command (engine.json).

`tensorrt` and `torch` are imported inside the functions that need them; options, profiles,
quantization and compatibility are plain functions that run (and are tested) without either.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import onnx

from edgesmith.targets.base import ENGINE_CONFIG, BuildConfig, Option, read_engine_config
from edgesmith.targets.fp16 import fp16_model, fp32_layer_lists
from edgesmith.targets.tensorrt_config import (
    int8_setting,
    io_type_problems,
    layer_precisions,
    quantized_types,
    sparse_setting,
)
from edgesmith.targets.tensorrt_options import (
    HARDWARE_COMPATIBILITY,
    TRT_OPTIONS,
    TRTEXEC_TIMING_CACHE_NOTE,
    PlanChoices,
    Profile,
    TrtOptions,
    check_hardware_compatibility,
    parse_options,
    profile_shapes,
    profiles_from_json,
    profiles_to_json,
    trtexec_command,
    version_tuple,
)
from edgesmith.targets.tensorrt_qdq import TRT_PRESET, check_qdq_rules
from edgesmith.targets.tensorrt_runner import (
    TrtRunner,
    device,
    runner_from_plan,
    trt_logger,
    trt_module,
)
from edgesmith.toolchain.core.artifact import Format, IoSpec, ModelArtifact, Precision
from edgesmith.toolchain.core.errors import InvalidInput, TargetUnavailable
from edgesmith.toolchain.core.files import dir_lock
from edgesmith.toolchain.core.onnx_model import check_onnx, io_from_onnx
from edgesmith.toolchain.core.presets import Isa, Preset

ENGINE_FILE = "engine.plan"
TIMING_CACHE_FILE = "timing.cache"
LAYERS_FILE = "layers.json"
SUPPORTED_TRT_MAJORS = (10, 11)


def tensorrt_major(trt) -> int:
    return version_tuple(trt.__version__)[0]


def network_flags(trt) -> int:
    """STRONGLY_TYPED on 10.x; 0 on 11, where every network is strongly typed (the flag is
    deprecated there)."""
    if tensorrt_major(trt) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def network_from_onnx_path(path: Path):
    """Builder, network and parser for an ONNX file, parsed by path so external data loads."""
    from edgesmith.targets.tensorrt_config import describe_parser_errors

    trt = trt_module()
    logger = trt_logger()  # initialises the plugin library before the parser needs it
    logger.errors.clear()
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))  # explicit batch: the only mode
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    if not ok or parser.num_errors:
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise InvalidInput(describe_parser_errors(path, errors))
    return builder, network, parser


def check_network(network, io: IoSpec, profiles: Sequence[Profile], path: Path) -> None:
    """Before building: inputs TensorRT can take, a range for each dynamic one, and I/O types
    the engine will have that match the model's (else it would build and never load)."""
    types = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        types[t.name] = t.dtype.name
        if t.is_shape_tensor:
            raise InvalidInput(f"input '{t.name}' is a shape tensor; trt-gpu does not support it")
        if any(d < 0 for d in t.shape) and not all(t.name in p for p in profiles or [{}]):
            raise InvalidInput(f"input '{t.name}' is dynamic in TensorRT but has no shape range")
    for i in range(network.num_outputs):
        t = network.get_output(i)
        types[t.name] = t.dtype.name
    problems = io_type_problems(io, types)
    if problems:
        raise InvalidInput(f"{path}: TensorRT cannot run this model as it is: {problems[0]}")


def builder_config(builder, opts: TrtOptions, choices: PlanChoices):
    """The IBuilderConfig for these options; TF32 is off unless asked, so fp32 is fp32."""
    trt = trt_module()
    config = builder.create_builder_config()
    if opts.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    (config.set_flag if opts.tf32 else config.clear_flag)(trt.BuilderFlag.TF32)
    if choices.sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)  # 2:4 layers may run on sparse cores
    if opts.optimization_level is not None:
        config.builder_optimization_level = opts.optimization_level
    member = HARDWARE_COMPATIBILITY[opts.hardware_compatibility][0]
    config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, member)
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer info names precisions
    for p in choices.profiles:
        profile = builder.create_optimization_profile()
        for name, r in p.items():
            try:
                profile.set_shape(name, r.min, r.opt, r.max)
            except (RuntimeError, TypeError) as e:
                raise InvalidInput(f"shape range for '{name}' rejected by TensorRT: {e}") from None
        if config.add_optimization_profile(profile) < 0:
            why = trt_logger().last_error("invalid")
            raise InvalidInput(f"optimization profile rejected: {why}")
    return config


def attach_timing_cache(config, opts: TrtOptions) -> bool:
    """Seed the build's timing cache from `timing_cache` or the shared one; True if seeded."""
    path = opts.shared_timing_cache or opts.timing_cache
    seed = b""
    if path is not None and path.is_file():
        with dir_lock(path.parent):  # not half-way through another build's merge
            seed = path.read_bytes()
    cache = config.create_timing_cache(seed)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise InvalidInput(
            f"timing cache {path} was made on another GPU or TensorRT version; "
            "name another file or drop the option"
        )
    return bool(seed)


def merge_shared_timing_cache(config, path: Path) -> None:
    """Merge this build's timing cache into the shared file, under a lock on its directory,
    so builds running at once each add their entries (the file is replaced, never torn)."""
    with dir_lock(path.parent):
        current = path.read_bytes() if path.is_file() else b""
        merged = config.create_timing_cache(current)
        if merged is None or not merged.combine(config.get_timing_cache(), False):
            raise InvalidInput(f"shared timing cache {path}: made on another GPU or TensorRT")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(bytes(merged.serialize()))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def layer_information(plan: bytes, host_code: bool) -> dict[str, Any]:
    """The engine inspector's JSON for the whole engine (what each layer became)."""
    trt = trt_module()
    runtime = trt.Runtime(trt_logger())
    runtime.engine_host_code_allowed = host_code
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise InvalidInput(f"the built plan does not load: {trt_logger().last_error('no reason')}")
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return json.loads(info)


def build_plan(source: Path, io: IoSpec, opts: TrtOptions, choices: PlanChoices):
    """(the serialized plan, the builder config, whether its timing cache was seeded). An fp16
    build parses this target's fp16 copy of the model, made in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="edgesmith-trt-") as tmp:
        parsed = source
        if opts.fp16:
            full = onnx.load(str(source))  # with its external data
            fp32 = list(choices.fp32_nodes), list(choices.fp32_ops)
            parsed = fp16_model(full, *fp32, Path(tmp) / "model.fp16.onnx")
        # The parser owns the weights the network points to: keep it until the build ends.
        builder, network, _parser = network_from_onnx_path(parsed)
        check_network(network, io, choices.profiles, source)
        config = builder_config(builder, opts, choices)
        seeded = attach_timing_cache(config, opts)
        trt_logger().errors.clear()
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            why = trt_logger().last_error("no reason")
            raise InvalidInput(f"TensorRT could not build the engine: {why}")
        return bytes(plan), config, seeded


class TrtGpu:
    """Target `trt-gpu`: TensorRT 10 or 11 on the CUDA device torch sees as current.

    Its build options are TRT_OPTIONS (targets/tensorrt_options.py), checked there by
    parse_options; `edgesmith targets --options trt-gpu` lists them.
    """

    name: ClassVar[str] = "trt-gpu"
    PRESETS: ClassVar[dict[str, Preset]] = {"trt-gpu": Preset(**TRT_PRESET)}

    def default_preset(self, isa: Isa) -> tuple[str, str]:
        return "trt-gpu", "target"

    def check_quantized(self, path: Path) -> None:
        """A model quantized for this target follows TensorRT's Q/DQ rules."""
        check_qdq_rules(path)

    DEFAULT_MIN_BATCH: ClassVar[int] = 1
    DEFAULT_OPT_BATCH: ClassVar[int] = 1
    DEFAULT_MAX_BATCH: ClassVar[int] = 32
    OPTIONS: ClassVar[tuple[Option, ...]] = TRT_OPTIONS

    def unavailable_reason(self) -> str | None:
        try:
            trt = trt_module()
        except ModuleNotFoundError:
            return "tensorrt is not installed (pip install 'edgesmith[gpu]')"
        except (ImportError, OSError) as e:
            return f"tensorrt failed to import ({str(e).strip().splitlines()[0]})"
        version = str(getattr(trt, "__version__", "unknown"))
        if version_tuple(version)[0] not in SUPPORTED_TRT_MAJORS:
            return f"tensorrt {version} is not supported (trt-gpu needs TensorRT 10.x or 11.x)"
        return device().unavailable_reason()

    def build(self, model: ModelArtifact, cfg: BuildConfig, out: Path) -> ModelArtifact:
        out = Path(out)
        # Everything that can be checked without TensorRT is checked first, so bad options
        # and models give InvalidInput on any machine.
        opts = parse_options(cfg.options)
        proto = check_onnx(model.path)
        io = io_from_onnx(proto)
        profiles = profile_shapes(io, opts)
        types = quantized_types(proto)
        int8, int8_reason = int8_setting(opts.int8, types, model.path)
        sparse, sparse_record = sparse_setting(opts.sparse_weights, proto)
        fp32 = fp32_layer_lists(proto, opts.fp32_layers)
        decided = {
            "fp16": opts.fp16, "fp32_layers": {"nodes": fp32[0], "op_types": fp32[1]},
            "tf32": opts.tf32, "int8": int8, "int8_reason": int8_reason,
            "quantized_types": types, "sparse_weights": sparse, "sparse": sparse_record,
            "optimization_level": opts.optimization_level,
            "hardware_compatibility": opts.hardware_compatibility,
            "version_compatible": opts.version_compatible, "profiles": profiles_to_json(profiles),
        }  # fmt: skip
        why = self.unavailable_reason()
        if why:
            raise TargetUnavailable(f"trt-gpu cannot build here: {why}")

        trt = trt_module()
        check_hardware_compatibility(opts, trt.__version__)
        here = device().facts(trt.__version__)
        choices = PlanChoices(profiles, int8=int8, sparse=sparse, fp32_nodes=tuple(fp32[0]),
                              fp32_ops=tuple(fp32[1]), major=tensorrt_major(trt))  # fmt: skip
        plan, config, seeded = build_plan(Path(model.path), io, opts, choices)
        (out / ENGINE_FILE).write_bytes(plan)
        (out / TIMING_CACHE_FILE).write_bytes(bytes(config.get_timing_cache().serialize()))
        if opts.shared_timing_cache:
            merge_shared_timing_cache(config, opts.shared_timing_cache)
        layers = layer_information(plan, host_code=opts.version_compatible)
        (out / LAYERS_FILE).write_text(json.dumps(layers, indent=1) + "\n")
        files = {"engine": ENGINE_FILE, "layers": LAYERS_FILE}
        settings = {
            "target": self.name, "engine": ENGINE_FILE, "timing_cache": TIMING_CACHE_FILE,
            "timing_cache_seeded": seeded,
            "shared_timing_cache": str(opts.shared_timing_cache or "") or None,
            "layers": LAYERS_FILE, "layer_precisions": layer_precisions(layers),
            "typing": "strong", **decided,
            "workspace_mb": config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) >> 20,
            "tensorrt": trt.__version__, "gpu": here.gpu,
            "compute_capability": here.compute_capability,
            "trtexec": trtexec_command(str(model.path), opts, choices, files),
            "files": [ENGINE_FILE, TIMING_CACHE_FILE, LAYERS_FILE],
        }  # fmt: skip
        notes = []
        if opts.fp16:
            notes.append(
                "the model TensorRT parsed was this target's fp16 copy of --onnx (fp32 I/O, "
                "fp32_layers kept fp32), which is not kept"
            )
        if opts.timing_cache or opts.shared_timing_cache:
            notes.append(TRTEXEC_TIMING_CACHE_NOTE)
        if notes:
            settings["trtexec_note"] = "; ".join(notes)
        (out / ENGINE_CONFIG).write_text(json.dumps({**settings, "io": io.to_dict()}, indent=2))
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
        from edgesmith.targets.tensorrt_config import compatibility_problems

        directory = Path(engine.path)
        cfg = read_engine_config(directory)
        if cfg.get("target") != self.name:
            raise InvalidInput(
                f"{directory}: built for target '{cfg.get('target')}', not '{self.name}'"
            )
        why = self.unavailable_reason()
        if why:
            raise TargetUnavailable(f"trt-gpu cannot run {directory} here: {why}")
        here = device().facts(trt_module().__version__)
        problems = compatibility_problems(cfg, here)
        if problems:
            raise InvalidInput(
                f"{directory}: this engine does not fit this machine ({'; '.join(problems)}); "
                f"rebuild it here, or build with version_compatible / hardware_compatibility"
            )
        missing = [k for k in ("engine", "io") if k not in cfg]
        if missing:
            raise InvalidInput(f"{directory / ENGINE_CONFIG}: no {', '.join(missing)}; rebuild it")
        return runner_from_plan(
            (directory / cfg["engine"]).read_bytes(),
            IoSpec.from_dict(cfg["io"]),
            profiles_from_json(cfg.get("profiles")),
            host_code=bool(cfg.get("version_compatible")),
            where=str(directory / cfg["engine"]),
        )
