"""ONNX Runtime on CPU: offline graph optimisation, optional .ort format for minimal builds."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from targets.base import ENGINE_CONFIG, BuildConfig, read_engine_config
from toolchain.core.artifact import Format, IoSpec, ModelArtifact
from toolchain.core.errors import InvalidInput
from toolchain.core.onnx_model import check_onnx, io_from_onnx

MODEL_FILE = "model.onnx"
ORT_FILE = "model.ort"
REQUIRED_OPS_FILE = "required_operators.config"
# onnxruntime's CPU SkipLayerNormalization kernel is 2-7x slower than the Add and
# LayerNormalization it replaces (benchmarks/ort_fusions.py; onnxruntime 1.32: 1.94 vs 0.30 ms
# at [8, 128, 384]), and the fusion fires on int8 BERT graphs: our sessions skip it, offline
# and at load time. engine.json records the list so the device does the same.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def _ort():
    import onnxruntime as ort

    return ort


def opt_level(name: str):
    ort = _ort()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if name not in levels:
        raise InvalidInput(f"unknown opt_level '{name}'; available: {', '.join(levels)}")
    return levels[name]


def session_from_onnx(
    path: Path,
    *,
    level: str = "all",
    threads: int | None = None,
    disabled: tuple[str, ...] | list[str] = DISABLED_OPTIMIZERS,
):
    """An ONNX Runtime CPU session. `threads` None lets ORT use one per physical core."""
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = opt_level(level)
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(
        str(path),
        sess_options=so,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled),
    )


def fuse_int8_bias(model) -> int:
    """Move a bias Add into the MatMulIntegerToFloat before it (its optional input 6).

    onnxruntime turns DQ→MatMul into MatMulIntegerToFloat when it loads a QDQ model, but leaves
    the bias Add after it (its own MatMulIntegerToFloatFusion takes the bias only on the dynamic
    path). In the kernel the bias costs nothing; as an Add it is one more pass over the output.
    `model` is the offline-optimised engine model; it is changed in place. Returns how many.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    fused = []
    for n in model.graph.node:
        if n.op_type != "MatMulIntegerToFloat" or len(n.input) > 6 or n.output[0] in outputs:
            continue
        after = readers.get(n.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add" or n.input[1] not in inits:
            continue
        add = after[0]
        bias = next((i for i in add.input if i != n.output[0]), None)
        if bias not in inits or list(add.input).count(n.output[0]) != 1:
            continue
        b = numpy_helper.to_array(inits[bias])
        width = inits[n.input[1]].dims[-1]
        if b.ndim != 1 or b.shape[0] != width or b.dtype != np.float32:
            continue
        while len(n.input) < 6:
            n.input.append("")  # optional zero points left out
        n.input.append(bias)
        n.output[0] = add.output[0]
        fused.append(add)
    for add in fused:
        model.graph.node.remove(add)
    return len(fused)


@dataclass
class OrtRunner:
    session: Any
    io: IoSpec

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.io.output_names, feeds)
        return dict(zip(self.io.output_names, outs, strict=True))

    @property
    def threads(self) -> int:
        n = self.session.get_session_options().intra_op_num_threads
        return n or (os.cpu_count() or 1)


def runner_from_onnx(
    path: Path,
    *,
    level: str = "all",
    threads: int | None = None,
    io: IoSpec | None = None,
    disabled: tuple[str, ...] | list[str] = DISABLED_OPTIMIZERS,
) -> OrtRunner:
    """A runner for an ONNX file; pass `io` when the file was already checked and read."""
    io = io or io_from_onnx(check_onnx(path))
    return OrtRunner(session_from_onnx(path, level=level, threads=threads, disabled=disabled), io)


class OrtCpu:
    """Target `ort-cpu`.

    Options (BuildConfig.options): opt_level, ort_format, threads.
    """

    name: ClassVar[str] = "ort-cpu"
    # Offline we stop at "extended": "all" adds layout transforms (NCHWc) that are specific to
    # the building CPU. They are applied at load time on the device instead (RUNTIME_OPT_LEVEL).
    DEFAULT_OPT_LEVEL: ClassVar[str] = "extended"
    RUNTIME_OPT_LEVEL: ClassVar[str] = "all"
    OPTIONS: ClassVar[tuple[str, ...]] = ("opt_level", "ort_format", "threads")

    def unavailable_reason(self) -> str | None:
        try:
            ort = _ort()
        except ImportError as e:
            return f"onnxruntime is not installed ({e})"
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime build has no CPUExecutionProvider"
        return None

    def build(self, model: ModelArtifact, cfg: BuildConfig, out: Path) -> ModelArtifact:
        ort = _ort()
        unknown = set(cfg.options) - set(self.OPTIONS)
        if unknown:
            raise InvalidInput(
                f"unknown ort-cpu option(s) {sorted(unknown)}; available: {', '.join(self.OPTIONS)}"
            )
        level = cfg.options.get("opt_level", self.DEFAULT_OPT_LEVEL)
        check_onnx(model.path)
        so = ort.SessionOptions()
        so.graph_optimization_level = opt_level(level)
        so.optimized_model_filepath = str(out / MODEL_FILE)
        so.log_severity_level = 3
        ort.InferenceSession(
            str(model.path),
            sess_options=so,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(DISABLED_OPTIMIZERS),
        )
        fused = self._fuse(out / MODEL_FILE)
        files = [MODEL_FILE]
        if cfg.options.get("ort_format"):
            self._save_ort_format(out / MODEL_FILE, out, level)
            files += [ORT_FILE, REQUIRED_OPS_FILE]
        settings = {
            "target": self.name,
            "model": MODEL_FILE,
            "offline_opt_level": level,
            "runtime_opt_level": self.RUNTIME_OPT_LEVEL,
            "disabled_optimizers": list(DISABLED_OPTIMIZERS),
            "int8_bias_fused": fused,
            "intra_op_threads": cfg.options.get("threads") or 0,
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

    def _fuse(self, path: Path) -> int:
        """Our fusions on the optimised model (fuse_int8_bias); skipped for external data."""
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        if any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
            return 0
        n = fuse_int8_bias(model)
        if n:
            onnx.save(model, str(path))
        return n

    def _save_ort_format(self, src: Path, out: Path, level: str) -> None:
        """The .ort flatbuffer and the operator list a reduced ONNX Runtime build needs."""
        ort = _ort()
        from onnxruntime.tools.ort_format_model.utils import create_config_from_models

        so = ort.SessionOptions()
        so.graph_optimization_level = opt_level(level)
        so.optimized_model_filepath = str(out / ORT_FILE)
        so.add_session_config_entry("session.save_model_format", "ORT")
        so.log_severity_level = 3
        ort.InferenceSession(
            str(src),
            sess_options=so,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(DISABLED_OPTIMIZERS),
        )
        create_config_from_models(
            [out / ORT_FILE], out / REQUIRED_OPS_FILE, enable_type_reduction=True
        )
        # The generated header names the absolute temp path; keep the file relocatable.
        text = (out / REQUIRED_OPS_FILE).read_text().replace(str(out) + os.sep, "")
        (out / REQUIRED_OPS_FILE).write_text(text)

    def load(self, engine: ModelArtifact, threads: int | None = None) -> OrtRunner:
        cfg = read_engine_config(engine.path)
        threads = threads or cfg.get("intra_op_threads") or None
        return runner_from_onnx(
            engine.path / cfg["model"],
            level=cfg.get("runtime_opt_level", "all"),
            threads=threads,
            disabled=cfg.get("disabled_optimizers", DISABLED_OPTIMIZERS),
        )
