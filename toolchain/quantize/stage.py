"""The quantize stage: fp32 ONNX → int8 QDQ ONNX, calibrated on real data, with an accuracy loop.

1. Data first: calibration samples (drawn with a seed) and evaluation data are loaded and
   checked (names, dtypes, NaN/Inf, counts) before anything is quantized.
2. Outlier channels split off, the rest smoothed, then the ranges (quantize/calibrate.py,
   cached in the run's cache directory).
3. onnxruntime's QDQ quantizer with the preset (per target / instruction set) and our ranges.
4. With eval data: the gate. If it fails, each quantized node's sensitivity is measured and the
   most sensitive go back to float one at a time until it passes (quantize/loop.py; exit 1 if
   none does).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, Field, model_validator

from edgesmith.toolchain.core.artifact import Format, ModelArtifact, Precision
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.recipe import Gated
from edgesmith.toolchain.core.registry import get_target
from edgesmith.toolchain.core.stage import Inputs, Stage, StageResult, Workdir
from edgesmith.toolchain.quantize.job import Job

if TYPE_CHECKING:  # onnx only when a stage runs: `edgesmith --help` imports this module
    from edgesmith.toolchain.quantize.plan import Plan

MODEL_FILE = "model.onnx"


class QuantizeStage(Gated):
    """Calibrated int8 QDQ (or dynamic) quantization, with an optional accuracy loop
    (toolchain/quantize/stage.py)."""

    kind: Literal["quantize"] = "quantize"
    method: Literal["minmax", "percentile", "entropy", "dynamic"] = "minmax"
    calibration: str | None = None  # data: .npz, .npy folder, image folder, text (+ tokenizer)
    # how many calibration samples, drawn with `seed` (default: all); the one name every stage
    # gives its sample cap ("samples" is still read)
    limit: int | None = Field(
        default=None, ge=1, validation_alias=AliasChoices("limit", "samples")
    )
    seed: int = 0
    percentile: float = Field(default=99.999, gt=50, le=100)
    target: str = "ort-cpu"
    preset: str | None = None  # default: the target's, for ort-cpu by this CPU's instruction set
    op_types: list[str] = []  # override the preset's quantized op types
    exclude: list[str] = []  # node-name patterns (fnmatch) that stay in float
    outlier_ratio: float | None = Field(default=None, ge=0)  # None: the preset's; 0: off
    smooth_alpha: float | None = Field(default=None, ge=0, le=1)  # None: the preset's; 0: off
    tokenizer: str | None = None  # for text data; default: the model's folder
    seq_len: int = Field(default=128, ge=1)
    image: dict[str, Any] = {}  # image-folder preprocessing (calibration/images.py)
    # data for the accuracy loop (never the calibration data); "eval" is still read
    eval_data: str | None = Field(default=None, validation_alias=AliasChoices("eval_data", "eval"))
    eval_limit: int | None = Field(default=None, ge=1)
    sensitivity_samples: int = Field(default=64, ge=1)  # eval samples for the per-node ranking
    max_fallback: int | None = Field(default=None, ge=0)  # nodes put back to float at most
    batch_size: int = Field(default=16, ge=1)
    threads: int | None = Field(default=None, ge=1)
    cache_dir: str | None = None  # calibration cache; default: the run's (.edgesmith/cache)
    gather_int8: bool | None = None  # int8 embedding tables; None: the preset's
    # The int8 engine must not be slower than fp32 at these batch sizes on this machine
    # (quantize/latency.py); None: 1 and 8 for ort-cpu, off for targets we cannot time here.
    latency_batches: list[Annotated[int, Field(ge=1)]] | None = None
    latency_rounds: int = Field(default=30, ge=3)
    # text: the sequence lengths timed; None: the data's median length and its padded length
    latency_seqs: list[Annotated[int, Field(ge=1)]] | None = None
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ("calibration", "tokenizer", "eval_data")

    @model_validator(mode="after")
    def _needs_data(self) -> QuantizeStage:
        if self.method != "dynamic" and not self.calibration:
            raise ValueError(
                f"method '{self.method}' needs calibration data (or use method = \"dynamic\")"
            )
        return self


def _preset(cfg: QuantizeStage):
    from edgesmith.toolchain.quantize.presets import resolve_preset

    preset = resolve_preset(cfg.target, cfg.preset)
    if cfg.outlier_ratio is not None:
        preset = replace(preset, outlier_ratio=cfg.outlier_ratio or None)
    if cfg.smooth_alpha is not None:
        preset = replace(preset, smooth_alpha=cfg.smooth_alpha or None)
    if cfg.gather_int8 is not None:
        preset = replace(preset, gather_int8=cfg.gather_int8)
    return preset


def latency_batches(cfg: QuantizeStage) -> list[int]:
    if cfg.latency_batches is not None:
        return cfg.latency_batches
    return [1, 8] if cfg.target == "ort-cpu" else []


def cache_context(cfg: QuantizeStage) -> dict:
    """What changes the output but is not in the config: the preset this machine resolves to."""
    return {"preset": _preset(cfg).describe()}


def _install(model_path: Path, out: Path) -> Path:
    """Move a model (and its external data file, if any) into `out` as model.onnx."""
    from edgesmith.toolchain.quantize import qdq

    dest = out / MODEL_FILE
    if list(model_path.parent.glob(model_path.name + ".data")):
        # the data file's name is recorded inside the model: keep them in step
        import onnx

        qdq.save_model(onnx.load(str(model_path)), dest)
    else:
        shutil.move(str(model_path), dest)
    return dest


@dataclass
class QuantizeReport:
    """report.json: what was quantized, how, the gate and the fallback, the latency check."""

    input: dict[str, Any]
    method: str
    preset: dict[str, Any]
    why: str
    isa: dict[str, Any]
    calibration: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    sensitivity: dict[str, Any] | None = None
    fallback: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    nodes: dict[str, Any] | None = None
    carried: list[str] | None = None
    passed: bool = True
    seconds: float = 0.0
    summary: str = ""
    name: str = "quantize"


@dataclass
class Quantized:
    """The model as it stands after a step: the path, the plan it was quantized with, whether
    it passes the gate, the summary line so far."""

    path: Path
    plan: Plan
    passed: bool = True
    summary: str = ""


def _quantize(job: Job, plan: Plan, data, work: Workdir) -> tuple[Quantized, Any, dict]:
    """The all-int8 model, what calibration prepared (None for dynamic), the calibration's
    record."""
    from edgesmith.calibration.cache import CalibrationCache
    from edgesmith.toolchain.quantize import qdq
    from edgesmith.toolchain.quantize.calibrate import Calibrator

    cfg = job.cfg
    first = job.tmp / "int8" / MODEL_FILE
    first.parent.mkdir()
    if cfg.method == "dynamic":
        qdq.quantize_dynamic_model(job.src.path, first, job.preset, plan)
        info: dict[str, Any] = {"method": "dynamic", "note": "ranges computed per call"}
        if cfg.calibration:
            job.log("note: --method dynamic computes ranges per call; --calibration is unused")
            info["unused_data"] = cfg.calibration
        return Quantized(first, plan), None, info
    cache = CalibrationCache(Path(cfg.cache_dir) if cfg.cache_dir else work.cache)
    prepared = Calibrator(job, data, cache).prepare(plan, job.tmp)
    qdq.quantize_static_qdq(prepared.path, first, prepared.ranges, job.preset, prepared.plan)
    return Quantized(first, prepared.plan), prepared, prepared.info


def _nodes(qproto, plan: Plan) -> dict[str, Any]:
    from edgesmith.toolchain.quantize import qdq
    from edgesmith.toolchain.quantize.gather import int8_tables, quantized_gathers

    quantized = qdq.quantized_nodes(qproto)
    return {
        "quantized": len(quantized),
        "float": dict(plan.excluded.items()),
        "quantized_names": quantized,
        "int8_gathers": quantized_gathers(qproto),
        "int8_tables": int8_tables(qproto),
    }


@dataclass
class LatencyStep:
    """What the latency check did: the model after it, its record, and the gate again when
    the check changed the model (None otherwise)."""

    model: Quantized
    record: dict[str, Any]
    gate_again: dict[str, Any] | None = None


def _latency(job: Job, current: Quantized, prepared, data, loop) -> LatencyStep:
    """Nodes back to float where int8 makes the engine slower (quantize/latency.py); the
    source model itself if int8 never pays here. A model the check changed is gated again."""
    import onnx

    from edgesmith.toolchain.quantize import qdq
    from edgesmith.toolchain.quantize.latency import (
        Candidates,
        EngineTimer,
        feeds_from,
        latency_fallback,
        shape_label,
    )

    src, cfg, preset, reason = job.src, job.cfg, job.preset, "latency: int8 slower than float here"
    if data is None:
        verdict = "not checked: no data to time it on (give --calibration or --eval-data)"
        job.log(f"latency: {verdict}")
        return LatencyStep(current, {"verdict": verdict})
    base = prepared.path if prepared else Path(src.path)
    proto = onnx.load(str(base), load_external_data=False)
    nodes = current.plan.quantized(proto)  # the accuracy loop's float nodes are in the plan
    (job.tmp / "latency").mkdir()
    made = itertools.count()

    def make(floats: list[str]) -> Path:
        p = current.plan.with_float(floats, reason)
        path = job.tmp / "latency" / f"{next(made)}-{MODEL_FILE}"
        if prepared:
            return qdq.quantize_static_qdq(prepared.path, path, prepared.ranges, preset, p)
        return qdq.quantize_dynamic_model(src.path, path, preset, p)

    batches = latency_batches(cfg)
    feeds = feeds_from(data, batches, cfg.latency_seqs)
    timer = EngineTimer(Path(src.path), feeds, cfg.latency_rounds,
                        cfg.threads, job.tmp / "latency")  # fmt: skip
    shapes = ", ".join(shape_label(k) for k in feeds)
    job.log(f"latency: int8 against fp32 engines at {shapes}")
    path, check = latency_fallback(current.path, Candidates(proto, nodes, make), timer, job.log)
    check.isa = preset.isa
    job.log(f"latency: {check.verdict}")
    plan, summary = current.plan.with_float(check.float_nodes, reason), current.summary
    fp32 = path is None
    if fp32:  # int8 never paid: the source model, as it is
        path = qdq.save_model(onnx.load(str(src.path)), job.tmp / "latency" / f"fp32-{MODEL_FILE}")
        plan, summary = plan.with_float(nodes, "latency"), check.verdict
    if path == current.path or loop is None:
        return LatencyStep(Quantized(path, plan, True, summary), check.to_dict())
    passed, verdict, checks = loop.check(path)  # more float than the gate saw: gate it again
    summary = summary if fp32 else f"after the latency check {verdict}"
    again = {"passed": passed, "checks": checks}
    return LatencyStep(Quantized(path, plan, passed, summary), check.to_dict(), again)


def _steps(job: Job, work: Workdir, proto, calib, evals) -> tuple[QuantizeReport, Quantized]:
    """Quantize, gate and fall back, check the latency: the report so far and the result."""
    from edgesmith.toolchain.quantize.loop import AccuracyLoop
    from edgesmith.toolchain.quantize.plan import make_plan

    cfg, preset = job.cfg, job.preset  # proto: the source, checked once by run()
    plan = make_plan(proto, preset, cfg.op_types or None, cfg.exclude)
    report = QuantizeReport(
        input={"path": str(job.src.path), "sha256": job.src.sha256},
        method=cfg.method,
        preset=preset.describe(),
        why=preset.why,
        isa=preset.isa,
    )
    current, prepared, report.calibration = _quantize(job, plan, calib, work)
    loop = AccuracyLoop(job, evals) if evals else None
    if loop is not None:
        outcome = loop.run(current.path, prepared, work.out)
        current = Quantized(outcome.path, current.plan, outcome.passed, outcome.summary)
        if outcome.fallback and "float_nodes" in outcome.fallback:
            current.plan = current.plan.with_float(outcome.fallback["float_nodes"], "fallback")
        report.gate, report.sensitivity = outcome.gate, outcome.sensitivity
        report.fallback = outcome.fallback
    if current.passed and latency_batches(cfg):
        step = _latency(job, current, prepared, calib or evals, loop)
        current, report.latency = step.model, step.record
        if step.gate_again is not None and report.gate is not None:
            report.gate["after_latency"] = step.gate_again
    return report, current


def run(inputs: Inputs, cfg: QuantizeStage, work: Workdir) -> StageResult:
    from edgesmith.toolchain.core.artifact import info_with_carried
    from edgesmith.toolchain.core.files import carry_preprocessing
    from edgesmith.toolchain.core.onnx_model import check_onnx, io_from_onnx, onnx_digest
    from edgesmith.toolchain.core.report import report_json, write_report
    from edgesmith.toolchain.evaluate.metrics import check_metric_names
    from edgesmith.toolchain.models.source import find_tokenizer
    from edgesmith.toolchain.quantize.calibrate import calibration_data, load_checked

    src, out = inputs.model, work.out
    if src.format is not Format.onnx:
        raise InvalidInput(
            f"{src.path}: quantize takes an fp32 ONNX model, got {src.format.value}; "
            "export it first (edgesmith export, or an export stage before quantize)"
        )
    start = time.perf_counter()
    io = io_from_onnx(proto := check_onnx(src.path))
    tok = find_tokenizer(cfg.tokenizer, src)
    # every input is checked before any quantization work
    calib = calibration_data(cfg, io, tok) if cfg.method != "dynamic" else None
    evals = load_checked("eval_data", io, cfg, tok) if cfg.eval_data else None
    if evals is not None:
        check_metric_names(cfg.metrics)
    preset = _preset(cfg)
    job = Job(src, cfg, preset, Path(tempfile.mkdtemp(prefix=".work-", dir=out)), work.log)
    try:
        report, result = _steps(job, work, proto, calib, evals)
        model_path = _install(result.path, out)
        report.carried = carry_preprocessing(Path(src.path).parent, out)
    finally:
        shutil.rmtree(job.tmp, ignore_errors=True)
    qproto = check_onnx(model_path)
    check = getattr(get_target(cfg.target), "check_quantized", None)
    if check is not None:  # the target's own rules for the Q/DQ it takes
        check(model_path)
    report.nodes = _nodes(qproto, result.plan)
    quantized = report.nodes["quantized_names"]
    report.passed = result.passed
    report.seconds = round(time.perf_counter() - start, 2)
    made = f"{len(quantized)} nodes in int8 ({preset.name}, {cfg.method})"
    report.summary = result.summary or made
    write_report(out, report)
    float_nodes = [*(report.fallback or {}).get("float_nodes", []),
                   *(report.latency or {}).get("float_nodes", [])]  # fmt: skip
    art = ModelArtifact(
        model_path,
        Format.onnx,
        precision=_precision(quantized, float_nodes),
        io=io_from_onnx(qproto),
        sha256=onnx_digest(model_path, qproto),
        parent=src.sha256,
        info=info_with_carried(src.info, report.carried, out),
        meta={"preset": preset.name, "method": cfg.method, "target": cfg.target},
    )
    keys = ("method", "preset", "why", "isa", "calibration", "gate", "fallback", "nodes")
    metrics = {k: v for k, v in report_json(report).items() if k in keys}
    return StageResult(art, metrics, passed=result.passed, summary=report.summary)


def _precision(quantized: list[str], float_nodes) -> Precision:
    if not quantized:
        return Precision.fp32  # the latency check found int8 slower everywhere
    return Precision.mixed if float_nodes else Precision.int8


STAGE = Stage(
    "quantize",
    QuantizeStage,
    run,
    command="edgesmith.toolchain.cli.quantize:command",
    cache_context=cache_context,
    example="edgesmith quantize build/onnx -o build/int8 --calibration calib.npz "
    "--eval-data test.npz --max-drop 0.005",
)
