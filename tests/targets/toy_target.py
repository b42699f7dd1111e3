"""A target in a few lines (tests/targets/test_toy_target.py): the ONNX as it is, run by
onnxruntime with every optimisation off; int8 in the symmetric form."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

from targets.base import ENGINE_CONFIG, read_engine_config
from targets.ort_cpu import runner_from_onnx
from toolchain.core.artifact import Format, ModelArtifact
from toolchain.core.presets import Preset


class Toy:
    name: ClassVar[str] = "toy"
    PRESETS: ClassVar[dict[str, Preset]] = {
        "toy-int8": Preset(
            name="toy-int8",
            target="toy",
            why="symmetric int8 everywhere",
            activation_type="int8",
            activation_symmetric=True,
        )  # fmt: skip
    }

    def default_preset(self, isa) -> tuple[str, str]:
        return "toy-int8", "target"

    def unavailable_reason(self) -> str | None:
        return None

    def build(self, model, cfg, out: Path) -> ModelArtifact:
        shutil.copy2(model.path, out / "model.onnx")
        (out / ENGINE_CONFIG).write_text(json.dumps({"target": self.name, "model": "model.onnx"}))
        return ModelArtifact.at(out, Format.engine, precision=model.precision, parent=model.sha256)

    def load(self, engine: ModelArtifact, threads: int | None = None):
        cfg = read_engine_config(engine.path)
        return runner_from_onnx(engine.path / cfg["model"], level="disable", threads=threads)
