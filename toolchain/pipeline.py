"""run(recipe) → RunReport: the recipe's stages in order, each cached by content hash.

A stage's output directory holds a manifest.json whose cache_key is the hash of (what went
in, the stage's config, the files and models it reads, edgesmith's version). When a rerun
finds the same key there, the stage is skipped and says so; otherwise the directory is
rebuilt atomically. The pipeline owns every directory a stage writes (core/stage.py:
Workdir): the output, and under the run's root `.edgesmith/` the stage's scratch space and
the shared caches.

Under torchrun every process calls run(); the processes other than rank 0 run the leading
distributed stages (distill) in step with rank 0, into directories that are thrown away.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from edgesmith.toolchain.core.artifact import (
    ModelArtifact,
    artifact_from_manifest,
    integrity_problems,
    read_manifest,
    write_manifest,
)
from edgesmith.toolchain.core.errors import GateFailed, InvalidInput
from edgesmith.toolchain.core.files import atomic_dir, check_output_not_input, dir_lock, sha256_json
from edgesmith.toolchain.core.progress import log
from edgesmith.toolchain.core.recipe import Recipe
from edgesmith.toolchain.core.stage import (
    Inputs,
    Stage,
    StageConfig,
    StageResult,
    Workdir,
    get_stage,
    stages,
)
from edgesmith.toolchain.models.source import SourceSpec, resolve_source, with_spec_digest

STATE_DIR = ".edgesmith"  # under the run's root: scratch/<stage output name>, cache/<kind>


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


def model_inputs(cfg: StageConfig, source: ModelArtifact) -> dict[str, ModelArtifact]:
    """The models a stage declares (MODEL_FIELDS), resolved; "source" is the recipe's source."""
    named = {}
    for name, weights_field in cfg.MODEL_FIELDS.items():
        ref = getattr(cfg, name, None)
        if ref is None:
            continue
        if ref == "source":
            named[name] = source
            continue
        weights = getattr(cfg, weights_field, None) if weights_field else None
        named[name] = resolve_source(SourceSpec(model=ref, weights=weights))
    return named


@functools.cache
def code_digest() -> str:
    """sha256 of edgesmith's own source (toolchain/, targets/, calibration/): a cached stage
    made by other code (an upgrade, a fix to a rewrite) is made again, not served."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for package in ("toolchain", "targets", "calibration"):
        for f in sorted((root / package).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def cache_key(stage: Stage, src: ModelArtifact, named: dict[str, ModelArtifact], cfg) -> str:
    return sha256_json(
        {
            "input": src.sha256,
            "config": cfg.model_dump(exclude={"out"}),
            "files": cfg.files_digest(),
            "models": {k: a.sha256 for k, a in sorted(named.items())},
            "context": stage.cache_context(cfg) if stage.cache_context else {},
            "edgesmith": metadata.version("edgesmith"),
            "code": code_digest(),
        }
    )


def stage_dir(recipe: Recipe, index: int, cfg: StageConfig) -> Path:
    return Path(cfg.out) if cfg.out else Path(recipe.out) / f"{index}-{cfg.kind}"


def workdir(out: Path, tmp: Path, kind: str, emit: Callable[[str], None]) -> Workdir:
    """The stage's directories: `tmp` becomes `out`; scratch and cache live under the root
    (`out`'s parent: the recipe's `out`, or where a command's -o points)."""
    state = out.parent / STATE_DIR
    return Workdir(
        out=tmp,
        scratch=state / "scratch" / out.name,
        cache=state / "cache" / kind,
        log=emit,
        rank=distributed_rank()[0],
    )


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _check_outputs(out: Path, cfg: StageConfig, inputs: list[Path], named) -> None:
    files = [Path(getattr(cfg, f)) for f in cfg.FILE_FIELDS if isinstance(getattr(cfg, f), str)]
    models = [Path(a.path) for a in named.values()]
    check_output_not_input(out, *inputs, *files, *models)


def _cached(out: Path, key: str) -> dict[str, Any] | None:
    """The manifest of a stage output made under `key`, if its files are still the ones it
    recorded (an edited output is made again, not reused)."""
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is None or manifest.get("cache_key") != key:
        return None
    return None if integrity_problems(out, manifest) else manifest


@dataclass(frozen=True)
class Step:
    """One stage of a recipe as the pipeline runs it: its config, its output directory and
    its cache key."""

    cfg: StageConfig
    out: Path
    key: str


def _run_stage(
    step: Step, inputs: Inputs, recipe: Recipe, emit
) -> tuple[StageResult, ModelArtifact | None]:
    """Run one stage into a temporary directory that becomes `out` with its manifest."""
    cfg, out = step.cfg, step.out
    stage = get_stage(cfg.kind)
    with atomic_dir(out) as tmp:
        work = workdir(out, tmp, stage.kind, emit)
        result = stage.run(inputs, cfg, work)
        write_manifest(
            tmp,
            result.artifact,
            {
                "stage": cfg.kind,
                "cache_key": step.key,
                "config": cfg.model_dump(),
                "metrics": result.metrics or {},
                "passed": result.passed,
                "summary": result.summary,
                "input": inputs.model.sha256,
                "recipe": recipe.model_dump(),
            },
        )
    shutil.rmtree(work.scratch, ignore_errors=True)  # the output holds the work now
    made = artifact_from_manifest(out, read_manifest(out)) if result.artifact else None
    return result, made


def run(recipe: Recipe, *, emit: Callable[[str], None] = log) -> RunReport:
    """Run every stage; raises GateFailed (exit 1) after the last stage when a gate failed."""
    if distributed_rank()[0] != 0:
        return _run_worker(recipe)
    spec = source_spec(recipe)
    src = source_artifact(spec)
    inputs = [Path(p) for p in (spec.model, spec.weights) if p and Path(p).exists()]
    current, records = src, []
    for i, cfg in enumerate(recipe.stages):
        stage = get_stage(cfg.kind)
        out = stage_dir(recipe, i, cfg)
        named = model_inputs(cfg, src)
        _check_outputs(out, cfg, inputs, named)
        key = cache_key(stage, current, named, cfg)
        start = time.perf_counter()
        # Stages under one root (a recipe's out, or where -o points) run one at a time: a
        # second edgesmith on the same recipe (make -j) waits, then finds the stage cached.
        waiting = f"waiting: another edgesmith is running a stage in {out.parent}"
        with dir_lock(out.parent, functools.partial(emit, waiting)):
            manifest = _cached(out, key)
            if manifest is not None:
                metrics = manifest.get("metrics", {})
                passed = manifest.get("passed", True)
                summary = manifest.get("summary", "")
                if manifest.get("artifact"):
                    current = artifact_from_manifest(out, manifest)
                emit(f"[{i}] {cfg.kind}: cached, nothing to do ({out})")
                cached = True
            else:
                emit(f"[{i}] {cfg.kind}: running → {out}")
                inp = Inputs(current, named)
                result, made = _run_stage(Step(cfg, out, key), inp, recipe, emit)
                current = made or current
                metrics, passed, summary = result.metrics, result.passed, result.summary
                cached = False
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


def _run_worker(recipe: Recipe) -> RunReport:
    """A torchrun process other than rank 0: the recipe's first stage, when it is distributed
    (distill, prune), in step with rank 0 (the same cache check: both skip or both run), into a
    directory thrown away. Later stages read what rank 0 wrote: they are rank 0's alone."""
    cfg = recipe.stages[0]
    stage = get_stage(cfg.kind)
    if not stage.distributed:
        raise InvalidInput(
            f"under torchrun the recipe must start with a stage that trains in step "
            f"({', '.join(k for k, s in stages().items() if s.distributed)}); it starts with "
            f"'{cfg.kind}'"
        )
    src = source_artifact(source_spec(recipe))
    out = stage_dir(recipe, 0, cfg)
    named = model_inputs(cfg, src)
    if _cached(out, cache_key(stage, src, named, cfg)) is None:
        with tempfile.TemporaryDirectory(prefix=".worker-") as tmp:
            work = workdir(out, Path(tmp), stage.kind, lambda _m: None)  # rank 0 reports
            stage.run(Inputs(src, named), cfg, work)
    return RunReport([StageRecord(cfg.kind, out, False, 0.0, {}, True, "")], src)
