"""The Target protocol: what builds an engine from ONNX, and what runs it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from toolchain.core.artifact import IoSpec, ModelArtifact
from toolchain.core.errors import InvalidInput

ENGINE_CONFIG = "engine.json"  # in every engine directory: target name and session settings


@runtime_checkable
class Runner(Protocol):
    """Something that runs a model: feeds by input name in, outputs by name out."""

    io: IoSpec

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class BuildConfig:
    """Per-build settings; `options` holds the target's own keys (see each target's class)."""

    options: dict[str, Any] = field(default_factory=dict)


class Target(Protocol):
    name: ClassVar[str]

    def unavailable_reason(self) -> str | None:
        """None when this machine can build and run the target, else why not (one line)."""
        ...

    def build(self, model: ModelArtifact, cfg: BuildConfig, out: Path) -> ModelArtifact:
        """Write an engine into the (empty, temporary) directory `out` and return it."""
        ...

    def load(self, engine: ModelArtifact, threads: int | None = None) -> Runner: ...


def read_engine_config(directory: Path) -> dict[str, Any]:
    p = Path(directory) / ENGINE_CONFIG
    if not p.is_file():
        raise InvalidInput(f"{directory}: not an engine directory (no {ENGINE_CONFIG})")
    return json.loads(p.read_text())
