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


def api_for(version: str) -> str:
    """The dumped TensorRT API a fake of `version` plays: that version's dump, else the
    nearest dump of the same major (10.14 plays 10.16.1.11, 10.3 plays 10.0.1)."""
    from tests.targets.trt_api import VERSIONS

    def key(v: str) -> tuple[int, ...]:
        return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in v.split("."))

    want = key(version)
    same = [v for v in VERSIONS if key(v)[0] == want[0]]
    if not same:
        raise ValueError(f"no dumped TensorRT {want[0]}.x API for a fake {version}")
    return min(same, key=lambda v: (abs(key(v)[1] - want[1]), -key(v)[1]))


@pytest.fixture
def fake_trt(monkeypatch):
    """install(version=, cc=, gpu=, api=): a fresh fake `tensorrt` of that version and a host
    device; call it again to move the same engines to "another machine". Its API is the
    dump `api` (default: api_for(version))."""

    def install(version="10.16.1.11", cc="8.9", gpu="NVIDIA Fake L4", api=None):
        spec = importlib.util.spec_from_file_location("tensorrt", fake_tensorrt.MODULE_FILE)
        mod = importlib.util.module_from_spec(spec)
        mod.API_VERSION, mod.__version__ = api or api_for(version), version
        spec.loader.exec_module(mod)
        mod.DEVICE.cc, mod.DEVICE.name = cc, gpu
        monkeypatch.setitem(sys.modules, "tensorrt", mod)
        monkeypatch.setattr(tensorrt_runner, "DEVICE", HostDevice(mod))
        tensorrt_runner.trt_logger.cache_clear()
        return mod

    yield install
    tensorrt_runner.trt_logger.cache_clear()
