"""A target in a few lines (tests/targets/test_toy_target.py): the ONNX as it is, run by
onnxruntime at the optimisation level its one build option names; int8 in the symmetric
form."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

from edgesmith.targets.base import ENGINE_CONFIG, Option, option_values, read_engine_config
from edgesmith.targets.ort_cpu import SessionSettings, runner_from_onnx
from edgesmith.toolchain.core.artifact import Format, ModelArtifact
from edgesmith.toolchain.core.ort_session import OPT_LEVELS
from edgesmith.toolchain.core.presets import Preset


class Toy:
    name: ClassVar[str] = "toy"
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("level", str, "disable", "onnxruntime's graph optimisation level when it runs",
               choices=OPT_LEVELS),
    )  # fmt: skip
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
        o = option_values(self, cfg.options)  # checked, defaults filled in
        shutil.copy2(model.path, out / "model.onnx")
        settings = {"target": self.name, "model": "model.onnx", "level": o["level"]}
        (out / ENGINE_CONFIG).write_text(json.dumps(settings))
        return ModelArtifact.at(out, Format.engine, precision=model.precision, parent=model.sha256)

    def load(self, engine: ModelArtifact, threads: int | None = None):
        cfg = read_engine_config(engine.path)
        settings = SessionSettings(level=cfg["level"], threads=threads)
        return runner_from_onnx(engine.path / cfg["model"], settings)
