"""The prune stage for the weight-sparsity methods (magnitude, movement, 2:4; the masks are in
prune/sparsity.py): mask, recover with the masks in the forward pass, make them permanent,
then audit the exported ONNX and measure the ort-cpu engine beside the dense one.

What the zeros buy depends on the target, and the report says which: onnxruntime's CPU
kernels are dense, so on ort-cpu unstructured zeros and 2:4 give no speedup (measured beside
the dense engine), and the saving that does exist is the compressed file; TensorRT can run
2:4 layers on sparse tensor cores (Ampere and later) when the build sets SPARSE_WEIGHTS,
which trt-gpu does for a model whose audit finds 2:4 layers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

from edgesmith.toolchain.core.files import sha256_json
from edgesmith.toolchain.core.report import write_report
from edgesmith.toolchain.core.stage import StageResult, Workdir
from edgesmith.toolchain.prune.latency import compare, engine_of
from edgesmith.toolchain.prune.report import EngineTimes, PruneReport, engine_times

ORT_CPU_NOTE = (
    "onnxruntime's CPU kernels are dense: zeros in the weights do not make the ort-cpu engine "
    "faster (onnxruntime issue 2121); what they save is the compressed size"
)
TRT_NOTE = (
    "trt-gpu builds set SPARSE_WEIGHTS for 2:4 layers; with int8 Q/DQ on the same layers "
    "TensorRT may still pick dense kernels (TensorRT issue 4694): check the engine's layers"
)


def _dense_copy(s, cfg, model):
    """A copy of the unpruned `model` to make sparse, as a candidate (prune/structured.py)."""
    from edgesmith.toolchain.core.artifact import Format
    from edgesmith.toolchain.prune.structured import ChannelCandidate, EncoderCandidate

    if s.src.format is Format.hf:
        from pathlib import Path

        hf = replace(model, model=copy.deepcopy(model.model).eval())
        return EncoderCandidate(hf, Path(model.path)), hf.model
    tm = replace(model, module=copy.deepcopy(model.module).eval())
    return ChannelCandidate(tm, {"method": cfg.method, "modules": []}, None), tm.module


def _targets(s, module):
    from edgesmith.toolchain.core.artifact import Format
    from edgesmith.toolchain.prune.sparsity import encoder_targets, module_targets

    return encoder_targets(module) if s.src.format is Format.hf else module_targets(module)


def prune_weights(s, work: Workdir, start: float) -> StageResult:
    import time

    import torch

    from edgesmith.toolchain.prune.common import accuracy, artifact, recover, shared
    from edgesmith.toolchain.prune.sparsity import ScheduleCallback, Sparsifier, make_permanent
    from edgesmith.toolchain.training.parallel import close_distributed

    cfg = s.cfg
    unpruned_model, unpruned_outputs = s.unpruned()  # loaded once: copied, then timed
    candidate, module = _dense_copy(s, cfg, unpruned_model)
    report = PruneReport(cfg.method, s.src.format.value)
    if cfg.method == "movement":
        report.movement = cfg.movement
    sparsifier = Sparsifier(_targets(s, module), cfg)
    sparsifier.start()
    before = movement_setting(s)
    for w in before:
        work.log(f"warning: {w}")
    callbacks = []
    try:
        shared(None, work)  # joins torchrun's group: every process masks the same way
        if sparsifier.gradual:
            start_epoch, end_epoch = cfg.schedule_bounds(s.epochs.count)
            callbacks.append(
                ScheduleCallback(sparsifier, start_epoch, end_epoch, cfg.mask_interval)
            )
        if work.rank == 0:
            if sparsifier.gradual:  # what the final magnitude mask gives with no recovery
                sparsifier.preview()
                report.accuracy = accuracy(s, unpruned_outputs, candidate.outputs)
                report.accuracy["after_pruning_is"] = "one-shot magnitude, no recovery"
                sparsifier.clear()
            else:
                report.accuracy = accuracy(s, unpruned_outputs, candidate.outputs)
        if s.epochs.count:
            # a checkpoint resumes only the same masks: the whole config is in its fingerprint
            config = cfg.model_dump(exclude={"out", "resume"})
            fingerprint = sha256_json({"model": s.src.sha256, "config": config})
            report.recovery = recover(candidate, s, work, fingerprint, callbacks)
    finally:
        close_distributed()
    if work.rank != 0:
        return StageResult(None)
    if callbacks:
        report.schedule = callbacks[0].describe()
    report.layer_sparsity = sparsifier.layer_sparsity()
    with torch.no_grad():
        make_permanent(sparsifier.targets)
    if report.recovery is not None:
        report.accuracy["after_recovery"] = report.recovery["best_metric"]
    warnings = [*before, _movement_warning(cfg, report.accuracy), _soft_short(report.schedule,
                                                                          cfg)]  # fmt: skip
    report.warning = "; ".join(w for w in warnings if w) or None
    path = candidate.save(work.out)
    measured = _measure(s, work, unpruned_model, candidate)
    report.audit, report.dense_bytes = measured.audit, measured.dense_bytes
    times = measured.times
    report.latency_ms, report.latency_ratio = times.latency_ms, times.latency_ratio
    report.targets = {"ort-cpu": ORT_CPU_NOTE, "trt-gpu": TRT_NOTE}
    report.seconds = round(time.perf_counter() - start, 1)
    data = write_report(work.out, report)
    a = report.audit
    structure = {"method": cfg.method, "sparsity": a["weight_sparsity"],
                 "two_four_layers": len(a["two_four_layers"])}  # fmt: skip
    art = artifact(s.src, candidate, path, s.teacher.task, structure)
    acc, ratio, warning = report.accuracy, report.latency_ratio, report.warning
    summary = (
        f"{a['weight_sparsity']:.1%} of the weights zero"
        + (f" ({len(a['two_four_layers'])} layers 2:4)" if cfg.method == "2:4" else "")
        + f"; {acc['metric']} {acc['before_pruning']:.4f} → pruned {acc['after_pruning']:.4f}"
        + (f" → recovered {acc['after_recovery']:.4f}" if "after_recovery" in acc else "")
        + "; ort-cpu engine "
        + ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratio.items())
        + f"; xz {a['bytes']['xz'] / report.dense_bytes['xz']:.2f}x the dense model"
        + (f"; warning: {warning}" if warning else "")
    )
    return StageResult(art, data, summary=summary)


MIN_SCORE_STEPS = 300
FINE_PRUNE = (
    "edgesmith prune PRETRAINED --teacher FINE_TUNED --method movement --sparsity S "
    "--data TEXT (unlabelled text is enough: the teacher labels it)"
)


def movement_setting(s) -> list[str]:
    """What makes a movement run unlikely to work, known before it starts: too few steps for
    the scores to learn, or a start from the fine-tuned model itself (movement is a
    fine-pruning method: Sanh et al. prune while fine-tuning the pretrained model)."""
    if s.cfg.method != "movement":
        return []
    out = []
    steps = s.epochs.count * -(-len(s.train) // s.cfg.batch_size)
    if steps < MIN_SCORE_STEPS:
        out.append(
            f"movement gets {steps} score steps ({s.epochs.count} epochs of "
            f"{len(s.train)} samples at batch {s.cfg.batch_size}); its scores need a few "
            f"hundred at least (Sanh et al. ran thousands): more data or --epochs"
        )
    if s.own_teacher:
        out.append(
            "movement from the fine-tuned model itself: its weights barely move, so the "
            "scores rank them little better than chance; prune while fine-tuning instead: "
            + FINE_PRUNE + ", or use --method magnitude on the fine-tuned model"
        )
    return out


def _soft_short(schedule: dict | None, cfg) -> str:
    """Soft movement's sparsity is where its scores got to: say so when that is short of what
    was asked (the scores need a couple of hundred steps each to cross the threshold)."""
    from edgesmith.toolchain.prune.sparsity import SOFT_TOLERANCE

    reached, asked = (schedule or {}).get("reached_sparsity"), cfg.weight_sparsity()
    if reached is None or abs(reached - asked) <= SOFT_TOLERANCE:
        return ""
    return (
        f"soft movement reached {reached:.1%} of the weights zero, not the {asked:.0%} asked: "
        "its scores need more steps to settle at the threshold (more --epochs or data), or "
        "use --movement hard, which meets the count exactly"
    )


def _movement_warning(cfg, acc: dict[str, Any]) -> str:
    """Movement scores need weights that move: on a model already fine-tuned to convergence
    the loss's gradient is mostly noise, so the scores (Adam's steps on W·∂L/∂W') rank weights
    no better than chance within a short recovery, and the masks prune what the model needs
    (measured on the text classifier: benchmarks/movement_masks.py). Say so when the result is
    below what one-shot magnitude gave with no recovery at all."""
    recovered = acc.get("after_recovery")
    if cfg.method != "movement" or recovered is None or recovered >= acc["after_pruning"]:
        return ""
    return (
        f"movement recovered to {recovered:.4f}, below one-shot magnitude without recovery "
        f"({acc['after_pruning']:.4f}): movement needs weights that move (prune while "
        "fine-tuning: the pretrained model as MODEL, the fine-tuned one as --teacher); for a "
        "model already fine-tuned use --method magnitude"
    )


@dataclass
class Measured:
    """The sparse model's audit, the dense model's sizes, and both engines timed."""

    audit: dict[str, Any]
    dense_bytes: dict[str, Any]
    times: EngineTimes


def _measure(s, work: Workdir, unpruned_model, candidate) -> Measured:
    """Audit both ONNX exports and time both ort-cpu engines side by side."""
    from edgesmith.toolchain.core.artifact import Format
    from edgesmith.toolchain.core.audit import audit
    from edgesmith.toolchain.prune.structured import ChannelCandidate, EncoderCandidate, timing_seq

    cfg = s.cfg
    if s.src.format is Format.hf:
        from pathlib import Path

        dense = EncoderCandidate(unpruned_model, Path(unpruned_model.path))
        seq = timing_seq(unpruned_model, cfg)
    else:
        dense = ChannelCandidate(unpruned_model, {"method": "dense", "modules": []}, None)
        seq = None
    base = engine_of(dense, work.scratch / "dense", cfg.opset, cfg.threads)
    sparse = engine_of(candidate, work.scratch / "sparse", cfg.opset, cfg.threads)
    ms = compare({"dense": base, "sparse": sparse}, cfg.latency_batches, seq, cfg.latency_rounds)
    onnx_of = next((work.scratch / "sparse" / "onnx").glob("*.onnx"))
    dense_onnx = next((work.scratch / "dense" / "onnx").glob("*.onnx"))
    times = engine_times(ms, seq, cfg.threads, ("dense", "sparse"))
    return Measured(audit(onnx_of), audit(dense_onnx)["bytes"], times)
