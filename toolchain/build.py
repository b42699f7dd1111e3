"""The build stage: an ONNX model → an engine directory for one target."""

from __future__ import annotations

from pathlib import Path

from targets.base import BuildConfig
from toolchain.core.artifact import Format, ModelArtifact
from toolchain.core.errors import InvalidInput, TargetUnavailable
from toolchain.core.recipe import BuildStage
from toolchain.core.registry import get_target


def run(ctx, src: ModelArtifact, cfg: BuildStage, out: Path):
    from toolchain.pipeline import StageResult

    target = get_target(cfg.target)
    why = target.unavailable_reason()
    if why:
        raise TargetUnavailable(f"target '{cfg.target}' cannot build on this machine: {why}")
    if src.format is not Format.onnx:
        raise InvalidInput(
            f"{src.path}: build takes an ONNX model, got {src.format.value}; export it first"
        )
    engine = target.build(src, BuildConfig(dict(cfg.options)), out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return StageResult(
        engine,
        {"target": cfg.target, "size_bytes": size},
        summary=f"{cfg.target} engine, {size / 1e6:.2f} MB",
    )
