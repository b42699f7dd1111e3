"""The validate stage: candidate vs reference on real data, task metrics, reports, the gate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from edgesmith.calibration.sources import TEXT_SUFFIXES, Preprocess, load_dataset
from edgesmith.toolchain.core.artifact import Format, ModelArtifact
from edgesmith.toolchain.core.files import sha256_path
from edgesmith.toolchain.core.recipe import Gated
from edgesmith.toolchain.core.stage import Inputs, Stage, StageResult, Workdir
from edgesmith.toolchain.core.timing import latency, size_bytes
from edgesmith.toolchain.evaluate.gate import Evaluator
from edgesmith.toolchain.evaluate.metrics import check_metric_names
from edgesmith.toolchain.models.runners import runner_for
from edgesmith.toolchain.models.source import find_tokenizer
from edgesmith.toolchain.validate.report import ValidateReport, write_reports


class ValidateStage(Gated):
    kind: Literal["validate"] = "validate"
    data: str
    reference: str = "source"  # "source" (the recipe's model), or a model path or factory
    reference_weights: str | None = None  # safetensors, when the reference is a factory
    tokenizer: str | None = None  # for text data: a folder with a tokenizer
    seq_len: int = Field(default=128, ge=1)
    batch_size: int = Field(default=32, ge=1)
    limit: int | None = Field(default=None, ge=1)
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ("data", "tokenizer")
    MODEL_FIELDS: ClassVar[dict[str, str | None]] = {"reference": "reference_weights"}


LATENCY_WARMUP, LATENCY_ITERATIONS = 5, 30


def _describe(art: ModelArtifact, runner, feeds) -> dict:
    return {
        "path": str(art.path),
        "format": art.format.value,
        "sha256": art.sha256,
        "size_bytes": size_bytes(art),
        "latency_ms": latency(runner, feeds, LATENCY_WARMUP, LATENCY_ITERATIONS),
    }


def _declared_like(ref: ModelArtifact, candidate: ModelArtifact) -> ModelArtifact:
    """A factory reference given without input declarations takes the candidate's when the
    candidate was made from the same factory (its manifest records the inputs the export
    was given, and the output names)."""
    info, c = ref.info, candidate.info
    if ref.format is not Format.torch or not info.factory or info.inputs:
        return ref
    if c.factory != info.factory or not c.inputs:
        return ref
    same = info.inherit(inputs=c.inputs, dynamic=c.dynamic, outputs=info.outputs or c.outputs)
    return replace(ref, info=same)


def run(inputs: Inputs, cfg: ValidateStage, work: Workdir) -> StageResult:
    check_metric_names(cfg.metrics)
    src, ref_art = inputs.model, _declared_like(inputs["reference"], inputs.model)
    if ref_art.sha256 == src.sha256 and ref_art.format == src.format:
        work.log("note: the candidate is the reference itself; every drop will be 0")
    text = Path(cfg.data).suffix in TEXT_SUFFIXES
    tokenizer = find_tokenizer(cfg.tokenizer, src, ref_art) if text else None
    candidate = runner_for(src)
    data = load_dataset(Path(cfg.data), candidate.io, Preprocess(tokenizer, cfg.seq_len), cfg.limit)
    reference = runner_for(ref_art)
    evaluator = Evaluator(reference, data, cfg, cfg.batch_size)
    gate = evaluator.gate(candidate)
    one = {k: v[:1] for k, v in data.feeds.items()}
    report = ValidateReport(
        candidate=_describe(src, candidate, one),
        reference=_describe(ref_art, reference, one),
        data={
            "path": cfg.data,
            "sha256": sha256_path(Path(cfg.data)),
            "samples": len(data),
            "labels": data.labels is not None,
        },
        gated_metrics=evaluator.metrics,
        passed=gate.passed,
        verdict=gate.verdict(),
        checks=[c.to_dict() for c in gate.checks],
    )
    written = write_reports(work.out, gate, report)
    return StageResult(None, written, passed=gate.passed, summary=gate.verdict())


STAGE = Stage(
    "validate",
    ValidateStage,
    run,
    command="edgesmith.toolchain.cli.validate:command",
    example="edgesmith validate build/engine --reference mypkg.net:make "
    "--reference-weights net.safetensors --data test.npz -o build/report",
)
