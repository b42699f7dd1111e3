"""ONNX Runtime on an NVIDIA GPU (onnxruntime-gpu): the CUDA execution provider, or the
TensorRT execution provider in front of it where TensorRT is installed.

The engine directory is portable, like ort-cpu's: the model with onnxruntime's
provider-independent ("basic") graph optimisations applied offline, and engine.json with the
providers and their options; the rest is applied when a device loads it. The TensorRT
provider builds its own TensorRT engines on first use and keeps them in a cache directory
outside the engine (onnxruntime names each by GPU architecture; our key adds the model,
onnxruntime, TensorRT and the provider options), so the engine directory never changes after
it is built and its manifest stays true.

onnxruntime silently falls back to the CPU when a GPU provider cannot load (no cuDNN, a CUDA
mismatch): every session is checked and a fallback is refused with the reason.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import onnx

from edgesmith.targets.base import (
    ENGINE_CONFIG,
    BuildConfig,
    Option,
    option_values,
    read_engine_config,
)
from edgesmith.targets.fp16 import (
    FP16,
    FP32_LAYERS,
    fp16_model,
    fp32_layer_lists,
    fp32_layers_option,
)
from edgesmith.targets.ort_cpu import OrtRunner
from edgesmith.targets.tensorrt_options import (
    PROFILE_OPTIONS,
    WORKSPACE_MB,
    TrtOptions,
    profile_options,
    profile_shapes,
)
from edgesmith.targets.tensorrt_qdq import TRT_PRESET, check_qdq_rules
from edgesmith.toolchain.core.artifact import Format, ModelArtifact, Precision
from edgesmith.toolchain.core.errors import InvalidInput, TargetUnavailable
from edgesmith.toolchain.core.files import sha256_file, sha256_json
from edgesmith.toolchain.core.onnx_model import check_onnx, io_from_onnx
from edgesmith.toolchain.core.ort_session import SessionSettings, ort_session
from edgesmith.toolchain.core.presets import Isa, Preset

MODEL_FILE = "model.onnx"
CUDA, TRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"
PROVIDERS = {"cuda": (CUDA,), "tensorrt": (TRT, CUDA)}
CONV_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
DEFAULT_CACHE = Path("~/.cache/edgesmith/ort-trt")


def _ort():
    import onnxruntime as ort

    return ort


def cuda_device_reason(device_id: int = 0) -> str | None:
    """None when the NVIDIA driver sees device `device_id`, else why not. Asks the driver
    (libcuda) directly: onnxruntime lists the CUDA provider whether or not a GPU is there."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    if lib.cuInit(0) != 0:
        return "the NVIDIA driver did not initialise (no GPU visible?)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device_id:
        return f"no CUDA device {device_id} ({count.value} visible)"
    return None


def _tensorrt_version() -> str | None:
    """The TensorRT the TensorRT provider will load: the Python package's, else libnvinfer's."""
    try:
        return metadata.version("tensorrt")
    except metadata.PackageNotFoundError:
        pass
    try:
        lib = ctypes.CDLL("libnvinfer.so.10")
    except OSError:
        return None
    v = lib.getInferLibVersion()  # MAJOR * 10000 + MINOR * 100 + PATCH
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def _packages() -> set[str]:
    names = set()
    for d in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(d)
            names.add(d)
        except metadata.PackageNotFoundError:
            pass
    return names


class OrtGpu:
    """Target `ort-gpu`: onnxruntime-gpu's CUDA provider, or its TensorRT provider."""

    name: ClassVar[str] = "ort-gpu"
    # int8 runs on this target through its TensorRT provider, which takes TensorRT's Q/DQ
    # form (symmetric int8, Q/DQ on weighted layers' inputs); the CUDA provider runs the same
    # model with its Q/DQ pairs dequantized into float kernels
    PRESETS: ClassVar[dict[str, Preset]] = {
        "ort-gpu": Preset(
            **{
                **TRT_PRESET,
                "name": "ort-gpu",
                "target": "ort-gpu",
                "why": "onnxruntime-gpu runs int8 through its TensorRT provider: TensorRT's "
                "explicit quantization form (symmetric int8, per-channel weight scales, Q/DQ "
                "on the inputs of weighted layers only, float biases)",
            }
        )
    }

    def default_preset(self, isa: Isa) -> tuple[str, str]:
        return "ort-gpu", "target"

    def check_quantized(self, path: Path) -> None:
        check_qdq_rules(path)

    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("provider", str, "cuda",
               "cuda: the CUDA provider; tensorrt: the TensorRT provider, with CUDA for the "
               "nodes TensorRT leaves", choices=tuple(PROVIDERS)),
        Option("device_id", int, 0, "the CUDA device the providers run on", minimum=0),
        FP16,
        FP32_LAYERS,
        Option("cudnn_conv_algo_search", str, "EXHAUSTIVE",
               "how cuDNN picks convolution kernels: EXHAUSTIVE times them all "
               "(onnxruntime's default), HEURISTIC asks cuDNN, DEFAULT takes the first",
               choices=CONV_SEARCH),
        # the TensorRT provider's workspace and profile, as trt-gpu takes them
        WORKSPACE_MB,
        *PROFILE_OPTIONS,
        Option("trt_cache_dir", Path, str(DEFAULT_CACHE),
               "where the TensorRT provider keeps the engines and timing cache it builds "
               "(outside the engine directory)"),
        Option("threads", int, None,
               "intra-op threads for the nodes left on the CPU (unset: one per physical core)",
               minimum=1),
    )  # fmt: skip
    # the options that only the TensorRT provider takes
    TRT_ONLY: ClassVar[tuple[str, ...]] = (
        "workspace_mb",
        *(o.name for o in PROFILE_OPTIONS),
        "trt_cache_dir",
    )
    OFFLINE_OPT_LEVEL: ClassVar[str] = "basic"  # provider-independent; the rest at load
    RUNTIME_OPT_LEVEL: ClassVar[str] = "all"

    def unavailable_reason(self, provider: str = "cuda", device_id: int = 0) -> str | None:
        try:
            ort = _ort()
        except ImportError as e:
            return f"onnxruntime is not installed ({e})"
        have = ort.get_available_providers()
        missing = [p for p in PROVIDERS[provider] if p not in have]
        if missing:
            if {"onnxruntime", "onnxruntime-gpu"} <= _packages():
                return (
                    "onnxruntime and onnxruntime-gpu are both installed and the CPU build's "
                    "files won: pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
                    "onnxruntime-gpu"
                )
            if CUDA in missing:
                return (
                    f"onnxruntime {ort.__version__} is a CPU build (no {CUDA}); "
                    "see the README's GPU set-up (pip install 'edgesmith[gpu]')"
                )
            return f"onnxruntime {ort.__version__} has no {TRT} (TensorRT not installed)"
        return cuda_device_reason(device_id)

    def build(self, model: ModelArtifact, cfg: BuildConfig, out: Path) -> ModelArtifact:
        o = self._options(cfg.options)
        proto = check_onnx(model.path)
        io = io_from_onnx(proto)
        trt_opts = TrtOptions(profiles=(o["profile"],))
        profiles = profile_shapes(io, trt_opts) if o["provider"] == "tensorrt" else []
        nodes, ops = fp32_layer_lists(proto, o["fp32_layers"], self.name)
        why = self.unavailable_reason(o["provider"], o["device_id"])
        if why:
            raise TargetUnavailable(f"ort-gpu cannot build here: {why}")
        ort = _ort()
        source = Path(model.path)
        if o["fp16"]:
            source = fp16_model(onnx.load(str(source)), nodes, ops, out / ".fp16.onnx")
        ort_session(source, SessionSettings(self.OFFLINE_OPT_LEVEL), save_to=out / MODEL_FILE)
        if o["fp16"]:
            for p in out.glob(".fp16.onnx*"):
                p.unlink()
        providers = self._providers(o, profiles)
        settings = {
            "target": self.name,
            "model": MODEL_FILE,
            "provider": o["provider"],
            "providers": providers,
            "offline_opt_level": self.OFFLINE_OPT_LEVEL,
            "runtime_opt_level": self.RUNTIME_OPT_LEVEL,
            "fp16": o["fp16"],
            "fp32_layers": {"nodes": nodes, "op_types": ops},
            "intra_op_threads": o["threads"] or 0,
            "trt_cache_dir": str(o["trt_cache_dir"]) if o["provider"] == "tensorrt" else None,
            "onnxruntime": ort.__version__,
            "tensorrt": _tensorrt_version() if o["provider"] == "tensorrt" else None,
            "model_sha256": sha256_file(out / MODEL_FILE),
            "files": [MODEL_FILE],
        }
        (out / ENGINE_CONFIG).write_text(json.dumps({**settings, "io": io.to_dict()}, indent=2))
        art = ModelArtifact.at(
            out,
            Format.engine,
            precision=Precision.fp16 if o["fp16"] else model.precision,
            io=io,
            parent=model.sha256,
            meta={"target": self.name, **settings},
        )
        self.load(art)  # the providers load here (and TensorRT's engines are built now)
        return art

    def load(self, engine: ModelArtifact, threads: int | None = None) -> OrtRunner:
        directory = Path(engine.path)
        cfg = read_engine_config(directory)
        if cfg.get("target") != self.name:
            raise InvalidInput(f"{directory}: built for '{cfg.get('target')}', not '{self.name}'")
        provider = cfg.get("provider", "cuda")
        device_id = int(cfg["providers"][0][1].get("device_id", 0))
        why = self.unavailable_reason(provider, device_id)
        if why:
            raise TargetUnavailable(f"ort-gpu cannot run {directory} here: {why}")
        providers = [(name, self._at_load(name, opts, cfg)) for name, opts in cfg["providers"]]
        settings = SessionSettings(
            level=cfg.get("runtime_opt_level", self.RUNTIME_OPT_LEVEL),
            threads=threads or cfg.get("intra_op_threads") or None,
        )
        session = ort_session(
            directory / cfg["model"], settings, providers=[*providers, "CPUExecutionProvider"]
        )
        wanted = providers[0][0]
        if wanted not in session.get_providers():
            raise TargetUnavailable(
                f"ort-gpu: onnxruntime fell back to the CPU for {directory}: {wanted} did not "
                "load (check that CUDA, cuDNN and TensorRT libraries match this onnxruntime-gpu)"
            )
        return OrtRunner(session, engine.io or io_from_onnx(check_onnx(directory / cfg["model"])))

    def _at_load(self, name: str, opts: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict:
        """Provider options as onnxruntime takes them (strings), with the TensorRT caches in
        this user's cache directory under a key of everything that makes them valid."""
        out = {k: str(v) for k, v in opts.items()}
        if name == TRT:
            key = sha256_json(
                {"model": cfg.get("io"), "onnxruntime": _ort().__version__, "options": opts,
                 "tensorrt": _tensorrt_version(), "sha": cfg.get("model_sha256")}
            )[:16]  # fmt: skip
            cache = Path(cfg["trt_cache_dir"]).expanduser() / key
            cache.mkdir(parents=True, exist_ok=True)
            out |= {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(cache),
            }
        return out

    def _providers(self, o: Mapping[str, Any], profiles) -> list[list[Any]]:
        cuda = {"device_id": o["device_id"], "cudnn_conv_algo_search": o["cudnn_conv_algo_search"]}
        if o["provider"] == "cuda":
            return [[CUDA, cuda]]
        trt: dict[str, Any] = {"device_id": o["device_id"]}
        if o["workspace_mb"]:
            trt["trt_max_workspace_size"] = o["workspace_mb"] << 20
        if profiles:
            (p,) = profiles
            for k in ("min", "opt", "max"):
                trt[f"trt_profile_{k}_shapes"] = ",".join(
                    f"{n}:{'x'.join(map(str, getattr(r, k)))}" for n, r in p.items()
                )
        return [[TRT, trt], [CUDA, cuda]]

    def _options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The checked options, with the TensorRT provider's profile made from its keys."""
        o = option_values(self, options)
        declared = {opt.name: opt.default for opt in self.OPTIONS}
        trt_only = [k for k in self.TRT_ONLY if o[k] != declared[k]]  # given, not default
        if trt_only and o["provider"] != "tensorrt":
            raise InvalidInput(
                f"ort-gpu option(s) {', '.join(trt_only)} apply to provider = tensorrt only"
            )
        return {
            **o,
            "fp32_layers": fp32_layers_option(o, self.name),
            "profile": profile_options(o, self.name),
            "trt_cache_dir": Path(o["trt_cache_dir"]),
        }
