"""The validate stage: candidate vs reference on real data, task metrics, reports, the gate."""

from __future__ import annotations

from pathlib import Path

from calibration.sources import TEXT_SUFFIXES, load_dataset
from toolchain.bench import latency, size_bytes
from toolchain.core.artifact import Format, ModelArtifact
from toolchain.core.files import sha256_path
from toolchain.core.recipe import ValidateStage
from toolchain.export.source import SourceSpec, resolve_source
from toolchain.runners import runner_for
from toolchain.validate.compare import run_both
from toolchain.validate.gate import default_metrics, evaluate
from toolchain.validate.metrics import check_metric_names
from toolchain.validate.report import write_reports

LATENCY_WARMUP, LATENCY_ITERATIONS = 5, 30


def _reference(ctx, cfg: ValidateStage) -> tuple[ModelArtifact, SourceSpec]:
    if cfg.reference == "source":
        return ctx.source_artifact, ctx.source
    spec = SourceSpec(model=cfg.reference, weights=cfg.reference_weights)
    return resolve_source(spec), spec


def _tokenizer(
    ctx, cfg: ValidateStage, candidate: ModelArtifact, ref: ModelArtifact
) -> Path | None:
    """--tokenizer, else the first of candidate, source and reference that carries one."""
    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    for p in (Path(candidate.path), Path(ctx.source.model), Path(ref.path)):
        folder = p if p.is_dir() else p.parent
        if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
            return folder
    return None


def _describe(art: ModelArtifact, runner, feeds) -> dict:
    return {
        "path": str(art.path),
        "format": art.format.value,
        "sha256": art.sha256,
        "size_bytes": size_bytes(art),
        "latency_ms": latency(runner, feeds, LATENCY_WARMUP, LATENCY_ITERATIONS),
    }


def run(ctx, src: ModelArtifact, cfg: ValidateStage, out: Path):
    from toolchain.pipeline import StageResult

    check_metric_names(cfg.metrics)
    ref_art, ref_spec = _reference(ctx, cfg)
    if ref_art.sha256 == src.sha256 and ref_art.format == src.format:
        ctx.log("note: the candidate is the reference itself; every drop will be 0")
    tokenizer = (
        _tokenizer(ctx, cfg, src, ref_art) if Path(cfg.data).suffix in TEXT_SUFFIXES else None
    )
    candidate = runner_for(src, ctx.source if src.format in (Format.torch, Format.hf) else None)
    data = load_dataset(
        Path(cfg.data), candidate.io, tokenizer=tokenizer, seq_len=cfg.seq_len, limit=cfg.limit
    )
    reference = runner_for(ref_art, ref_spec)
    outputs = run_both(reference, candidate, data, cfg.batch_size)
    metrics = cfg.metrics or default_metrics(data.labels is not None)
    gate = evaluate(outputs, metrics, {m: cfg.budget(m) for m in metrics}, cfg.output)
    one = {k: v[:1] for k, v in data.feeds.items()}
    report = write_reports(
        out,
        gate,
        {
            "name": "validate",
            "candidate": _describe(src, candidate, one),
            "reference": _describe(ref_art, reference, one),
            "data": {
                "path": cfg.data,
                "sha256": sha256_path(Path(cfg.data)),
                "samples": len(data),
                "labels": data.labels is not None,
            },
            "gated_metrics": metrics,
        },
    )
    return StageResult(None, report, passed=gate.passed, summary=gate.verdict())
