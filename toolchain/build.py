"""The build stage: an ONNX model → an engine directory for one target."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from edgesmith.targets.base import BuildConfig, option_values
from edgesmith.toolchain.core.artifact import Format, info_with_carried
from edgesmith.toolchain.core.errors import InvalidInput, TargetUnavailable
from edgesmith.toolchain.core.files import carry_preprocessing, sha256_path
from edgesmith.toolchain.core.registry import get_target
from edgesmith.toolchain.core.stage import Inputs, Stage, StageConfig, StageResult, Workdir


class BuildStage(StageConfig):
    kind: Literal["build"] = "build"
    target: str = "ort-cpu"
    options: dict[str, Any] = {}


def run(inputs: Inputs, cfg: BuildStage, work: Workdir) -> StageResult:
    src, out = inputs.model, work.out
    target = get_target(cfg.target)
    # the options against the target's declaration first: a wrong key or value is exit 2 on
    # any machine, before anything is built
    options = option_values(target, cfg.options)
    why = target.unavailable_reason()
    if why:
        raise TargetUnavailable(f"target '{cfg.target}' cannot build on this machine: {why}")
    if src.format is not Format.onnx:
        raise InvalidInput(
            f"{src.path}: build takes an ONNX model, got {src.format.value}; export it first"
        )
    engine = target.build(src, BuildConfig(options), out)
    carried = carry_preprocessing(Path(src.path).parent, out)
    # what ships: the carried files too; the engine describes itself like the model it runs
    engine = replace(
        engine, sha256=sha256_path(out), info=info_with_carried(src.info, carried, out)
    )
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return StageResult(
        engine,
        {"target": cfg.target, "size_bytes": size, "carried": carried},
        summary=f"{cfg.target} engine, {size / 1e6:.2f} MB",
    )


STAGE = Stage(
    "build",
    BuildStage,
    run,
    command="edgesmith.toolchain.cli.build:command",
    example="edgesmith build build/int8 --target ort-cpu -o build/engine",
)
