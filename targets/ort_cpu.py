"""ONNX Runtime on CPU: offline graph optimisation, optional .ort format for minimal builds."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgesmith.targets.attention import MASK_CONSTANT
from edgesmith.targets.attention import choose as choose_attention
from edgesmith.targets.base import (
    ENGINE_CONFIG,
    BuildConfig,
    Option,
    option_values,
    read_engine_config,
)
from edgesmith.toolchain.core.artifact import Format, IoSpec, ModelArtifact
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.onnx_model import GraphIndex, check_onnx, io_from_onnx
from edgesmith.toolchain.core.ort_session import (
    DISABLED_OPTIMIZERS,
    OPT_LEVELS,
    SessionSettings,
    ort_session,
)
from edgesmith.toolchain.core.presets import Isa, Preset

__all__ = [
    "DISABLED_OPTIMIZERS",
    "OrtCpu",
    "SessionSettings",
    "runner_from_onnx",
    "session_from_onnx",
]

MODEL_FILE = "model.onnx"
ORT_FILE = "model.ort"
REQUIRED_OPS_FILE = "required_operators.config"


def _ort():
    import onnxruntime as ort

    return ort


def session_from_onnx(path: Path, settings: SessionSettings = SessionSettings()):
    """An ONNX Runtime CPU session (core/ort_session.py). settings.threads None: one per core."""
    return ort_session(path, settings)


def fuse_int8_bias(model) -> int:
    """Move a bias Add into the MatMulIntegerToFloat before it (its optional input 6).

    onnxruntime turns DQ→MatMul into MatMulIntegerToFloat when it loads a QDQ model, but leaves
    the bias Add after it (its own MatMulIntegerToFloatFusion takes the bias only on the dynamic
    path). In the kernel the bias costs nothing; as an Add it is one more pass over the output.
    The bias may sit one Add further on, after the Add of an outlier-channel product
    ((mm + outliers) + b = (mm + b) + outliers): it is moved all the same.
    `model` is the offline-optimised engine model; it is changed in place. Returns how many.
    """
    index = GraphIndex(model)
    inits = index.initializers
    removed = []
    for n in model.graph.node:
        out = n.output[0]
        if n.op_type != "MatMulIntegerToFloat" or len(n.input) > 6 or out in index.graph_outputs:
            continue
        if n.input[1] not in inits:
            continue
        width = inits[n.input[1]].dims[-1]
        found = _bias_add(index, out, width)
        if found is None:
            continue
        add, bias, tensor = found
        while len(n.input) < 6:
            n.input.append("")  # optional zero points left out
        n.input.append(bias)
        if tensor == out:  # MatMul → Add(bias): the MatMul now writes the Add's output
            n.output[0] = add.output[0]
        else:  # MatMul → Add(outliers) → Add(bias): the outlier Add writes it
            index.producers[tensor].output[0] = add.output[0]
        removed.append(add)
    for add in removed:
        model.graph.node.remove(add)
    return len(removed)


def _bias_add(index: GraphIndex, out: str, width: int):
    """(the Add of a constant [width] float bias, the bias, the tensor it adds to) reached
    from `out` directly or through one Add of a computed tensor; None if there is none."""
    from onnx import numpy_helper

    inits = index.initializers
    tensor = out
    for _ in range(2):
        after = index.readers(tensor)
        if len(after) != 1 or after[0].op_type != "Add" or tensor in index.graph_outputs:
            return None
        add = after[0]
        other = next((i for i in add.input if i != tensor), None)
        if list(add.input).count(tensor) != 1 or other is None:
            return None
        if other in inits:
            b = numpy_helper.to_array(inits[other])
            if b.ndim == 1 and b.shape[0] == width and b.dtype == np.float32:
                return add, other, tensor
            return None
        tensor = add.output[0]  # an Add of a computed tensor (outliers): look one further
    return None


SOFTMAX_FLOOR = 80.0  # exp(-80) = 1.8e-35: below float32's resolution next to the maximum's 1


def _mask_constant(index: GraphIndex, tensor: str, hops: int = 6) -> bool:
    """Whether `tensor` is computed from a constant at or below MASK_CONSTANT within a few
    nodes upstream (an attention mask: finfo.min, -inf, -1e4 or -1e9 where a key is padding)."""
    todo, seen = [(tensor, 0)], set()
    while todo:
        t, depth = todo.pop()
        if t in seen or depth > hops:
            continue
        seen.add(t)
        a = index.constant(t)
        if a is not None and a.dtype.kind == "f" and a.size and float(a.min()) <= MASK_CONSTANT:
            return True
        node = index.producers.get(t)
        if node is not None:
            todo.extend((i, depth + 1) for i in node.input if i)
    return False


def clamp_masked_softmax(model) -> int:
    """Raise the masked scores of attention Softmaxes to (row maximum - 80) first.

    An additive mask puts padded keys at finfo.min below the rest, and onnxruntime's exp takes
    a slow path for inputs more than ~87 below the row maximum: at [8, 12, 128, 128] with half
    of each row masked its Softmax takes 2.1 ms against 0.3 unmasked (benchmarks/softmax_mask.py).
    Max(x, ReduceMax(x) - 80) keeps every input within the fast range; a masked key's weight
    goes from 0 to at most e^-80 of the largest (1.8e-35), below float32's resolution, so the
    outputs are the same to the last bit that matters (tested). Only Softmaxes on the last axis
    fed by an Add of a mask computed from a constant <= -1000 are changed. Returns how many.
    """
    from onnx import helper, numpy_helper

    index = GraphIndex(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    default_axis = -1 if opset >= 13 else 1  # before 13 Softmax flattened from axis 1
    new_nodes = []
    for n in model.graph.node:
        axis = next((a.i for a in n.attribute if a.name == "axis"), default_axis)
        add = index.producers.get(n.input[0]) if n.op_type == "Softmax" else None
        if add is None or add.op_type != "Add" or axis != -1:
            continue
        if not any(_mask_constant(index, i) for i in add.input):
            continue
        x, base = n.input[0], f"{n.name or n.output[0]}/mask_clamp"
        if opset >= 18:
            axes = f"{base}/axes"
            model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
            rmax = helper.make_node("ReduceMax", [x, axes], [f"{base}/max"], keepdims=1,
                                    name=f"{base}/ReduceMax")  # fmt: skip
        else:
            rmax = helper.make_node("ReduceMax", [x], [f"{base}/max"], axes=[-1], keepdims=1,
                                    name=f"{base}/ReduceMax")  # fmt: skip
        floor = f"{base}/floor"
        model.graph.initializer.append(
            numpy_helper.from_array(np.array(SOFTMAX_FLOOR, np.float32), floor)
        )
        nodes = [
            rmax,
            helper.make_node("Sub", [f"{base}/max", floor], [f"{base}/low"], name=f"{base}/Sub"),
            helper.make_node("Max", [x, f"{base}/low"], [f"{base}/x"], name=f"{base}/Max"),
        ]
        n.input[0] = f"{base}/x"
        new_nodes.append((n, nodes))
    for softmax, nodes in new_nodes:
        at = list(model.graph.node).index(softmax)
        for k, node in enumerate(nodes):
            model.graph.node.insert(at + k, node)
    return len(new_nodes)


def engine_disabled_optimizers(model) -> tuple[str, ...]:
    """The fusions an engine is built and loaded without. An int8 graph (a DequantizeLinear
    feeding a MatMul) also skips BiasGeluFusion, which would take the bias Add that
    fuse_int8_bias moves into the int8 MatMul for free (benchmarks/bias_gelu.py: the int8
    all-MiniLM-L6-v2 engine 2-4% faster without it, Xeon AMX host; fp32 is not: it keeps it)."""
    producers = GraphIndex(model).producers
    int8 = any(
        n.op_type == "MatMul"
        and any(getattr(producers.get(i), "op_type", "") == "DequantizeLinear" for i in n.input)
        for n in model.graph.node
    )
    return (*DISABLED_OPTIMIZERS, "BiasGeluFusion") if int8 else DISABLED_OPTIMIZERS


@dataclass
class OrtRunner:
    session: Any
    io: IoSpec

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = self.session.run(self.io.output_names, feeds)
        except (RuntimeError, ValueError) as e:  # onnxruntime's errors on its feeds: one line
            what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            shapes = ", ".join(f"{k}{list(np.shape(v))}" for k, v in feeds.items())
            raise InvalidInput(
                f"the model does not run on these inputs ({shapes}): "
                f"{what.removeprefix('[ONNXRuntimeError] : ')}"
            ) from None
        return dict(zip(self.io.output_names, outs, strict=True))

    @property
    def threads(self) -> int:
        n = self.session.get_session_options().intra_op_num_threads
        return n or (os.cpu_count() or 1)


def runner_from_onnx(
    path: Path, settings: SessionSettings = SessionSettings(), *, io: IoSpec | None = None
) -> OrtRunner:
    """A runner for an ONNX file; pass `io` when the file was already checked and read.
    settings.spinning False for runners timed side by side (core/ort_session.py says why)."""
    io = io or io_from_onnx(check_onnx(path))
    return OrtRunner(session_from_onnx(path, settings), io)


# The ort-cpu quantization presets, one per instruction-set family (core/presets.py: Preset;
# why each is what it is: toolchain/quantize/presets.py).
CPU_PRESETS: dict[str, Preset] = {
    "ort-cpu-vnni": Preset(
        name="ort-cpu-vnni",
        target="ort-cpu",
        why="x86 with VNNI/AMX: int8 dot products accumulate in int32 without saturation, "
        "so weights use the full int8 range; activations asymmetric uint8 (all 256 steps)",
    ),
    "ort-cpu-avx2": Preset(
        name="ort-cpu-avx2",
        target="ort-cpu",
        reduce_range=True,
        why="x86 without VNNI: u8·s8 pairs are summed into a saturating int16 "
        "(VPMADDUBSW); 7-bit weights (|w| <= 64) keep 2·255·64 = 32640 within int16",
    ),
    "ort-cpu-arm64": Preset(
        name="ort-cpu-arm64",
        target="ort-cpu",
        activation_type="int8",
        activation_symmetric=True,
        why="ARM64: signed dot-product kernels (SDOT/I8MM); symmetric int8 activations and "
        "weights, no saturation, so full range",
    ),
}


def cpu_preset(isa: Isa) -> tuple[str, str]:
    """The ort-cpu preset for this instruction set, and the reason in words."""
    if isa.arch == "arm64":
        return "ort-cpu-arm64", "ARM64 CPU"
    if isa.vnni:
        which = "AMX" if isa.amx else "VNNI"
        found = ", ".join(sorted(isa.flags & {"avx512_vnni", "avx_vnni", "amx_int8"}))
        return "ort-cpu-vnni", f"x86 CPU with {which} ({found})"
    if "avx2" in isa.flags or isa.arch == "x86_64":
        return "ort-cpu-avx2", "x86 CPU without VNNI"
    return "ort-cpu-avx2", f"unrecognised CPU '{isa.arch}': the saturation-safe preset"


class OrtCpu:
    """Target `ort-cpu`: the model optimised offline, run by onnxruntime's CPU provider."""

    name: ClassVar[str] = "ort-cpu"
    # Offline we stop at "extended": "all" adds layout transforms (NCHWc) that are specific to
    # the building CPU. They are applied at load time on the device instead (RUNTIME_OPT_LEVEL).
    DEFAULT_OPT_LEVEL: ClassVar[str] = "extended"
    RUNTIME_OPT_LEVEL: ClassVar[str] = "all"
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("opt_level", str, DEFAULT_OPT_LEVEL,
               "graph optimisations applied offline; the rest of 'all' (CPU-specific layouts) "
               "is applied when the device loads the engine", choices=OPT_LEVELS),
        Option("ort_format", bool, False,
               "also write model.ort and required_operators.config, for a reduced "
               "(minimal-build) onnxruntime"),
        Option("attention", str, "auto",
               "attention blocks as onnxruntime's fused Attention, QAttention or "
               "MultiHeadAttention: 'auto' keeps them where the fused graph times faster at "
               "batch 1 and 8 (recorded in engine.json), 'fused' wherever the outputs agree, "
               "'unfused' never", choices=("auto", "fused", "unfused")),
        Option("threads", int, None,
               "intra-op threads the engine's sessions use (unset: one per physical core)",
               minimum=1),
    )  # fmt: skip
    PRESETS: ClassVar[dict[str, Preset]] = CPU_PRESETS  # quantization presets, by ISA

    def default_preset(self, isa: Isa) -> tuple[str, str]:
        """The preset for this CPU, and how it was chosen (recorded in the manifest)."""
        name, reason = cpu_preset(isa)
        return name, f"detected: {reason}"

    def unavailable_reason(self) -> str | None:
        try:
            ort = _ort()
        except ImportError as e:
            return f"onnxruntime is not installed ({e})"
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime build has no CPUExecutionProvider"
        return None

    def build(self, model: ModelArtifact, cfg: BuildConfig, out: Path) -> ModelArtifact:
        o = option_values(self, cfg.options)
        ort = _ort()
        level = o["opt_level"]
        disabled = engine_disabled_optimizers(check_onnx(model.path))
        ort_session(model.path, SessionSettings(level, disabled=disabled), save_to=out / MODEL_FILE)
        runtime = SessionSettings(self.RUNTIME_OPT_LEVEL, threads=o["threads"],
                                  disabled=disabled, spinning=False)  # fmt: skip
        fused, clamped, attention = self._fuse(out / MODEL_FILE, o["attention"], runtime)
        files = [MODEL_FILE]
        if o["ort_format"]:
            self._save_ort_format(out / MODEL_FILE, out, level)
            files += [ORT_FILE, REQUIRED_OPS_FILE]
        settings = {
            "target": self.name,
            "model": MODEL_FILE,
            "offline_opt_level": level,
            "runtime_opt_level": self.RUNTIME_OPT_LEVEL,
            "disabled_optimizers": list(disabled),
            "int8_bias_fused": fused,
            "masked_softmax_clamped": clamped,
            "attention": attention,
            "intra_op_threads": o["threads"] or 0,
            "providers": ["CPUExecutionProvider"],
            "onnxruntime": ort.__version__,
            "files": files,
        }
        (out / ENGINE_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")
        io = io_from_onnx(check_onnx(out / MODEL_FILE))
        return ModelArtifact.at(
            out,
            Format.engine,
            precision=model.precision,
            io=io,
            parent=model.sha256,
            meta={"target": self.name, **settings},
        )

    def _fuse(self, path: Path, attention: str, runtime: SessionSettings) -> tuple[int, int, dict]:
        """Our rewrites of the optimised model: the int8 bias moved into its product
        (fuse_int8_bias), the masked Softmaxes clamped (clamp_masked_softmax), attention fused
        where it measures faster (targets/attention.py). How many of the first two, and the
        attention record; nothing is rewritten for a model with external data."""
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        if any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
            return 0, 0, {"mode": attention, "blocks": 0, "kept": False,
                          "why": "weights in external data: not rewritten"}  # fmt: skip
        n = fuse_int8_bias(model)
        clamped = clamp_masked_softmax(model)
        model, record = choose_attention(
            model, io_from_onnx(model), attention, runtime, path.parent
        )
        if n or clamped or record["kept"]:
            onnx.save(model, str(path))
        return n, clamped, record

    def _save_ort_format(self, src: Path, out: Path, level: str) -> None:
        """The .ort flatbuffer and the operator list a reduced ONNX Runtime build needs."""
        from onnxruntime.tools.ort_format_model.utils import create_config_from_models

        ort_format = SessionSettings(level, config=(("session.save_model_format", "ORT"),))
        ort_session(src, ort_format, save_to=out / ORT_FILE)
        create_config_from_models(
            [out / ORT_FILE], out / REQUIRED_OPS_FILE, enable_type_reduction=True
        )
        # The generated header names the absolute temp path; keep the file relocatable.
        text = (out / REQUIRED_OPS_FILE).read_text().replace(str(out) + os.sep, "")
        (out / REQUIRED_OPS_FILE).write_text(text)

    def load(
        self, engine: ModelArtifact, threads: int | None = None, spinning: bool = True
    ) -> OrtRunner:
        cfg = read_engine_config(engine.path)
        settings = SessionSettings(
            level=cfg.get("runtime_opt_level", "all"),
            threads=threads or cfg.get("intra_op_threads") or None,
            disabled=tuple(cfg.get("disabled_optimizers", DISABLED_OPTIMIZERS)),
            spinning=spinning,
        )
        return runner_from_onnx(engine.path / cfg["model"], settings)
