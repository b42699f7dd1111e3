"""The fake TensorRT (tests/targets/fake_tensorrt.py) and a host stand-in for the CUDA device;
the `fake_trt` fixture is registered for the whole suite in tests/conftest.py."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from types import SimpleNamespace

import pytest

from edgesmith.targets import tensorrt_runner
from edgesmith.targets.tensorrt_config import DeviceFacts
from tests.targets import fake_tensorrt


class HostDevice:
    """The runner's device seam with torch CPU tensors as the "device" memory: the fake
    reads and writes at their addresses as TensorRT would at CUDA ones."""

    def __init__(self, trt) -> None:
        self.trt = trt

    def unavailable_reason(self) -> str | None:
        return None

    def facts(self, tensorrt_version: str) -> DeviceFacts:
        return DeviceFacts(tensorrt_version, self.trt.DEVICE.name, self.trt.DEVICE.cc)

    def device(self):
        import torch

        return torch.device("cpu")

    def stream(self, device):
        return SimpleNamespace(cuda_stream=0, synchronize=lambda: None)

    def scope(self, device, stream):
        return contextlib.nullcontext()


def _weakly_typed(mod) -> None:
    """A TensorRT before strong typing: no STRONGLY_TYPED, the precision flags present."""
    mod.NetworkDefinitionCreationFlag = mod._enum("NetworkDefinitionCreationFlag", ("UNUSED",))
    flags = ("TF32", "SPARSE_WEIGHTS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP16", "INT8")
    mod.BuilderFlag = mod._enum("BuilderFlag", flags)


@pytest.fixture
def fake_trt(monkeypatch):
    """install(version=, cc=, gpu=, typed=): a fresh fake `tensorrt` and a host device; call
    it again to move the same engines to "another machine"."""

    def install(version="10.13.0.35", cc="8.9", gpu="NVIDIA Fake L4", typed=True):
        spec = importlib.util.spec_from_file_location("tensorrt", fake_tensorrt.MODULE_FILE)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.__version__ = version
        mod.DEVICE.cc, mod.DEVICE.name = cc, gpu
        if not typed:
            _weakly_typed(mod)
        monkeypatch.setitem(sys.modules, "tensorrt", mod)
        monkeypatch.setattr(tensorrt_runner, "DEVICE", HostDevice(mod))
        tensorrt_runner.trt_logger.cache_clear()
        return mod

    yield install
    tensorrt_runner.trt_logger.cache_clear()
