"""Running a TensorRT engine: the CUDA device (through torch), device buffers, optimization
profile selection and an output allocator for outputs whose shape depends on the data.

`DEVICE` is the one place that touches CUDA; tests put a host stand-in there (with torch
CPU tensors as the "device" memory) to run this whole path against a fake `tensorrt`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgesmith.targets.tensorrt_config import DeviceFacts, check_feeds
from edgesmith.targets.tensorrt_options import Profile, shape_str
from edgesmith.toolchain.core.artifact import IoSpec
from edgesmith.toolchain.core.errors import InvalidInput

_pylog = logging.getLogger("edgesmith.trt")


def trt_module():
    import tensorrt as trt

    return trt


@functools.cache
def trt_logger():
    """The process's one TensorRT logger, with the plugin library initialised.

    TensorRT keeps the first logger it is given. The logger forwards warnings to Python
    logging and keeps the latest errors, so that a failed parse, build or run can say why in
    one line. Plugins are registered once, before any parse or deserialisation (as Polygraphy
    does): ONNX ops the parser maps to plugins need them.
    """
    trt = trt_module()
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

    logger = _Log()
    if not trt.init_libnvinfer_plugins(logger, ""):
        _pylog.warning("TensorRT's plugin library did not initialise; plugin ops will fail")
    return logger


class TorchCuda:
    """The CUDA device torch sees as current: where engines are built and run."""

    def unavailable_reason(self) -> str | None:
        import torch

        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                return f"no CUDA device (torch {torch.__version__} is a CPU-only build)"
            return "no CUDA device"
        return None

    def facts(self, tensorrt_version: str) -> DeviceFacts:
        import torch

        idx = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        return DeviceFacts(tensorrt_version, torch.cuda.get_device_name(idx), f"{major}.{minor}")

    def device(self):
        import torch

        return torch.device("cuda", torch.cuda.current_device())

    def stream(self, device):
        import torch

        return torch.cuda.Stream(device=device)

    def scope(self, device, stream):
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.cuda.device(device))
        stack.enter_context(torch.cuda.stream(stream))
        return stack


DEVICE: Any = TorchCuda()


def device() -> Any:
    """The device engines build and run on (tests put a host stand-in in DEVICE)."""
    return DEVICE


def _to_torch(a: np.ndarray, device):
    import torch

    a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":  # torch cannot take ml_dtypes' bfloat16 directly
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).to(device)
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _allocator(trt, device):
    """An IOutputAllocator: TensorRT asks it for memory once an output's size is known, and
    tells it the shape (outputs of NonZero, unique-like ops: data-dependent shapes)."""
    import torch

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, Any] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name, memory, size, alignment):
            buf = self.buffers.get(tensor_name)
            if buf is None or buf.numel() < size:  # torch allocations are 256-byte aligned
                buf = torch.empty(max(int(size), 1), dtype=torch.uint8, device=device)
                self.buffers[tensor_name] = buf
            return buf.data_ptr()

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

        def take(self, name: str, dtype):
            shape = self.shapes[name]
            n = int(np.prod(shape, dtype=np.int64))
            return self.buffers[name].view(dtype)[:n].reshape(shape)

    return OutputAllocator()


@dataclass
class TrtRunner:
    """Runs a deserialized engine: numpy in, device buffers, numpy out.

    One execution context and one stream; not safe to call from several threads at once.
    With several optimization profiles, each call takes the first profile that holds its
    shapes (switching costs a few microseconds).
    """

    io: IoSpec
    profiles: list[Profile]
    engine: Any
    context: Any
    stream: Any
    device: Any
    output_dtypes: dict[str, Any]  # torch dtypes by output name
    runtime: Any = None  # kept alive as long as the engine
    profile: int = 0
    allocator: Any = field(default=None, repr=False)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        index = check_feeds(self.io, self.profiles, feeds)
        logger = trt_logger()
        logger.errors.clear()
        ctx = self.context
        with device().scope(self.device, self.stream):
            if index != self.profile:
                if not ctx.set_optimization_profile_async(index, self.stream.cuda_stream):
                    raise InvalidInput(f"TensorRT refused profile {index}: {logger.last_error('')}")
                self.profile = index
            inputs = [self._feed(t.name, feeds[t.name]) for t in self.io.inputs]  # kept alive
            unset = ctx.infer_shapes()
            if unset:
                raise InvalidInput(f"engine inputs without a shape: {list(unset)}")
            fixed, dynamic = {}, []
            for name, dtype in self.output_dtypes.items():
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):  # known only after the run: the allocator's
                    dynamic.append(name)
                    self._allocate_later(name)
                    continue
                fixed[name] = torch.empty(shape, dtype=dtype, device=self.device)
                self._address(name, fixed[name].data_ptr())
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise InvalidInput(
                    f"TensorRT execution failed: {logger.last_error('see the log above')}"
                )
            self.stream.synchronize()
            del inputs
            results = {**fixed}
            for name in dynamic:
                results[name] = self.allocator.take(name, self.output_dtypes[name])
            # .cpu() copies on self.stream (the current stream) and waits for it.
            return {name: _to_numpy(results[name]) for name in self.output_dtypes}

    def _feed(self, name: str, a: np.ndarray):
        if not self.context.set_input_shape(name, a.shape):
            raise InvalidInput(
                f"input '{name}' shape {shape_str(a.shape)} rejected by the engine: "
                f"{trt_logger().last_error('outside its profile')}"
            )
        dev = _to_torch(a, self.device)
        self._address(name, dev.data_ptr())
        return dev

    def _address(self, name: str, ptr: int) -> None:
        if not self.context.set_tensor_address(name, ptr):
            raise InvalidInput(
                f"TensorRT refused the buffer of '{name}': {trt_logger().last_error('no reason')}"
            )

    def _allocate_later(self, name: str) -> None:
        if self.allocator is None:
            self.allocator = _allocator(trt_module(), self.device)
        if not self.context.set_output_allocator(name, self.allocator):
            raise InvalidInput(
                f"TensorRT refused an output allocator for '{name}' (a data-dependent shape): "
                f"{trt_logger().last_error('no reason')}"
            )


def runner_from_plan(
    plan: bytes, io: IoSpec, profiles: Sequence[Profile], *, host_code: bool, where: str
) -> TrtRunner:
    """Deserialize a plan and check its I/O against the recorded IoSpec."""
    import torch

    from edgesmith.targets.tensorrt_config import NUMPY_FROM_TRT

    trt = trt_module()
    logger = trt_logger()
    logger.errors.clear()
    runtime = trt.Runtime(logger)
    # A version-compatible plan carries the lean runtime TensorRT runs as host code; allowed
    # only for engines this target built with version_compatible (engine.json says so, and
    # the stage's manifest has been checked before a load).
    runtime.engine_host_code_allowed = host_code
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise InvalidInput(
            f"{where}: TensorRT could not load it: "
            f"{logger.last_error('not a plan for this TensorRT')}"
        )
    context = engine.create_execution_context()
    if context is None:
        raise InvalidInput(f"{where}: no execution context: {logger.last_error('out of memory?')}")
    actual = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dt = engine.get_tensor_dtype(name).name
        actual[name] = (is_input, NUMPY_FROM_TRT.get(dt, dt))
    expected = {t.name: (True, t.dtype) for t in io.inputs}
    expected |= {t.name: (False, t.dtype) for t in io.outputs}
    if actual != expected:
        raise InvalidInput(
            f"{where}: the plan does not match engine.json "
            f"(engine I/O {actual}, recorded {expected}); rebuild it"
        )
    if max(len(profiles), 1) != engine.num_optimization_profiles:
        raise InvalidInput(
            f"{where}: the plan has {engine.num_optimization_profiles} optimization profile(s), "
            f"engine.json records {len(profiles)}; rebuild it"
        )
    dev = device()
    where_to = dev.device()
    return TrtRunner(
        io=io,
        profiles=list(profiles),
        engine=engine,
        context=context,
        stream=dev.stream(where_to),
        device=where_to,
        output_dtypes={t.name: getattr(torch, t.dtype) for t in io.outputs},
        runtime=runtime,
    )
