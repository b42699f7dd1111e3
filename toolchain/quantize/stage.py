"""The quantize stage: fp32 ONNX → int8 QDQ ONNX, calibrated on real data, with an accuracy loop.

1. Data first: calibration samples (drawn with a seed) and evaluation data are loaded and
   checked (names, dtypes, NaN/Inf, counts) before anything is quantized.
2. Outlier channels: channel maxima of the weighted MatMuls' inputs (one pass, cached); the few
   channels far above the rest are computed in float beside the int8 product (qdq.split_outliers),
   and the others are smoothed into the weights (qdq.smooth_channels).
3. Ranges: one streaming pass (calibration/statistics.py, cached by model + data + method).
4. onnxruntime's QDQ quantizer with the preset (per target / instruction set) and our ranges.
5. With eval data: the gate. If it fails, each quantized node's sensitivity is measured and the
   most sensitive go back to float one at a time until it passes (exit 1 if none does).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calibration.cache import CacheKey, CalibrationCache
from calibration.sources import TEXT_SUFFIXES, Dataset, load_dataset
from calibration.statistics import (
    Calibration,
    MethodSpec,
    activation_tensors,
    calibrate,
    check_finite,
    dataset_digest,
)
from toolchain.core.artifact import Format, IoSpec, ModelArtifact, Precision
from toolchain.core.errors import InvalidInput
from toolchain.core.files import write_json
from toolchain.core.onnx_model import check_onnx, io_from_onnx, onnx_digest
from toolchain.core.recipe import QuantizeStage
from toolchain.progress import track
from toolchain.quantize import qdq
from toolchain.quantize.presets import Preset, resolve_preset
from toolchain.quantize.sensitivity import (
    fallback_loop,
    node_sensitivity,
    plot_sensitivity,
    switchable_model,
)

MODEL_FILE = "model.onnx"
REPORT = "report.json"
PLOT = "sensitivity.png"
CACHE_DIR = ".calibration-cache"  # beside the stage's output unless cache_dir is set
LATENCY_ROUNDS = 30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _preset(cfg: QuantizeStage) -> Preset:
    preset = resolve_preset(cfg.target, cfg.preset)
    if cfg.outlier_ratio is not None:
        preset = replace(preset, outlier_ratio=cfg.outlier_ratio or None)
    if cfg.smooth_alpha is not None:
        preset = replace(preset, smooth_alpha=cfg.smooth_alpha or None)
    return preset


def cache_context(cfg: QuantizeStage) -> dict:
    """What changes the output but is not in the config: the preset this machine resolves to."""
    return {"preset": _preset(cfg).describe()}


def _tokenizer(cfg: QuantizeStage, src: ModelArtifact, ctx) -> Path | None:
    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    for p in (Path(src.path), Path(ctx.source.model)):
        folder = p if p.is_dir() else p.parent
        if any((folder / f).is_file() for f in TOKENIZER_FILES):
            return folder
    return None


def _load(
    path: str, what: str, io: IoSpec, cfg: QuantizeStage, tok: Path | None, limit=None
) -> Dataset:
    p = Path(path)
    if p.suffix in TEXT_SUFFIXES and tok is None:
        raise InvalidInput(
            f"{what} {p}: text data needs --tokenizer (no tokenizer beside the model)"
        )
    data = load_dataset(p, io, tokenizer=tok, seq_len=cfg.seq_len, limit=limit, image=cfg.image)
    check_finite(data, f"{what} {p}")
    return data


def calibration_data(cfg: QuantizeStage, io: IoSpec, tok: Path | None) -> Dataset:
    """The calibration samples: all of the data, or `samples` drawn with `seed`; refused if
    empty, short or not finite."""
    data = _load(cfg.calibration, "calibration data", io, cfg, tok)
    if cfg.samples is not None:
        if cfg.samples > len(data):
            raise InvalidInput(
                f"calibration data {cfg.calibration}: --samples {cfg.samples} asked, the data has "
                f"only {len(data)}"
            )
        data = data.take(cfg.samples, seed=cfg.seed)
    return data


def _cached(
    cache: CalibrationCache,
    key: CacheKey,
    tensors: list[str],
    channels: list[str],
    compute,
    log,
    what: str,
) -> tuple[Calibration, dict]:
    start = time.perf_counter()
    hit = cache.load(key, tensors, channels)
    if hit is not None:
        log(f"calibration ({what}): cached ({cache.path(key).name[:12]})")
        return hit, {"pass": what, "cached": True, "entry": str(cache.path(key))}
    calib = compute()
    cache.save(key, calib)
    seconds = time.perf_counter() - start
    log(f"calibration ({what}): {calib.samples} samples in {seconds:.1f} s")
    return calib, {
        "pass": what,
        "cached": False,
        "seconds": round(seconds, 2),
        "entry": str(cache.path(key)),
    }


def prepare(
    src: ModelArtifact,
    data: Dataset,
    cfg: QuantizeStage,
    preset: Preset,
    plan: qdq.Plan,
    cache: CalibrationCache,
    work: Path,
    log,
) -> tuple[Path, dict[str, tuple[float, float]], qdq.Plan, dict]:
    """The float model to quantize (outlier channels split off, the rest smoothed), its
    ranges, the plan with the split's float MatMuls, and what happened (for the report)."""
    method = MethodSpec(cfg.method, percentile=cfg.percentile)
    digest = dataset_digest(data)
    info: dict[str, Any] = {
        "method": method.key(),
        "samples": len(data),
        "seed": cfg.seed,
        "data_sha256": digest,
        "passes": [],
        "outlier_channels": [],
    }
    model = onnx.load(str(src.path))
    proto = onnx.load(str(src.path), load_external_data=False)
    masked: dict[str, np.ndarray] = {}
    kw = {"batch_size": cfg.batch_size, "threads": cfg.threads, "track": track}
    targets = qdq.split_targets(proto, plan.quantized(proto))
    if targets and (preset.outlier_ratio or preset.smooth_alpha):
        key = CacheKey(src.sha256, digest, {"method": "channel-absmax"})
        chans = [t.tensor for t in targets]
        chan, done = _cached(
            cache,
            key,
            [],
            chans,
            lambda: calibrate(
                src.path, data, [], MethodSpec("minmax"), channel_tensors=chans, **kw
            ),
            log,
            "channel maxima",
        )
        info["passes"].append(done)
        if preset.outlier_ratio:
            split = qdq.split_outliers(
                model,
                targets,
                chan.channel_absmax,
                preset.outlier_ratio,
                preset.outlier_channels,
                preset.outlier_min_shrink,
            )
            plan = plan.with_float(
                split.float_nodes, "float part of a split MatMul (outlier channels)"
            )
            masked = split.masked
            info["outlier_channels"] = split.split
        if preset.smooth_alpha:
            smooth = qdq.smooth_channels(
                model, targets, chan.channel_absmax, preset.smooth_alpha, masked
            )
            masked = {smooth.renamed.get(t, t): idx for t, idx in masked.items()}
            info["smoothed"] = {"alpha": preset.smooth_alpha, "tensors": smooth.smoothed}
    prepared = qdq.save_model(model, work / "prepared.onnx")
    del model
    tensors = activation_tensors(onnx.load(str(prepared), load_external_data=False), plan.op_types)
    levels = 256 if preset.activation_type == "uint8" and not preset.activation_symmetric else 128
    key = CacheKey(
        src.sha256,
        digest,
        {
            **method.key(),
            "levels": levels,
            "split": {k: v.tolist() for k, v in sorted(masked.items())},
            # the smoothing scales decide the smoothed tensors' ranges
            "smooth": {
                d["smoothed"]: d["scale_sha256"]
                for d in info.get("smoothed", {}).get("tensors", [])
            },
        },
    )
    calib, done = _cached(
        cache,
        key,
        tensors,
        [],
        lambda: calibrate(
            prepared,
            data,
            tensors,
            method,
            drop_channels=masked,
            non_negative_levels=levels,
            **kw,
        ),
        log,
        method.name,
    )
    info["passes"].append(done)
    return prepared, dict(calib.ranges), plan, info


class Evaluator:
    """The gate on the eval data: reference outputs (the fp32 input model) computed once."""

    def __init__(self, src: Path, data: Dataset, cfg: QuantizeStage) -> None:
        from toolchain.validate.gate import default_metrics

        self.data, self.cfg = data, cfg
        self.metrics = cfg.metrics or default_metrics(data.labels is not None)
        self.batches = self._batches(src)
        self.reference = self._run(src)

    def _batches(self, src: Path) -> list[dict[str, np.ndarray]]:
        io = io_from_onnx(onnx.load(str(src), load_external_data=False))
        fixed = [t.dims[0] for t in io.inputs if t.dims and isinstance(t.dims[0], int)]
        size = min([self.cfg.batch_size, *fixed])  # a model exported at batch 1 takes 1
        return [feeds for feeds, _ in self.data.batches(size)]

    def _run(self, path: Path) -> dict[str, np.ndarray]:
        from targets.ort_cpu import runner_from_onnx

        runner = runner_from_onnx(path, threads=self.cfg.threads)
        outs = [runner.infer(b) for b in self.batches]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def gate(self, path: Path):
        from toolchain.validate.compare import Outputs
        from toolchain.validate.gate import evaluate

        outputs = Outputs(self.reference, self._run(path), self.data.labels)
        return evaluate(
            outputs, self.metrics, {m: self.cfg.budget(m) for m in self.metrics}, self.cfg.output
        )

    def check(self, path: Path) -> tuple[bool, str, list[dict]]:
        g = self.gate(path)
        return g.passed, g.verdict(), [c.to_dict() for c in g.checks]


def latency_cost(paths: dict[str, Path], feeds: dict[str, np.ndarray], threads: int | None) -> dict:
    """Median ms per batch-1 call of each model, timed in alternation (load drift hits all)."""
    from targets.ort_cpu import runner_from_onnx

    runners = {k: runner_from_onnx(p, threads=threads) for k, p in paths.items()}
    for r in runners.values():
        for _ in range(3):
            r.infer(feeds)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(LATENCY_ROUNDS):
        for k, r in runners.items():
            t = time.perf_counter()
            r.infer(feeds)
            times[k].append((time.perf_counter() - t) * 1e3)
    return {f"{k}_ms": round(statistics.median(v), 4) for k, v in times.items()}


def _install(model_path: Path, out: Path) -> Path:
    """Move a model (and its external data file, if any) into `out` as model.onnx."""
    dest = out / MODEL_FILE
    data = [p for p in model_path.parent.glob(model_path.name + ".data")]
    if data:  # the data file's name is recorded inside the model: keep them in step
        model = onnx.load(str(model_path))
        qdq.save_model(model, dest)
    else:
        shutil.move(str(model_path), dest)
    return dest


def _carry_preprocessing(src: Path, out: Path) -> list[str]:
    from toolchain.build import carry_preprocessing

    return carry_preprocessing(Path(src).parent, out)


def run(ctx, src: ModelArtifact, cfg: QuantizeStage, out: Path):
    from toolchain.pipeline import StageResult

    if src.format is not Format.onnx:
        raise InvalidInput(
            f"{src.path}: quantize takes an fp32 ONNX model, got {src.format.value}; "
            "export it first (edgesmith export, or an export stage before quantize)"
        )
    start = time.perf_counter()
    proto = check_onnx(src.path)
    io = io_from_onnx(proto)
    preset = _preset(cfg)
    plan = qdq.make_plan(proto, preset, cfg.op_types or None, cfg.exclude)
    tok = _tokenizer(cfg, src, ctx)
    # every input is checked before any quantization work
    calib_data = calibration_data(cfg, io, tok) if cfg.method != "dynamic" else None
    eval_data = _load(cfg.eval, "eval data", io, cfg, tok, cfg.eval_limit) if cfg.eval else None
    if eval_data is not None:
        from toolchain.validate.metrics import check_metric_names

        check_metric_names(cfg.metrics)
    cache = CalibrationCache(Path(cfg.cache_dir) if cfg.cache_dir else out.parent / CACHE_DIR)
    report: dict[str, Any] = {
        "name": "quantize",
        "input": {"path": str(src.path), "sha256": src.sha256},
        "method": cfg.method,
        "preset": preset.describe(),
        "why": preset.why,
        "isa": preset.isa,
    }
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=out))
    try:
        if cfg.method == "dynamic":
            first = work / "int8" / MODEL_FILE
            first.parent.mkdir()
            qdq.quantize_dynamic_model(src.path, first, preset, plan)
            prepared, ranges = None, None
            report["calibration"] = {"method": "dynamic", "note": "ranges computed per call"}
            if cfg.calibration:
                ctx.log("note: --method dynamic computes ranges per call; --calibration is unused")
                report["calibration"]["unused_data"] = cfg.calibration
        else:
            prepared, ranges, plan, report["calibration"] = prepare(
                src, calib_data, cfg, preset, plan, cache, work, ctx.log
            )
            first = work / "int8" / MODEL_FILE
            first.parent.mkdir()
            qdq.quantize_static_qdq(prepared, first, ranges, preset, plan)
        final, passed, summary = first, True, ""
        if eval_data is not None:
            final, passed, summary = _gate_and_loop(
                ctx, cfg, preset, plan, src, prepared, ranges, eval_data, first, work, out, report
            )
        model_path = _install(final, out)
        report["carried"] = _carry_preprocessing(src.path, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    qproto = check_onnx(model_path)
    if cfg.target == "trt-gpu":
        # refuse to hand TensorRT a model its explicit quantization would reject or mis-fuse
        bad = qdq.tensorrt_violations(onnx.load(str(model_path)))
        if bad:
            raise InvalidInput(
                f"the QDQ model breaks TensorRT's rules ({len(bad)}): {bad[0]}; check --op-types"
            )
    quantized = qdq.quantized_nodes(qproto)
    float_nodes = report.get("fallback", {}).get("float_nodes", [])
    report["nodes"] = {
        "quantized": len(quantized),
        "float": {n: why for n, why in plan.excluded.items()},
        "quantized_names": quantized,
    }
    report["passed"] = passed
    report["seconds"] = round(time.perf_counter() - start, 2)
    summary = summary or f"{len(quantized)} nodes in int8 ({preset.name}, {cfg.method})"
    report["summary"] = summary
    write_json(out / REPORT, report)
    art = ModelArtifact(
        model_path,
        Format.onnx,
        precision=Precision.mixed if float_nodes else Precision.int8,
        io=io_from_onnx(qproto),
        sha256=onnx_digest(model_path, qproto),
        parent=src.sha256,
        meta={"preset": preset.name, "method": cfg.method, "target": cfg.target},
    )
    metrics = {
        k: report[k]
        for k in ("method", "preset", "why", "isa", "calibration", "gate", "fallback", "nodes")
        if k in report
    }
    return StageResult(art, metrics, passed=passed, summary=summary)


def _gate_and_loop(
    ctx, cfg, preset, plan, src, prepared, ranges, eval_data, first, work, out, report
) -> tuple[Path, bool, str]:
    """Gate the all-int8 model; on failure rank nodes and put them back to float one by one."""
    ev = Evaluator(src.path, eval_data, cfg)
    passed, verdict, checks = ev.check(first)
    report["gate"] = {
        "data": cfg.eval,
        "samples": len(eval_data),
        "metrics": ev.metrics,
        "all_int8": {"passed": passed, "verdict": verdict, "checks": checks},
    }
    ctx.log(f"quantize: all-int8 model: {verdict}")
    if passed:
        return first, True, f"all-int8 {verdict}"
    if prepared is None:
        report["fallback"] = {"note": "the fallback loop works on calibrated (static) methods"}
        return first, False, f"all-int8 {verdict}; dynamic has no fallback loop (try minmax)"
    quantized = plan.quantized(onnx.load(str(prepared), load_external_data=False))
    # the switchable model: a Q→DQ pair on every quantized input, activations kept as nodes
    pairs = replace(
        preset, add_qdq_pair_to_weight=True, keep_removable_activations=True, quantize_bias=False
    )
    pair_path = qdq.quantize_static_qdq(prepared, work / "pairs.onnx", ranges, pairs, plan)
    switch, switched = switchable_model(onnx.load(str(pair_path)), quantized)
    switch_path = qdq.save_model(switch, work / "switch.onnx")
    n = cfg.sensitivity_samples
    sub = Dataset({k: v[:n] for k, v in eval_data.feeds.items()})
    batches = [feeds for feeds, _ in sub.batches(min(cfg.batch_size, len(sub)))]
    from targets.ort_cpu import runner_from_onnx

    ref = runner_from_onnx(src.path, threads=cfg.threads)
    reference = [ref.infer(b) for b in batches]
    sens = node_sensitivity(switch_path, switched, batches, reference, cfg.threads, track)
    ranking = [name for name, _ in sens.ranking]

    def make(nodes: list[str], step: int) -> Path:
        path = work / f"step-{step}" / MODEL_FILE
        path.parent.mkdir()
        qdq.quantize_static_qdq(prepared, path, ranges, preset, plan.with_float(nodes, "fallback"))
        return path

    loop = fallback_loop(ranking, make, ev.check, cfg.max_fallback, ctx.log)
    final = loop.path or first
    cost = (
        latency_cost(
            {"all_int8": first, "with_fallback": final},
            {k: v[:1] for k, v in eval_data.feeds.items()},
            cfg.threads,
        )
        if loop.steps
        else {}
    )
    if cost:
        cost["cost_ms"] = round(cost["with_fallback_ms"] - cost["all_int8_ms"], 4)
    report["sensitivity"] = sens.to_dict()
    report["fallback"] = {
        "float_nodes": loop.float_nodes,
        "passed": loop.passed,
        "steps": [s.to_dict() for s in loop.steps],
        "latency_batch1": cost,
    }
    try:  # matplotlib is an optional dependency (the dev extra); the ranking is in the JSON
        plot_sensitivity(sens.ranking, set(loop.float_nodes), out / PLOT)
        report["sensitivity"]["plot"] = PLOT
    except ImportError:
        report["sensitivity"]["plot"] = "not drawn: matplotlib is not installed"
    last = loop.steps[-1].verdict if loop.steps else verdict
    if loop.passed:
        return (
            final,
            True,
            (
                f"{len(loop.float_nodes)} node(s) back to float to pass: {last}"
                + (f" (+{cost['cost_ms']:.3f} ms at batch 1)" if cost else "")
            ),
        )
    return (
        final,
        False,
        (f"no fallback passed ({len(loop.float_nodes)} of {len(ranking)} nodes in float): {last}"),
    )
