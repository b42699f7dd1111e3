"""ort-gpu (onnxruntime-gpu): everything that runs without a GPU.

onnxruntime-gpu is stood in for by the real onnxruntime with its GPU surface mirrored: the
providers it lists, InferenceSession taking (name, options) pairs and checking the option
names and string values as onnxruntime does, get_providers() saying which loaded (or that it
fell back to the CPU), and the TensorRT provider writing its engine cache where told. The
model itself runs on the CPU provider, so outputs are real.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from edgesmith.targets import ort_gpu
from edgesmith.targets.base import ENGINE_CONFIG, BuildConfig
from edgesmith.targets.ort_gpu import CUDA, TRT, OrtGpu, cuda_device_reason
from edgesmith.toolchain.core.artifact import Format, ModelArtifact, Precision
from edgesmith.toolchain.core.errors import InvalidInput, TargetUnavailable
from tests.targets import trt_models

# Provider option names onnxruntime 1.2x accepts (its CUDA and TensorRT provider docs).
KNOWN = {
    CUDA: {"device_id", "cudnn_conv_algo_search", "gpu_mem_limit", "arena_extend_strategy",
           "do_copy_in_default_stream", "enable_cuda_graph"},
    TRT: {"device_id", "trt_max_workspace_size", "trt_fp16_enable", "trt_int8_enable",
          "trt_engine_cache_enable", "trt_engine_cache_path", "trt_timing_cache_enable",
          "trt_timing_cache_path", "trt_profile_min_shapes", "trt_profile_opt_shapes",
          "trt_profile_max_shapes"},
}  # fmt: skip
REAL_SESSION = ort.InferenceSession


@pytest.fixture
def gpu_ort(monkeypatch):
    """install(fallback=False, providers=(TRT, CUDA)): onnxruntime-gpu's surface, on the CPU."""
    state = SimpleNamespace(sessions=[])

    def install(fallback: bool = False, providers=(TRT, CUDA)):
        class Session:
            def __init__(self, path, sess_options=None, providers=None, **kw):
                names = []
                for p in providers or []:
                    name, opts = (p, {}) if isinstance(p, str) else p
                    bad = [k for k in opts if k not in KNOWN.get(name, set())]
                    if bad or not all(isinstance(v, str) for v in opts.values()):
                        raise RuntimeError(
                            f"[ONNXRuntimeError] {name}: bad provider options {opts}"
                        )
                    names.append(name)
                    if name == TRT and "trt_engine_cache_path" in opts:
                        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]
                        cache = Path(opts["trt_engine_cache_path"])
                        (cache / f"TRTKernel_{digest}_sm89.engine").write_bytes(b"engine")
                self.loaded = ["CPUExecutionProvider"] if fallback else names
                self._s = REAL_SESSION(path, sess_options, providers=["CPUExecutionProvider"],
                                       **kw)  # fmt: skip
                state.sessions.append((names, providers))

            def get_providers(self):
                return self.loaded

            def __getattr__(self, name):
                return getattr(self._s, name)

        monkeypatch.setattr(ort, "InferenceSession", Session)
        monkeypatch.setattr(ort, "get_available_providers",
                            lambda: [*providers, "CPUExecutionProvider"])  # fmt: skip
        monkeypatch.setattr(ort_gpu, "cuda_device_reason", lambda device_id=0, major=None: None)
        monkeypatch.setattr(ort_gpu, "cudnn_reason", lambda major: None)
        monkeypatch.setattr(ort_gpu, "libnvinfer_reason", lambda major: None)
        monkeypatch.setattr(ort, "preload_dlls", lambda **kw: None, raising=False)
        return state

    return install


def _build(src, tmp_path, options=None, name="engine") -> ModelArtifact:
    out = tmp_path / name
    out.mkdir()
    return OrtGpu().build(ModelArtifact.at(src, Format.onnx), BuildConfig(options or {}), out)


def _x(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).normal(size=(batch, 3, 8, 8)).astype(np.float32)


def _cpu(path, x):
    return REAL_SESSION(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _digest(directory) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# ---------------------------------------------------------------- availability


def test_a_cpu_build_of_onnxruntime_says_why_not(monkeypatch):
    """What `edgesmith targets` prints on a CPU-only install (made so, on any machine)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(ort_gpu, "_packages", lambda: {"onnxruntime"})
    why = OrtGpu().unavailable_reason()
    assert "CPU build (no CUDAExecutionProvider)" in why
    assert why.endswith("pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu[cuda,cudnn]'")


def test_both_packages_installed_is_named(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(ort_gpu, "_packages", lambda: {"onnxruntime", "onnxruntime-gpu"})
    assert (
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu[cuda,cudnn]'"
        in (OrtGpu().unavailable_reason())
    )


class Driver:
    """libcuda: cuDriverGetVersion says the newest CUDA it supports (13000 for 13.0)."""

    def __init__(self, cuda: int = 13000, devices: int = 1) -> None:
        self.cuda, self.devices = cuda, devices

    def cuDriverGetVersion(self, ref):
        ref._obj.value = self.cuda
        return 0

    def cuInit(self, flags):
        return 0

    def cuDeviceGetCount(self, ref):
        ref._obj.value = self.devices
        return 0


@pytest.fixture
def machine(monkeypatch):
    """A GPU build of onnxruntime (CUDA 13, TensorRT provider on libnvinfer.so.10) on a
    machine made of stand-ins: set(driver=, libs=, dists=, tensorrt=, tensorrt_libs=)."""
    state = SimpleNamespace(driver=Driver(), libs={"libcudnn.so.9", "libnvinfer.so.10"},
                            dists={}, tensorrt=None, tensorrt_libs=None)  # fmt: skip
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: [TRT, CUDA, "CPUExecutionProvider"])  # fmt: skip
    monkeypatch.setattr(ort_gpu, "_cuda_major", lambda ort: 13)
    monkeypatch.setattr(ort_gpu, "provider_trt_major", lambda ort: 10)
    monkeypatch.setattr(ort_gpu, "_driver", lambda: state.driver)
    monkeypatch.setattr(ort_gpu, "_loads", lambda name: name in state.libs)
    monkeypatch.setattr(ort_gpu, "_dist_version", lambda name: state.dists.get(name))
    monkeypatch.setattr(ort_gpu, "_tensorrt_version", lambda: state.tensorrt)
    monkeypatch.setattr(ort_gpu, "_tensorrt_libs_dir", lambda: state.tensorrt_libs)
    return state


def test_a_complete_machine_is_available(machine):
    assert OrtGpu().unavailable_reason("cuda") is None
    assert OrtGpu().unavailable_reason("tensorrt") is None


def test_no_driver_is_named(machine):
    machine.driver = None
    assert OrtGpu().unavailable_reason() == "no NVIDIA driver (libcuda.so.1 not found)"


def test_a_driver_too_old_for_the_cuda_build_is_named(machine):
    machine.driver = Driver(cuda=12080)
    why = OrtGpu().unavailable_reason()
    assert "supports CUDA 12.8 and onnxruntime-gpu is a CUDA 13 build" in why
    assert "NVIDIA driver r580 or later (e.g. sudo apt install nvidia-driver-580)" in why


def test_no_cudnn_is_named_and_pips_cudnn_counts(machine):
    machine.libs.discard("libcudnn.so.9")
    why = OrtGpu().unavailable_reason()
    assert why == (
        "no cuDNN 9 (libcudnn.so.9) for the CUDA provider: "
        "pip install 'onnxruntime-gpu[cuda,cudnn]'"
    )
    machine.dists["nvidia-cudnn-cu13"] = "9.10.0"  # onnxruntime.preload_dlls loads it
    assert OrtGpu().unavailable_reason() is None


def test_libnvinfer_not_loadable_is_named_with_the_fix(machine):
    """onnxruntime-gpu lists the TensorRT provider without TensorRT (1.31.1 does): the loader
    is asked for libnvinfer.so.10 instead, and the reason says what to do."""
    machine.libs.discard("libnvinfer.so.10")
    assert OrtGpu().unavailable_reason("cuda") is None
    assert OrtGpu().unavailable_reason("tensorrt") == (
        "libnvinfer.so.10 not found (TensorRT 10 is not installed): "
        "pip install 'tensorrt-cu13>=10.13.3.9,<11'"
    )
    machine.tensorrt_libs = "/venv/site-packages/tensorrt_libs"
    assert (
        OrtGpu()
        .unavailable_reason("tensorrt")
        .endswith("export LD_LIBRARY_PATH=/venv/site-packages/tensorrt_libs:$LD_LIBRARY_PATH")
    )
    machine.tensorrt = "11.4.0.106"
    why = OrtGpu().unavailable_reason("tensorrt")
    assert "needs TensorRT 10 (libnvinfer.so.10) and TensorRT 11.4.0.106 is installed" in why


def test_the_providers_tensorrt_major_is_read_from_its_library(monkeypatch, tmp_path):
    capi = tmp_path / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    fake = SimpleNamespace(__file__=str(tmp_path / "onnxruntime" / "__init__.py"))
    assert ort_gpu.provider_trt_major(fake) == 10  # no library: the default
    (capi / "libonnxruntime_providers_tensorrt.so").write_bytes(b"\0ELF..libnvinfer.so.11\0")
    assert ort_gpu.provider_trt_major(fake) == 11


def test_the_tensorrt_version_comes_from_the_bindings(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="11.4.0.106"))
    assert ort_gpu._tensorrt_version() == "11.4.0.106"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed
    assert ort_gpu._tensorrt_version() is None


def test_the_driver_is_asked_for_the_device(monkeypatch):
    def no_driver(name):
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    assert cuda_device_reason() == "no NVIDIA driver (libcuda.so.1 not found)"
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Driver())
    assert cuda_device_reason(0) is None
    assert cuda_device_reason(1) == "no CUDA device 1 (1 visible)"


# ---------------------------------------------------------------- build and load


def test_cuda_engine_is_portable_and_runs(gpu_ort, tmp_path):
    state = gpu_ort()
    src = trt_models.conv_net(tmp_path / "m.onnx")
    art = _build(src, tmp_path)
    cfg = json.loads((art.path / ENGINE_CONFIG).read_text())
    assert cfg["providers"] == [[CUDA, {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE"}]]
    assert (cfg["offline_opt_level"], cfg["runtime_opt_level"]) == ("basic", "all")
    assert sorted(p.name for p in art.path.iterdir()) == ["engine.json", "model.onnx"]
    runner = OrtGpu().load(art)
    assert state.sessions[-1][0] == [CUDA, "CPUExecutionProvider"]
    np.testing.assert_allclose(runner.infer({"x": _x(3)})["y"], _cpu(src, _x(3)), atol=1e-5)


def test_tensorrt_provider_caches_outside_the_engine(gpu_ort, tmp_path):
    gpu_ort()
    src = trt_models.conv_net(tmp_path / "m.onnx")
    cache = tmp_path / "cache"
    opts = {"provider": "tensorrt", "max_batch": 8, "opt_batch": 4, "workspace_mb": 64,
            "trt_cache_dir": str(cache)}  # fmt: skip
    art = _build(src, tmp_path, opts)
    before = _digest(art.path)
    (trt, trt_opts), (cuda, _) = json.loads((art.path / ENGINE_CONFIG).read_text())["providers"]
    assert (trt, cuda) == (TRT, CUDA)
    assert trt_opts["trt_profile_min_shapes"] == "x:1x3x8x8"
    assert trt_opts["trt_profile_opt_shapes"] == "x:4x3x8x8"
    assert trt_opts["trt_max_workspace_size"] == 64 << 20
    runner = OrtGpu().load(art)
    np.testing.assert_allclose(runner.infer({"x": _x(2)})["y"], _cpu(src, _x(2)), atol=1e-5)
    (key,) = list(cache.iterdir())  # one cache directory for this engine and its options
    assert [p.suffix for p in key.iterdir()] == [".engine"]
    assert _digest(art.path) == before  # the engine directory is never written after build


def test_a_silent_cpu_fallback_is_refused(gpu_ort, tmp_path):
    gpu_ort(fallback=True)
    with pytest.raises(TargetUnavailable, match="fell back to the CPU"):
        _build(trt_models.conv_net(tmp_path / "m.onnx"), tmp_path)


def test_fp16_engine(gpu_ort, tmp_path):
    import onnx

    gpu_ort()
    src = trt_models.conv_net(tmp_path / "m.onnx")
    art = _build(src, tmp_path, {"fp16": True, "fp32_layers": ["fc"]})
    assert art.precision is Precision.fp16
    model = onnx.load(str(art.path / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert sorted(p.name for p in art.path.iterdir()) == ["engine.json", "model.onnx"]
    got = OrtGpu().load(art).infer({"x": _x(2)})["y"]
    np.testing.assert_allclose(got, _cpu(src, _x(2)), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"fast": True}, "unknown ort-gpu option 'fast'; ort-gpu takes provider, device_id"),
        ({"provider": "rocm"}, "provider: expected one of cuda, tensorrt, got 'rocm'"),
        ({"max_batch": 4}, "max_batch apply to provider = tensorrt only"),
        ({"fp32_layers": ["fc"]}, "fp32_layers: only with fp16 = true"),
        ({"fp16": True, "fp32_layers": ["nope"]}, "'nope' is neither a node name"),
        ({"cudnn_conv_algo_search": "FAST"}, "cudnn_conv_algo_search: expected one of"),
        ({"provider": "tensorrt", "min_batch": 8, "max_batch": 4}, "min_batch <= opt_batch"),
        ({"device_id": -1}, "device_id: expected int >= 0, got -1"),
        ({"fp16": "yes"}, "ort-gpu option fp16: expected bool, got 'yes'"),
        ({"provider": "tensorrt", "shapes": 3}, "ort-gpu option shapes: expected"),
        ({"provider": "tensorrt", "max_batch": 0}, "ort-gpu option max_batch: expected int >= 1"),
        ({"trt_cache_dir": "/tmp/c"}, "trt_cache_dir apply to provider = tensorrt only"),
    ],
)
def test_bad_options(gpu_ort, tmp_path, options, words):
    gpu_ort()
    with pytest.raises(InvalidInput) as e:
        _build(trt_models.conv_net(tmp_path / "m.onnx"), tmp_path, options)
    assert words in str(e.value)


def test_build_validate_and_bench_through_the_cli(gpu_ort, cli, tmp_path):
    gpu_ort()
    src = trt_models.conv_net(tmp_path / "m.onnx")
    r = cli("build", src, "--target", "ort-gpu", "-o", tmp_path / "e")
    assert r.code == 0, r.stderr
    r = cli("bench", tmp_path / "e", "--target", "ort-gpu", "--batch", "1,2",
            "--iterations", "3", "--warmup", "1", "-o", tmp_path / "b")  # fmt: skip
    assert r.code == 0, r.stderr
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert [row["batch"] for row in rows] == [1, 2]
