"""One quantize run's fixed inputs, shared by its steps (calibrate, the accuracy loop, the
latency check), so that each step takes the run and what it works on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesmith.toolchain.core.artifact import ModelArtifact
from edgesmith.toolchain.core.presets import Preset


@dataclass(frozen=True)
class Job:
    src: ModelArtifact  # the fp32 ONNX model
    cfg: Any  # the stage's config (quantize/stage.py: QuantizeStage)
    preset: Preset  # as resolved for the target and this CPU, with the config's overrides
    tmp: Path  # scratch space inside the output directory, removed when the stage ends
    log: Callable[[str], None]
