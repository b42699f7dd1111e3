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
import re
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


# The oldest driver branch for each CUDA major (NVIDIA's CUDA toolkit release notes).
DRIVER_FOR_CUDA = {12: "r525", 13: "r580"}
GPU_INSTALL = "pip install 'onnxruntime-gpu[cuda,cudnn]'"
TRT10_INSTALL = "pip install 'tensorrt-cu13>=10.13.3.9,<11'"


def _loads(name: str) -> bool:
    """Whether the dynamic loader finds the library `name` (a seam the tests replace)."""
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _driver():
    """libcuda, or None without an NVIDIA driver (a seam the tests replace)."""
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


def cuda_device_reason(device_id: int = 0, cuda_major: int | None = None) -> str | None:
    """None when the NVIDIA driver sees device `device_id` (and supports CUDA `cuda_major`),
    else why not. Asks the driver (libcuda) directly: onnxruntime lists the CUDA provider
    whether or not a GPU is there."""
    lib = _driver()
    if lib is None:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    if cuda_major is not None:
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
            have = (version.value // 1000, version.value % 1000 // 10)
            if have[0] < cuda_major:
                branch = DRIVER_FOR_CUDA.get(cuda_major, "a newer driver")
                return (
                    f"the NVIDIA driver supports CUDA {have[0]}.{have[1]} and onnxruntime-gpu is "
                    f"a CUDA {cuda_major} build: install NVIDIA driver {branch} or later "
                    f"(e.g. sudo apt install nvidia-driver-{branch[1:]})"
                )
    if lib.cuInit(0) != 0:
        return "the NVIDIA driver did not initialise (no GPU visible?)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device_id:
        return f"no CUDA device {device_id} ({count.value} visible)"
    return None


def _cuda_major(ort) -> int | None:
    """The CUDA major this onnxruntime-gpu was built for (its build_and_package_info)."""
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return None
    version = getattr(info, "cuda_version", None)
    return int(str(version).split(".")[0]) if version else None


def cudnn_reason(cuda_major: int | None) -> str | None:
    """None when cuDNN 9 can be loaded: on the loader path, or pip's nvidia-cudnn-cuXX (which
    onnxruntime.preload_dlls loads); else the command that installs it."""
    if _loads("libcudnn.so.9"):
        return None
    if cuda_major is not None and _dist_version(f"nvidia-cudnn-cu{cuda_major}"):
        return None
    return f"no cuDNN 9 (libcudnn.so.9) for the CUDA provider: {GPU_INSTALL}"


def provider_trt_major(ort) -> int:
    """The TensorRT major onnxruntime's TensorRT provider links (libnvinfer.so.N in its
    library); 10 if it cannot be read (onnxruntime-gpu 1.31.1 links libnvinfer.so.10)."""
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    try:
        found = re.search(rb"libnvinfer\.so\.(\d+)", lib.read_bytes())
    except OSError:
        found = None
    return int(found.group(1)) if found else 10


def libnvinfer_reason(major: int) -> str | None:
    """None when libnvinfer.so.MAJOR loads; else what is wrong and the command that fixes it."""
    if _loads(f"libnvinfer.so.{major}"):
        return None
    installed = _tensorrt_version()
    if installed and installed.split(".")[0] != str(major):
        return (
            f"onnxruntime's TensorRT provider needs TensorRT {major} (libnvinfer.so.{major}) "
            f"and TensorRT {installed} is installed: {TRT10_INSTALL}"
        )
    libs = _tensorrt_libs_dir()
    if libs is not None:
        return (
            f"libnvinfer.so.{major} is not on the loader path (pip's tensorrt_libs is not): "
            f"export LD_LIBRARY_PATH={libs}:$LD_LIBRARY_PATH"
        )
    return f"libnvinfer.so.{major} not found (TensorRT {major} is not installed): {TRT10_INSTALL}"


def _tensorrt_libs_dir() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_libs")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return locations[0] if locations else None


def _tensorrt_version() -> str | None:
    """The TensorRT of the installed bindings (`tensorrt.__version__`); None without them."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return str(getattr(tensorrt, "__version__", "") or "") or None


def _packages() -> set[str]:
    return {d for d in ("onnxruntime", "onnxruntime-gpu") if _dist_version(d)}


def _preload(ort) -> None:
    """Load pip's CUDA and cuDNN libraries (onnxruntime-gpu[cuda,cudnn]) before a session."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload(cuda=True, cudnn=True)


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
        """Why ort-gpu cannot run here, naming the missing piece and the command that fixes
        it: both onnxruntime builds installed, a CPU build, a driver older than the CUDA this
        onnxruntime-gpu was built for, no cuDNN, libnvinfer not loadable (tensorrt)."""
        try:
            ort = _ort()
        except ImportError as e:
            return f"onnxruntime is not installed ({e}): {GPU_INSTALL}"
        if CUDA not in ort.get_available_providers():
            if {"onnxruntime", "onnxruntime-gpu"} <= _packages():
                return (
                    "onnxruntime and onnxruntime-gpu are both installed and the CPU build's "
                    "files won: pip uninstall -y onnxruntime onnxruntime-gpu && "
                    f"{GPU_INSTALL}"
                )
            return (
                f"onnxruntime {ort.__version__} is a CPU build (no {CUDA}): "
                f"pip uninstall -y onnxruntime && {GPU_INSTALL}"
            )
        cuda_major = _cuda_major(ort)
        why = cuda_device_reason(device_id, cuda_major) or cudnn_reason(cuda_major)
        if why or provider != "tensorrt":
            return why
        # onnxruntime-gpu lists the TensorRT provider whether or not TensorRT is there, and
        # falls back to the CPU only when a session is made: ask the loader first.
        return libnvinfer_reason(provider_trt_major(ort))

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
        _preload(ort)
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
        _preload(_ort())
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
