"""run(recipe) → RunReport: the recipe's stages in order, each cached by content hash.

A stage's output directory holds a manifest.json whose cache_key is the hash of (what went
in, the stage's config, the files it reads, edgesmith's version). When a rerun finds the same
key there, the stage is skipped and says so; otherwise the directory is rebuilt atomically.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from toolchain.core.artifact import (
    ModelArtifact,
    artifact_from_manifest,
    read_manifest,
    write_manifest,
)
from toolchain.core.errors import GateFailed
from toolchain.core.files import atomic_dir, check_output_not_input, sha256_json, sha256_path
from toolchain.core.recipe import Recipe, StageConfig
from toolchain.core.registry import load_object
from toolchain.export.source import SourceSpec, resolve_source, with_spec_digest
from toolchain.progress import log

# kind → "module:function"; each function is run(ctx, src, cfg, out) -> StageResult.
STAGE_RUNNERS: dict[str, str] = {
    "distill": "toolchain.distill.stage:run",
    "export": "toolchain.export.stage:run",
    "quantize": "toolchain.quantize.stage:run",
    "build": "toolchain.build:run",
    "validate": "toolchain.validate.stage:run",
    "bench": "toolchain.bench:run_stage",
}


@dataclass
class StageResult:
    """What a stage made. `artifact` None: the stage passes its input on (validate, bench)."""

    artifact: ModelArtifact | None
    metrics: dict[str, Any] = field(default_factory=dict)
    passed: bool = True
    summary: str = ""  # one line for the run log, e.g. the gate verdict


@dataclass
class StageContext:
    recipe: Recipe
    source: SourceSpec
    source_artifact: ModelArtifact
    log: Callable[[str], None] = log


@dataclass
class StageRecord:
    kind: str
    out: Path
    cached: bool
    seconds: float
    metrics: dict[str, Any]
    passed: bool
    summary: str


@dataclass
class RunReport:
    stages: list[StageRecord]
    final: ModelArtifact


def source_spec(recipe: Recipe) -> SourceSpec:
    s = recipe.source
    return SourceSpec(
        model=s.model,
        weights=s.weights,
        inputs=tuple(s.inputs),
        dynamic=tuple(s.dynamic),
        outputs=tuple(s.outputs),
        task=s.task,
    )


def source_artifact(spec: SourceSpec) -> ModelArtifact:
    """The recipe's source as the first stage's cache key sees it (flags included)."""
    return with_spec_digest(resolve_source(spec), spec)


def _files_digest(cfg: StageConfig) -> dict[str, str]:
    out = {}
    for name in cfg.FILE_FIELDS:
        value = getattr(cfg, name, None)
        if isinstance(value, str) and Path(value).exists():
            out[name] = sha256_path(Path(value))
    return out


def _stage_context(cfg: StageConfig) -> dict[str, Any]:
    """A stage module's `cache_context(cfg)`: what changes its output beyond the config
    (quantize: the preset resolved from this CPU), so a cache never crosses machines wrongly."""
    module = importlib.import_module(STAGE_RUNNERS[cfg.kind].partition(":")[0])
    context = getattr(module, "cache_context", None)
    return context(cfg) if context else {}


def cache_key(src: ModelArtifact, cfg: StageConfig) -> str:
    return sha256_json(
        {
            "input": src.sha256,
            "config": cfg.model_dump(exclude={"out"}),
            "files": _files_digest(cfg),
            "context": _stage_context(cfg),
            "edgesmith": metadata.version("edgesmith"),
        }
    )


def stage_dir(recipe: Recipe, index: int, cfg: StageConfig) -> Path:
    return Path(cfg.out) if cfg.out else Path(recipe.out) / f"{index}-{cfg.kind}"


def run(recipe: Recipe, *, emit: Callable[[str], None] = log) -> RunReport:
    """Run every stage; raises GateFailed (exit 1) after the last stage when a gate failed."""
    spec = source_spec(recipe)
    src = source_artifact(spec)
    ctx = StageContext(recipe, spec, src, emit)
    inputs = [Path(p) for p in (spec.model, spec.weights) if p and Path(p).exists()]
    current, records = src, []
    for i, cfg in enumerate(recipe.stages):
        out = stage_dir(recipe, i, cfg)
        check_output_not_input(
            out,
            *inputs,
            *[
                Path(getattr(cfg, f))
                for f in cfg.FILE_FIELDS
                if isinstance(getattr(cfg, f, None), str)
            ],
        )
        key = cache_key(current, cfg)
        manifest = read_manifest(out) if out.is_dir() else None
        start = time.perf_counter()
        if manifest is not None and manifest.get("cache_key") == key:
            metrics = manifest.get("metrics", {})
            passed = manifest.get("passed", True)
            summary = manifest.get("summary", "")
            if manifest.get("artifact"):
                current = artifact_from_manifest(out, manifest)
            emit(f"[{i}] {cfg.kind}: cached, nothing to do ({out})")
            cached = True
        else:
            emit(f"[{i}] {cfg.kind}: running → {out}")
            runner = load_object(STAGE_RUNNERS[cfg.kind])
            with atomic_dir(out) as tmp:
                result = runner(ctx, current, cfg, tmp)
                made = result.artifact
                write_manifest(
                    tmp,
                    made,
                    stage=cfg.kind,
                    config=cfg.model_dump(),
                    cache_key=key,
                    metrics=result.metrics,
                    extra={
                        "passed": result.passed,
                        "summary": result.summary,
                        "input": current.sha256,
                        "recipe": recipe.model_dump(),
                    },
                )
            if made is not None:
                current = artifact_from_manifest(out, read_manifest(out))
            metrics, passed, summary, cached = result.metrics, result.passed, result.summary, False
        records.append(
            StageRecord(
                cfg.kind, out, cached, time.perf_counter() - start, metrics, passed, summary
            )
        )
        if summary:
            emit(f"[{i}] {cfg.kind}: {summary}")
        if not passed:  # a failed gate stops the run: nothing after it may ship
            raise GateFailed(f"{cfg.kind} failed: {summary} (report: {out})", out)
    return RunReport(records, current)
