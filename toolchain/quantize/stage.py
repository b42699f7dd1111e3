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
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from toolchain.core.artifact import Format, ModelArtifact, Precision
from toolchain.core.errors import InvalidInput
from toolchain.core.recipe import Gated
from toolchain.core.registry import get_target
from toolchain.core.stage import Inputs, Stage, StageResult, Workdir

MODEL_FILE = "model.onnx"
REPORT = "report.json"


class QuantizeStage(Gated):
    """Calibrated int8 QDQ (or dynamic) quantization, with an optional accuracy loop
    (toolchain/quantize/stage.py)."""

    kind: Literal["quantize"] = "quantize"
    method: Literal["minmax", "percentile", "entropy", "dynamic"] = "minmax"
    calibration: str | None = None  # data: .npz, .npy folder, image folder, text (+ tokenizer)
    samples: int | None = Field(default=None, ge=1)  # drawn with `seed`; default: all of them
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
    eval: str | None = None  # data for the accuracy loop (never the calibration data)
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
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ("calibration", "tokenizer", "eval")

    @model_validator(mode="after")
    def _needs_data(self) -> QuantizeStage:
        if self.method != "dynamic" and not self.calibration:
            raise ValueError(
                f"method '{self.method}' needs calibration data (or use method = \"dynamic\")"
            )
        return self


def _preset(cfg: QuantizeStage):
    from toolchain.quantize.presets import resolve_preset

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
    from toolchain.quantize import qdq

    dest = out / MODEL_FILE
    if list(model_path.parent.glob(model_path.name + ".data")):
        # the data file's name is recorded inside the model: keep them in step
        import onnx

        qdq.save_model(onnx.load(str(model_path)), dest)
    else:
        shutil.move(str(model_path), dest)
    return dest


def _quantize(src, cfg, preset, plan, data, work: Workdir, tmp: Path, report: dict):
    """The all-int8 model, and what calibration prepared (None for dynamic)."""
    from calibration.cache import CalibrationCache
    from toolchain.quantize import qdq
    from toolchain.quantize.calibrate import Calibrator

    first = tmp / "int8" / MODEL_FILE
    first.parent.mkdir()
    if cfg.method == "dynamic":
        qdq.quantize_dynamic_model(src.path, first, preset, plan)
        report["calibration"] = {"method": "dynamic", "note": "ranges computed per call"}
        if cfg.calibration:
            work.log("note: --method dynamic computes ranges per call; --calibration is unused")
            report["calibration"]["unused_data"] = cfg.calibration
        return first, None
    cache = CalibrationCache(Path(cfg.cache_dir) if cfg.cache_dir else work.cache)
    prepared = Calibrator(src, data, cfg, preset, cache, work.log).prepare(plan, tmp)
    report["calibration"] = prepared.info
    qdq.quantize_static_qdq(prepared.path, first, prepared.ranges, preset, prepared.plan)
    return first, prepared


def _report_nodes(report: dict, qproto, plan) -> list[str]:
    from toolchain.quantize import qdq
    from toolchain.quantize.gather import int8_tables, quantized_gathers

    quantized = qdq.quantized_nodes(qproto)
    report["nodes"] = {
        "quantized": len(quantized),
        "float": dict(plan.excluded.items()),
        "quantized_names": quantized,
        "int8_gathers": quantized_gathers(qproto),
        "int8_tables": int8_tables(qproto),
    }
    return quantized


def _latency(src, final, summary, cfg, preset, plan, prepared, data, loop, tmp: Path, work,
             report):  # fmt: skip
    """Nodes back to float where int8 makes the engine slower (quantize/latency.py); the
    source model itself if int8 never pays here. A model the check changed is gated again.
    Returns (model, plan, passed, summary)."""
    import onnx

    from toolchain.quantize import qdq
    from toolchain.quantize.latency import EngineTimer, feeds_from, latency_fallback

    if data is None:
        report["latency"] = {"verdict": "not checked: no data to time it on (give "
                             "--calibration or --eval)"}  # fmt: skip
        work.log(f"latency: {report['latency']['verdict']}")
        return final, plan, True, summary
    base = prepared.path if prepared else Path(src.path)
    proto = onnx.load(str(base), load_external_data=False)
    already = report.get("fallback", {}).get("float_nodes", [])
    nodes = [n for n in plan.quantized(proto) if n not in already]
    (tmp / "latency").mkdir()
    made = itertools.count()

    def make(floats: list[str]) -> Path:
        p = plan.with_float([*already, *floats], "latency: int8 slower than float here")
        path = tmp / "latency" / f"{next(made)}-{MODEL_FILE}"
        if prepared:
            return qdq.quantize_static_qdq(prepared.path, path, prepared.ranges, preset, p)
        return qdq.quantize_dynamic_model(src.path, path, preset, p)

    batches = latency_batches(cfg)
    timer = EngineTimer(Path(src.path), feeds_from(data, batches), cfg.latency_rounds,
                        cfg.threads, tmp / "latency")  # fmt: skip
    work.log(f"latency: int8 against fp32 engines at batch {', '.join(map(str, batches))}")
    path, floated, lat = latency_fallback(final, make, nodes, proto, timer, work.log)
    report["latency"] = {**lat, "isa": preset.isa}
    work.log(f"latency: {lat['verdict']}")
    plan = plan.with_float(floated, "latency: int8 slower than float here")
    fp32 = path is None
    if fp32:  # int8 never paid: the source model, as it is
        path = qdq.save_model(onnx.load(str(src.path)), tmp / "latency" / f"fp32-{MODEL_FILE}")
        plan, summary = plan.with_float(nodes, "latency"), lat["verdict"]
    passed = True
    if path != final and loop is not None:  # more float than the gate saw: gate it again
        passed, verdict, checks = loop.check(path)
        report["gate"]["after_latency"] = {"passed": passed, "checks": checks}
        summary = summary if fp32 else f"after the latency check {verdict}"
    return path, plan, passed, summary


def run(inputs: Inputs, cfg: QuantizeStage, work: Workdir) -> StageResult:
    from toolchain.core.artifact import info_with_carried
    from toolchain.core.files import carry_preprocessing, write_json
    from toolchain.core.onnx_model import check_onnx, io_from_onnx, onnx_digest
    from toolchain.evaluate.metrics import check_metric_names
    from toolchain.models.source import find_tokenizer
    from toolchain.quantize.calibrate import calibration_data, load_checked
    from toolchain.quantize.loop import AccuracyLoop
    from toolchain.quantize.plan import make_plan

    src, out = inputs.model, work.out
    if src.format is not Format.onnx:
        raise InvalidInput(
            f"{src.path}: quantize takes an fp32 ONNX model, got {src.format.value}; "
            "export it first (edgesmith export, or an export stage before quantize)"
        )
    start = time.perf_counter()
    io = io_from_onnx(proto := check_onnx(src.path))
    preset = _preset(cfg)
    plan = make_plan(proto, preset, cfg.op_types or None, cfg.exclude)
    tok = find_tokenizer(cfg.tokenizer, src)
    # every input is checked before any quantization work
    calib = calibration_data(cfg, io, tok) if cfg.method != "dynamic" else None
    evals = load_checked(cfg.eval, "eval data", io, cfg, tok, cfg.eval_limit) if cfg.eval else None
    if evals is not None:
        check_metric_names(cfg.metrics)
    report: dict[str, Any] = {
        "name": "quantize",
        "input": {"path": str(src.path), "sha256": src.sha256},
        "method": cfg.method,
        "preset": preset.describe(),
        "why": preset.why,
        "isa": preset.isa,
    }
    tmp = Path(tempfile.mkdtemp(prefix=".work-", dir=out))
    try:
        first, prepared = _quantize(src, cfg, preset, plan, calib, work, tmp, report)
        plan = prepared.plan if prepared else plan
        final, passed, summary = first, True, ""
        loop = AccuracyLoop(src.path, evals, cfg, preset, tmp, work.log) if evals else None
        if loop is not None:
            outcome = loop.run(first, prepared, report, out)
            final, passed, summary = outcome.path, outcome.passed, outcome.summary
        if passed and latency_batches(cfg):
            final, plan, passed, summary = _latency(
                src, final, summary, cfg, preset, plan, prepared, calib or evals, loop, tmp,
                work, report,
            )  # fmt: skip
        model_path = _install(final, out)
        report["carried"] = carry_preprocessing(Path(src.path).parent, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    qproto = check_onnx(model_path)
    check = getattr(get_target(cfg.target), "check_quantized", None)
    if check is not None:  # the target's own rules for the Q/DQ it takes
        check(model_path)
    quantized = _report_nodes(report, qproto, plan)
    float_nodes = [  # a new list: the report's own lists stay as they were
        *report.get("fallback", {}).get("float_nodes", []),
        *report.get("latency", {}).get("float_nodes", []),
    ]
    report["passed"] = passed
    report["seconds"] = round(time.perf_counter() - start, 2)
    summary = summary or f"{len(quantized)} nodes in int8 ({preset.name}, {cfg.method})"
    report["summary"] = summary
    write_json(out / REPORT, report)
    art = ModelArtifact(
        model_path,
        Format.onnx,
        precision=_precision(quantized, float_nodes),
        io=io_from_onnx(qproto),
        sha256=onnx_digest(model_path, qproto),
        parent=src.sha256,
        info=info_with_carried(src.info, report["carried"], out),
        meta={"preset": preset.name, "method": cfg.method, "target": cfg.target},
    )
    keys = ("method", "preset", "why", "isa", "calibration", "gate", "fallback", "nodes")
    metrics = {k: report[k] for k in keys if k in report}
    return StageResult(art, metrics, passed=passed, summary=summary)


def _precision(quantized: list[str], float_nodes) -> Precision:
    if not quantized:
        return Precision.fp32  # the latency check found int8 slower everywhere
    return Precision.mixed if float_nodes else Precision.int8


STAGE = Stage(
    "quantize",
    QuantizeStage,
    run,
    command="toolchain.cli.quantize:command",
    cache_context=cache_context,
)
