"""A stand-in for TensorRT's Python bindings (the `tensorrt` module), for make test.

Its API is NVIDIA's: the enums (members and values) are made from the dump of the real
bindings this fake plays (tests/targets/tensorrt_api/<version>.json, read from the wheels by
tests/targets/trt_api.py), and every method it defines is checked against that dump when the
module loads: a name the real class lacks is an error, one that exists in another version only
is left out (11 has no int8_calibrator), and each call binds its arguments to the real pybind
signature (a keyword the real method does not take is a TypeError, as pybind raises). What
10.x deprecates is there, as in the real 10.x; what 11 removes is not.

It keeps TensorRT's return conventions (None or False on failure with an ERROR logged, -1 for
an invalid profile). Where the real library would compute on a GPU, this one runs the parsed
ONNX model with onnxruntime on the CPU, reading and writing the memory at the addresses it is
given, so numerics, shapes, profiles and the output allocator are real.

A "plan" is JSON: the ONNX model, the build settings and what TensorRT ties a plan to (its
version, the compute capability, compatibility modes). The device is `DEVICE`, set by the
test fixture (tests/targets/fake_device.py), with the host stand-in the runner uses.
"""

from __future__ import annotations

import base64
import builtins
import ctypes
import functools
import hashlib
import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx

API_DIR = Path(__file__).with_name("tensorrt_api")
# The dump this fake plays; the fixture sets API_VERSION (and __version__) before loading.
API_VERSION = globals().get("API_VERSION", "10.16.1.11")
API = json.loads((API_DIR / f"{API_VERSION}.json").read_text())
__version__ = globals().get("__version__", API["version"])
MAJOR = int(__version__.split(".")[0])
DEVICE = SimpleNamespace(name="NVIDIA Fake L4", cc="8.9", memory=24 << 30)
CALLS: list[str] = []  # what was called, for tests that check an order (plugins first)


class _Member:
    def __init__(self, enum: str, name: str, value: int) -> None:
        self.enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other) -> bool:
        return isinstance(other, _Member) and (self.enum, self.name) == (other.enum, other.name)

    def __hash__(self) -> int:
        return hash((self.enum, self.name))

    def __repr__(self) -> str:
        return f"{self.enum}.{self.name}"


def _enum(name: str):
    """The enum `name` of the dump: its members with their values, nothing else."""
    members = API["enums"][name]
    short = name.rsplit(".", 1)[-1]
    attrs = {m: _Member(short, m, d["value"]) for m, d in members.items()}
    attrs["__members__"] = dict(attrs)
    return type(short, (), attrs)


DataType = _enum("DataType")
for _alias, _member in API["datatype_aliases"].items():  # trt.float32 ... and trt.bool
    globals()[_alias] = getattr(DataType, _member)  # (so this module says builtins.bool)
BuilderFlag = _enum("BuilderFlag")
NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag")
MemoryPoolType = _enum("MemoryPoolType")
HardwareCompatibilityLevel = _enum("HardwareCompatibilityLevel")
ProfilingVerbosity = _enum("ProfilingVerbosity")
LayerInformationFormat = _enum("LayerInformationFormat")
TensorIOMode = _enum("TensorIOMode")

_FROM_ONNX = {
    onnx.TensorProto.FLOAT: DataType.FLOAT,
    onnx.TensorProto.DOUBLE: DataType.FLOAT,  # the parser casts DOUBLE to FLOAT
    onnx.TensorProto.FLOAT16: DataType.HALF,
    onnx.TensorProto.BFLOAT16: DataType.BF16,
    onnx.TensorProto.INT8: DataType.INT8,
    onnx.TensorProto.UINT8: DataType.UINT8,
    onnx.TensorProto.INT32: DataType.INT32,
    onnx.TensorProto.INT64: DataType.INT64,
    onnx.TensorProto.BOOL: DataType.BOOL,
}
_NUMPY = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "UINT8": "uint8",
          "INT32": "int32", "INT64": "int64", "BOOL": "bool", "BF16": "bfloat16"}  # fmt: skip


def _np_dtype(dt) -> np.dtype:
    if dt.name == "BF16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_NUMPY[dt.name])


# ---------------------------------------------------------------- logging and plugins


class ILogger:
    Severity = _enum("ILogger.Severity")

    def __init__(self) -> None:
        pass

    def log(self, severity, msg) -> None:
        raise NotImplementedError


class Logger(ILogger):
    def __init__(self, min_severity=None) -> None:
        super().__init__()

    def log(self, severity, msg) -> None:
        pass


def init_libnvinfer_plugins(logger, namespace: str) -> bool:
    CALLS.append("init_libnvinfer_plugins")
    return True


def _error(logger, msg: str) -> None:
    logger.log(ILogger.Severity.ERROR, msg)


# ---------------------------------------------------------------- network and parser


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype, symbols: tuple) -> None:
        self.name, self.shape, self.dtype, self.symbols = name, shape, dtype, symbols
        self.is_shape_tensor = False


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.model: onnx.ModelProto | None = None

    def get_flag(self, flag) -> bool:
        return builtins.bool(self.flags & (1 << int(flag)))

    @property
    def _strongly_typed(self) -> bool:  # 11: every network is strongly typed
        flag = getattr(NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return MAJOR >= 11 or (flag is not None and self.get_flag(flag))

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_input(self, i: int) -> ITensor:
        return self.inputs[i]

    def get_output(self, i: int) -> ITensor:
        return self.outputs[i]


def _tensor(v: onnx.ValueInfoProto) -> ITensor:
    tt = v.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    symbols = tuple(d.dim_param if d.HasField("dim_param") else None for d in tt.shape.dim)
    return ITensor(v.name, dims, _FROM_ONNX.get(tt.elem_type, DataType.FLOAT), symbols)


class ParserError:
    def __init__(self, node: int, name: str, op: str, desc: str) -> None:
        self._v = (node, name, op, desc)

    def node(self) -> int:
        return self._v[0]

    def node_name(self) -> str:
        return self._v[1]

    def node_operator(self) -> str:
        return self._v[2]

    def desc(self) -> str:
        return self._v[3]


class OnnxParser:
    KNOWN_DOMAINS = ("", "ai.onnx")

    def __init__(self, network: INetworkDefinition, logger) -> None:
        self.network, self.logger, self.errors = network, logger, []

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, i: int) -> ParserError:
        return self.errors[i]

    def parse_from_file(self, path: str) -> bool:
        if "init_libnvinfer_plugins" not in CALLS:
            self.errors.append(ParserError(-1, "", "", "plugin library not initialised"))
            return False
        model = onnx.load(path)  # external data resolved beside the file, as the parser does
        for i, n in enumerate(model.graph.node):
            if n.domain not in self.KNOWN_DOMAINS:
                self.errors.append(
                    ParserError(i, n.name, n.op_type, f"No importer registered for op: {n.op_type}")
                )
        if self.errors:
            return False
        inits = {t.name for t in model.graph.initializer}
        self.network.inputs = [_tensor(v) for v in model.graph.input if v.name not in inits]
        self.network.outputs = [_tensor(v) for v in model.graph.output]
        self.network.model = model
        return True


# ---------------------------------------------------------------- builder


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, min, opt, max) -> None:
        mn, op, mx = (tuple(int(d) for d in s) for s in (min, opt, max))
        if not (len(mn) == len(op) == len(mx)) or not all(
            a <= b <= c for a, b, c in zip(mn, op, mx, strict=True)
        ):
            raise RuntimeError(f"invalid dimensions for '{name}': need min <= opt <= max")
        self.shapes[name] = (mn, op, mx)


class ITimingCache:
    MAGIC = "fake-trt-timing-cache"

    def __init__(self, key: str, entries: dict[str, str]) -> None:
        self.key, self.entries = key, dict(entries)

    def serialize(self) -> bytes:
        return json.dumps({"magic": self.MAGIC, "key": self.key, "entries": self.entries}).encode()

    def combine(self, other: ITimingCache, ignore_mismatch: bool) -> bool:
        if other.key != self.key and not ignore_mismatch:
            return False
        self.entries.update(other.entries)
        return True

    def reset(self) -> bool:
        self.entries.clear()
        return True


def _device_key() -> str:
    return f"{__version__}/{DEVICE.cc}"


class IBuilderConfig:
    def __init__(self, logger) -> None:
        self.logger = logger
        self.flags = {BuilderFlag.TF32}  # TensorRT enables TF32 by default
        self.pools = {MemoryPoolType.WORKSPACE: DEVICE.memory}
        self.profiles: list[IOptimizationProfile] = []
        self.cache: ITimingCache | None = None
        self._level = 3
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY

    @property
    def builder_optimization_level(self) -> int:
        return self._level

    @builder_optimization_level.setter
    def builder_optimization_level(self, level: int) -> None:
        if not 0 <= level <= 5:
            raise ValueError("builder optimization level must be in [0, 5]")
        self._level = level

    @property
    def int8_calibrator(self):  # deprecated in 10.1, removed in 11 (left out there)
        return None

    @int8_calibrator.setter
    def int8_calibrator(self, calibrator) -> None:
        _error(self.logger, "this fake has no calibration: explicit quantization (Q/DQ) only")

    def set_flag(self, flag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.pools[pool] = int(size)

    def get_memory_pool_limit(self, pool) -> int:
        return self.pools[pool]

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile.shapes:
            _error(self.logger, "optimization profile has no shapes")
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes) -> ITimingCache | None:
        if not blob:
            return ITimingCache(_device_key(), {})
        try:
            d = json.loads(bytes(blob))
            assert d["magic"] == ITimingCache.MAGIC
        except (ValueError, KeyError, AssertionError, TypeError):
            _error(self.logger, "timing cache: corrupted blob")
            return None
        return ITimingCache(d["key"], d["entries"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache.key != _device_key() and not ignore_mismatch:
            _error(self.logger, "timing cache was created on a different device or version")
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self.cache


class IHostMemory(bytes):
    nbytes = property(len)


class Builder:
    def __init__(self, logger) -> None:
        self.logger = logger

    @property
    def platform_has_fast_fp16(self) -> bool:  # removed in 11 (left out there)
        return True

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self.logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network, config) -> IHostMemory | None:
        problem = _build_problem(network, config)
        if problem:
            _error(self.logger, problem)
            return None
        model = network.model
        layers = _layers(model, network, config)
        for layer in layers:
            key = hashlib.sha256(json.dumps(layer, sort_keys=True).encode()).hexdigest()[:16]
            config.cache.entries.setdefault(key, layer["TacticName"])
        plan = {
            "magic": "fake-trt-plan",
            "version": __version__,
            "cc": DEVICE.cc,
            "hw": config.hardware_compatibility_level.name,
            "version_compatible": BuilderFlag.VERSION_COMPATIBLE in config.flags,
            "tf32": BuilderFlag.TF32 in config.flags,
            "detailed": config.profiling_verbosity == ProfilingVerbosity.DETAILED,
            "inputs": [(t.name, t.dtype.name, t.shape) for t in network.inputs],
            "outputs": [(t.name, t.dtype.name, t.shape, t.symbols) for t in network.outputs],
            "profiles": [{n: s for n, s in p.shapes.items()} for p in config.profiles],
            "layers": layers,
            "onnx": base64.b64encode(model.SerializeToString()).decode(),
        }
        return IHostMemory(json.dumps(plan).encode())


def _build_problem(network: INetworkDefinition, config: IBuilderConfig) -> str | None:
    if network.model is None:
        return "network has no layers"
    dynamic = [t.name for t in network.inputs if any(d < 0 for d in t.shape)]
    if dynamic and not config.profiles:
        return "Network has dynamic or shape inputs, but no optimization profile has been defined."
    for i, p in enumerate(config.profiles):
        for name in dynamic:
            if name not in p.shapes:
                return f"optimization profile {i} is missing values for input '{name}'"
            t = next(t for t in network.inputs if t.name == name)
            for s in p.shapes[name]:
                if len(s) != len(t.shape) or any(
                    d >= 0 and d != x for d, x in zip(t.shape, s, strict=True)
                ):
                    return f"profile {i}: '{name}' {s} does not fit the network's {t.shape}"
    quantized = any(n.op_type == "QuantizeLinear" for n in network.model.graph.node)
    if quantized and not network._strongly_typed and not config.get_flag(BuilderFlag.INT8):
        return "a network with Q/DQ layers needs the INT8 flag or strong typing"
    level = config.hardware_compatibility_level
    if level == HardwareCompatibilityLevel.AMPERE_PLUS and tuple(
        int(x) for x in DEVICE.cc.split(".")
    ) < (8, 0):
        return "hardware compatibility ampere+ needs an Ampere or later GPU to build on"
    if config.cache is None:
        config.cache = ITimingCache(_device_key(), {})
    return None


def _layers(model: onnx.ModelProto, network, config) -> list[dict]:
    """One layer per compute node; Q/DQ fuse into their consumers (int8 when fed by a DQ)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types |= {v.name: v.type.tensor_type.elem_type for v in model.graph.output}
    sparse = BuilderFlag.SPARSE_WEIGHTS in config.flags
    out = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant", "Cast"):
            continue
        fed = [producers.get(i) for i in n.input]
        if any(p is not None and p.op_type == "DequantizeLinear" for p in fed):
            dtype = "Int8"
        elif types.get(n.output[0]) == onnx.TensorProto.FLOAT16:
            dtype = "FP16"
        else:
            dtype = "FP32"
        tactic = ("sm89_xmma_sparse" if sparse and n.op_type in ("Conv", "MatMul", "Gemm")
                  else "sm89_xmma_dense")  # fmt: skip
        out.append({
            "Name": n.name or n.output[0],
            "LayerType": "Myelin" if n.op_type == "MatMul" else n.op_type,
            "Outputs": [{"Name": n.output[0], **_format(dtype, n.op_type == "MatMul")}],
            "TacticName": tactic,
        })  # fmt: skip
    return out


# How the inspector writes a tensor's format and type: 10.x one "Format/Datatype" string
# (NVIDIA's own wording; a Myelin layer's is just the type, "Float"); 11 two fields.
_FORMATS = {
    "Int8": "Thirty-two wide channel vectorized row major Int8 format",
    "FP16": "Two wide channel vectorized row major FP16 format",
    "FP32": "Row major linear FP32",
}
_MYELIN = {"Int8": "Int8", "FP16": "Half", "FP32": "Float"}


def _format(dtype: str, myelin: bool) -> dict[str, str]:
    if MAJOR >= 11:
        layout = "Row major linear" if myelin else _FORMATS[dtype].split(f" {dtype}")[0]
        return {"Format": layout, "Datatype": dtype}
    return {"Format/Datatype": _MYELIN[dtype] if myelin else _FORMATS[dtype]}


# ---------------------------------------------------------------- runtime


class EngineInspector:
    def __init__(self, plan: dict) -> None:
        self.plan = plan

    def get_engine_information(self, fmt) -> str:
        layers = (
            self.plan["layers"]
            if self.plan["detailed"]
            else [layer["Name"] for layer in self.plan["layers"]]
        )
        if fmt == LayerInformationFormat.JSON:
            io = [t[0] for t in self.plan["inputs"]]
            return json.dumps({"Layers": layers, "Bindings" if MAJOR < 11 else "IOTensors": io})
        return "\n".join(str(layer) for layer in layers)


class IOutputAllocator:
    def __init__(self) -> None:
        pass


class ICudaEngine:
    def __init__(self, plan: dict, logger) -> None:
        self.plan, self.logger = plan, logger
        self.io = {
            t[0]: (TensorIOMode.INPUT, getattr(DataType, t[1]), t[2]) for t in plan["inputs"]
        }
        self.io |= {t[0]: (TensorIOMode.OUTPUT, getattr(DataType, t[1]), t[2])
                    for t in plan["outputs"]}  # fmt: skip

    num_io_tensors = property(lambda self: len(self.io))
    num_optimization_profiles = property(lambda self: max(len(self.plan["profiles"]), 1))

    def get_tensor_name(self, i: int) -> str:
        return list(self.io)[i]

    def get_tensor_mode(self, name: str):
        return self.io.get(name, (TensorIOMode.NONE,))[0]

    def get_tensor_dtype(self, name: str):
        return self.io[name][1]

    def get_tensor_shape(self, name: str):
        return self.io[name][2]

    def get_tensor_profile_shape(self, name: str, index: int):
        return [list(s) for s in self.plan["profiles"][index][name]]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self.plan)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(re.sub(r"\D", "", p) or 0) for p in text.split("."))


class Runtime:
    def __init__(self, logger) -> None:
        self.logger = logger
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, blob: bytes) -> ICudaEngine | None:
        try:
            plan = json.loads(bytes(blob))
            assert plan["magic"] == "fake-trt-plan"
        except (ValueError, KeyError, AssertionError, TypeError):
            _error(self.logger, "IRuntime::deserializeCudaEngine: magic tag does not match")
            return None
        if plan["version_compatible"]:
            if not self.engine_host_code_allowed:
                _error(self.logger, "a version-compatible engine needs engine_host_code_allowed")
                return None
            built, here = _version(plan["version"]), _version(__version__)
            # 11's support matrix: version-compatible 10.x engines run on 11 too
            ok = here >= built and (here[0] == built[0] or (built[0], here[0]) == (10, 11))
        else:
            ok = plan["version"] == __version__
        if not ok:
            _error(self.logger, f"engine plan from TensorRT {plan['version']} is not compatible")
            return None
        built, here = _version(plan["cc"]), _version(DEVICE.cc)
        fits = here >= (8, 0) if plan["hw"] == "AMPERE_PLUS" else built == here
        if not fits:
            _error(self.logger, f"engine built for compute capability {plan['cc']}")
            return None
        return ICudaEngine(plan, self.logger)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.allocators: dict[str, IOutputAllocator] = {}
        self._session = None

    def _error(self, msg: str) -> None:
        _error(self.engine.logger, msg)

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        if not 0 <= index < self.engine.num_optimization_profiles:
            self._error(f"profile index {index} out of range")
            return False
        self.profile = index
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        mode, _, dims = self.engine.io.get(name, (None, None, None))
        shape = tuple(int(d) for d in shape)
        if mode != TensorIOMode.INPUT or len(shape) != len(dims):
            self._error(f"set_input_shape: '{name}' is not an input of rank {len(shape)}")
            return False
        profiles = self.engine.plan["profiles"]
        if profiles and name in profiles[self.profile]:
            mn, _, mx = profiles[self.profile][name]
            if not all(a <= s <= b for a, s, b in zip(mn, shape, mx, strict=True)):
                self._error(f"'{name}' {shape} outside profile {self.profile} [{mn}, {mx}]")
                return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.engine.io or not ptr:
            self._error(f"set_tensor_address: invalid tensor '{name}' or null address")
            return False
        self.addresses[name] = int(ptr)
        return True

    def set_output_allocator(self, name: str, allocator: IOutputAllocator) -> bool:
        if self.engine.get_tensor_mode(name) != TensorIOMode.OUTPUT:
            return False
        self.allocators[name] = allocator
        return True

    def infer_shapes(self) -> list[str]:
        return [t[0] for t in self.engine.plan["inputs"] if t[0] not in self.shapes]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.shapes:
            return self.shapes[name]
        by_symbol = {}
        for t in self.engine.plan["inputs"]:
            v = next(v for v in self._model().graph.input if v.name == t[0])
            for d, s in zip(v.type.tensor_type.shape.dim, self.shapes.get(t[0], ()), strict=False):
                if d.HasField("dim_param"):
                    by_symbol[d.dim_param] = s
        out = next(t for t in self.engine.plan["outputs"] if t[0] == name)
        return tuple(
            d if d >= 0 else by_symbol.get(sym, -1) for d, sym in zip(out[2], out[3], strict=True)
        )

    def _model(self) -> onnx.ModelProto:
        return onnx.load_from_string(base64.b64decode(self.engine.plan["onnx"]))

    def execute_async_v3(self, stream_handle: int) -> bool:
        import onnxruntime as ort

        plan = self.engine.plan
        missing = [t[0] for t in plan["inputs"] if t[0] not in self.addresses]
        if missing:
            self._error(f"execute: no address for {missing}")
            return False
        feeds = {}
        for name, dt, _ in plan["inputs"]:
            dtype = _np_dtype(getattr(DataType, dt))
            feeds[name] = _read(self.addresses[name], self.shapes[name], dtype)
        if self._session is None:
            self._session = ort.InferenceSession(
                _float_io(self._model()).SerializeToString(), providers=["CPUExecutionProvider"]
            )
        feeds = {k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v
                 for k, v in feeds.items()}  # fmt: skip
        results = self._session.run([t[0] for t in plan["outputs"]], feeds)
        for (name, dt, *_), value in zip(plan["outputs"], results, strict=True):
            value = np.ascontiguousarray(value, dtype=_np_dtype(getattr(DataType, dt)))
            if name in self.allocators and any(d < 0 for d in self.get_tensor_shape(name)):
                alloc = self.allocators[name]
                ptr = alloc.reallocate_output_async(name, 0, value.nbytes, 256, stream_handle)
                ctypes.memmove(ptr, value.ctypes.data, value.nbytes)
                alloc.notify_shape(name, value.shape)
            elif name in self.addresses:
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
            else:
                self._error(f"execute: no address or allocator for output '{name}'")
                return False
        return True


def _float_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """bfloat16 I/O as float32 with Casts inside (onnxruntime's Python API takes no bf16)."""
    bf16 = onnx.TensorProto.BFLOAT16
    for v in model.graph.input:
        if v.type.tensor_type.elem_type == bf16:
            inner = v.name + "__bf16"
            for n in model.graph.node:
                n.input[:] = [inner if i == v.name else i for i in n.input]
            model.graph.node.insert(0, onnx.helper.make_node("Cast", [v.name], [inner], to=bf16))
            v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for v in model.graph.output:
        if v.type.tensor_type.elem_type == bf16:
            inner = v.name + "__bf16"
            for n in model.graph.node:
                n.output[:] = [inner if o == v.name else o for o in n.output]
            model.graph.node.append(
                onnx.helper.make_node("Cast", [inner], [v.name], to=onnx.TensorProto.FLOAT)
            )
            v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return model


def _read(ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = (ctypes.c_char * max(n, 1)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=n // dtype.itemsize).reshape(shape).copy()


# ---------------------------------------------------------------- conformance to the dump


def _params(signature: str) -> inspect.Signature:
    """'(self: X, cache: ITimingCache, flag: bool = False) -> bool' as an inspect.Signature."""
    inner = signature[1 : signature.rindex(") -> ")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        depth += ch in "[(<" and 1 or ch in "])>" and -1 or 0
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts += [cur] if cur.strip() else []
    params = []
    for part in parts:
        name = part.split(":")[0].split("=")[0].strip().lstrip("*")
        default = inspect.Parameter.empty if "=" not in part else None
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params.append(inspect.Parameter(name, kind, default=default))
    return inspect.Signature(params)


def _checked(owner: str, name: str, impl, signatures: list[str]):
    """`impl` called only with arguments one of the real overloads takes."""
    sigs = [_params(s) for s in signatures]

    @functools.wraps(impl)
    def call(*args, **kwargs):
        if sigs and not any(_binds(sig, args, kwargs) for sig in sigs):
            raise TypeError(
                f"{name}(): incompatible function arguments. The following argument types are "
                f"supported: {'; '.join(signatures)} (the real {owner}.{name}, TensorRT "
                f"{API['version']})"
            )
        return impl(*args, **kwargs)

    return call


def _binds(sig: inspect.Signature, args, kwargs) -> bool:
    try:
        sig.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _known_anywhere(owner: str, name: str) -> bool:
    for path in API_DIR.glob("*.json"):
        c = json.loads(path.read_text())["classes"].get(owner, {})
        if name in c.get("methods", {}) or name in c.get("properties", {}):
            return True
    return False


def _conform(cls, owner: str | None = None) -> None:
    """Make the fake class `cls` the real `owner` of this version: methods checked against
    the dump's signatures, attributes of other versions only removed, invented ones refused."""
    owner = owner or cls.__name__
    real = API["classes"].get(owner)
    if real is None:
        raise AttributeError(f"fake TensorRT: no class {owner} in TensorRT {API['version']}")
    for name, value in list(vars(cls).items()):
        if name.startswith("_") or isinstance(value, type) or name.isupper():
            continue
        if not (callable(value) or isinstance(value, property)):
            continue
        if name in real["methods"]:
            if callable(value):
                sigs = real["methods"][name]["signatures"]
                setattr(cls, name, _checked(owner, name, value, sigs))
        elif name in real["properties"] or name in real.get("overridable", {}):
            continue
        elif _known_anywhere(owner, name):
            delattr(cls, name)  # another version's API: not this one's
        else:
            raise AttributeError(f"fake TensorRT: {owner}.{name} is in no TensorRT's API")


CLASSES = (ILogger, Logger, ITensor, INetworkDefinition, ParserError, OnnxParser,
           IOptimizationProfile, ITimingCache, IBuilderConfig, IHostMemory, Builder,
           EngineInspector, IOutputAllocator, ICudaEngine, Runtime, IExecutionContext)  # fmt: skip
for _cls in CLASSES:
    _conform(_cls)
init_libnvinfer_plugins = _checked(
    "tensorrt", "init_libnvinfer_plugins", init_libnvinfer_plugins,
    API["functions"]["init_libnvinfer_plugins"]["signatures"],
)  # fmt: skip

MODULE_FILE = Path(__file__)
