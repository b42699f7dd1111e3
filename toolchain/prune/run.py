"""The prune stage's work (prune/stage.py declares it): score, choose the amount, prune,
recover, measure, report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from toolchain.core.artifact import Format, ModelArtifact
from toolchain.core.errors import InvalidInput
from toolchain.core.files import sha256_file, sha256_json, sha256_path, write_json
from toolchain.core.stage import Inputs, StageResult, Workdir
from toolchain.distill.setup import choose_output, load_data, load_teacher, train_config
from toolchain.prune.latency import Engine, compare, engine_of, search_fraction
from toolchain.prune.structured import ChannelPruner, EncoderPruner, choose_importance

REPORT, PLOT = "report.json", "prune.png"
DEFAULT_LR = 5e-5  # recovery fine-tunes a model that was trained: a fine-tuning rate
DEFAULT_LR_CNN = 1e-3  # the same for a small CNN trained with Adam (examples/digits.py: 2e-3)


def _check_source(src: ModelArtifact) -> None:
    if src.format is Format.hf or (src.format is Format.torch and src.info.factory):
        return
    raise InvalidInput(
        f"{src.path}: structured pruning takes a Hugging Face encoder folder or a PyTorch "
        f"model from package.module:factory + safetensors, got {src.format.value}"
        + (" (a .pt2 program cannot be resized)" if src.format is Format.torch else "")
        + "; put prune before export in a recipe"
    )


def _pruner(src: ModelArtifact, inputs: Inputs, teacher, train, output: str, cfg, kind, log):
    """The pruner for the source's kind; the teacher's loaded model is reused when it is the
    unpruned model itself (no teacher given)."""
    own = inputs.get("teacher") is None
    if src.format is Format.hf:
        from toolchain.export.hf import load_hf

        if own:
            return EncoderPruner(teacher.hf, train, output, cfg, kind, log, teacher.module)
        return EncoderPruner(load_hf(src.path, src.info.task), train, output, cfg, kind, log)
    from toolchain.export.source import torch_spec
    from toolchain.export.torch import TorchRunner, load_torch

    if own:
        return ChannelPruner(teacher.torch, train, output, cfg, kind, log, teacher.module)
    tm = load_torch(torch_spec(src))
    TorchRunner(tm)  # names the outputs
    return ChannelPruner(tm, train, output, cfg, kind, log)


def _choose_plan(pruner, cfg, work: Workdir, base: Engine, report: dict):
    """The plan: from the fractions given, or the smallest that meets --target-latency."""
    if cfg.target_latency is None:
        return pruner.plan(*cfg.fractions())
    batch = max(cfg.latency_batches)

    def measure(fraction: float) -> float:
        candidate = pruner.apply(pruner.plan(fraction))
        eng = engine_of(candidate, work.scratch / f"try-{fraction:.4f}", cfg.opset, cfg.threads)
        ms = compare({"unpruned": base, "pruned": eng}, [batch], pruner.seq, cfg.latency_rounds)
        t = ms[str(batch)]
        return t["pruned"] / t["unpruned"]

    search = search_fraction(measure, cfg.target_latency, log=work.log)
    report["latency_search"] = {**search.to_dict(), "batch": batch, "seq": pruner.seq}
    if search.chosen is None:
        return None
    return pruner.plan(search.chosen)


def _recover(candidate, teacher, train, evals, output: str, cfg, work: Workdir, task,
             fingerprint: str, lr: float) -> dict:  # fmt: skip
    """Distil the unpruned model into the pruned one (the distill stage's trainer)."""
    from toolchain.distill.trainer import Pair, Trainer

    tcfg = train_config(cfg, lr, output, task)
    trainer = Trainer(
        Pair(candidate.outputs, teacher.module), train, evals, tcfg,
        checkpoints=work.scratch / "recovery", fingerprint=fingerprint, log=work.log,
    )  # fmt: skip
    result = trainer.fit(resume=cfg.resume)
    return {"loss": tcfg.loss, "epochs": cfg.epochs, **result.to_dict()}


def _accuracy(pruner, candidate, teacher, evals, output: str, loss: str) -> dict[str, Any]:
    """The distillation loop's eval metric (accuracy with labels) before and after pruning."""
    from toolchain.distill.parallel import outputs_of
    from toolchain.distill.steps import evaluate

    def outputs(module):
        return outputs_of(module, evals, output, batch_size=256)

    ref = outputs(teacher.module)
    unpruned = ref if pruner.wrapped is teacher.module else outputs(pruner.wrapped)
    name, before = evaluate(unpruned, ref, evals.labels, loss)
    _, after_pruning = evaluate(outputs(candidate.outputs), ref, evals.labels, loss)
    return {"metric": name, "before_pruning": before, "after_pruning": after_pruning}


def _finish(plan, pruner, candidate, base: Engine, cfg, work: Workdir, report: dict) -> None:
    from toolchain.prune.report import plot

    final = engine_of(candidate, work.scratch / "pruned", cfg.opset, cfg.threads)
    ms = compare({"unpruned": base, "pruned": final}, cfg.latency_batches, pruner.seq,
                 cfg.latency_rounds)  # fmt: skip
    report.update(
        layers=plan.describe(pruner.before),
        parameters={"before": pruner.before["parameters"], "after": candidate.parameters},
        latency_ms={"seq": pruner.seq, "threads": cfg.threads, "batches": ms},
        latency_ratio={b: round(t["pruned"] / t["unpruned"], 4) for b, t in ms.items()},
    )
    try:
        plot(report, work.out / PLOT)
        report["plot"] = PLOT
    except ImportError:
        report["plot"] = "not drawn: matplotlib is not installed"


def _artifact(src: ModelArtifact, candidate, path: Path, task, structure) -> ModelArtifact:
    if src.format is Format.hf:
        info = src.info.inherit(task=task, tokenizer=str(path), structure=structure)
        return ModelArtifact(path, Format.hf, sha256=sha256_path(path), parent=src.sha256,
                             info=info)  # fmt: skip
    from toolchain.distill.setup import code_digest

    digest = sha256_json({"factory": src.info.factory, "weights": sha256_file(path),
                          "code": code_digest(src.info.factory)})  # fmt: skip
    info = src.info.inherit(outputs=tuple(candidate.tm.output_names), structure=structure)
    return ModelArtifact(path, Format.torch, sha256=digest, parent=src.sha256, info=info)


def _shared(plan, work: Workdir):
    """Rank 0's plan on every torchrun process. The processes join the group only now: rank 0
    chose the plan by timing engines, and the others, waiting to join, took no core from it."""
    import torch.distributed as dist

    from toolchain.distill.parallel import init_distributed

    _, world = init_distributed()
    if world == 1:
        return plan
    work.log(f"distributed: {world} processes ({dist.get_backend()})")
    box = [plan]
    dist.broadcast_object_list(box, src=0)  # between our own processes, not from a file
    return box[0]


def prune(inputs: Inputs, cfg, work: Workdir) -> StageResult:
    """Score, choose the plan (rank 0), prune and recover (every torchrun process), then
    measure, save and report (rank 0)."""
    from toolchain.distill.parallel import close_distributed

    start = time.perf_counter()
    src = inputs.model
    _check_source(src)
    teacher = load_teacher(inputs.get("teacher") or src, cfg)
    train, evals = load_data(cfg, teacher.io, teacher.tokenizer)
    output = choose_output(teacher, train, cfg.output)
    lr = DEFAULT_LR if src.format is Format.hf else DEFAULT_LR_CNN
    loss = train_config(cfg, lr, output, teacher.task).loss
    kind = choose_importance(cfg.importance, train.labels is not None, loss)
    pruner = _pruner(src, inputs, teacher, train, output, cfg, kind, work.log)
    report: dict[str, Any] = {"name": "prune", "method": cfg.method, "importance": kind,
                              "model": pruner.format}  # fmt: skip
    base = plan = None
    if work.rank == 0:
        base = engine_of(pruner.unpruned, work.scratch / "unpruned", cfg.opset, cfg.threads)
        plan = _choose_plan(pruner, cfg, work, base, report)
    try:
        plan = _shared(plan, work)
        if plan is not None:
            candidate = pruner.apply(plan)
            if work.rank == 0:
                report["accuracy"] = _accuracy(pruner, candidate, teacher, evals, output, loss)
            if cfg.epochs:
                fingerprint = sha256_json({"model": src.sha256, "plan": plan.digest()})
                report["recovery"] = _recover(
                    candidate, teacher, train, evals, output, cfg, work, teacher.task,
                    fingerprint, lr,
                )  # fmt: skip
    finally:
        close_distributed()
    if work.rank != 0:
        return StageResult(None)
    if plan is None:
        write_json(work.out / REPORT, report)
        tried = ", ".join(
            f"{p['fraction']:.0%}: {p['ratio']:.2f}x" for p in report["latency_search"]["tried"]
        )
        return StageResult(None, report, passed=False, summary=(
            f"no amount of pruning reaches {cfg.target_latency}x the unpruned engine ({tried})"
        ))  # fmt: skip
    if "recovery" in report:
        report["accuracy"]["after_recovery"] = report["recovery"]["best_metric"]
    path = candidate.save(work.out)
    _finish(plan, pruner, candidate, base, cfg, work, report)
    report["seconds"] = round(time.perf_counter() - start, 1)
    missed = _target_missed(cfg, report)  # recorded in the report before it is written
    write_json(work.out / REPORT, report)
    structure = {"method": cfg.method, **candidate.structure}
    structure["parameters"] = candidate.parameters["total"]
    art = _artifact(src, candidate, path, teacher.task, structure)
    return StageResult(art, report, passed=not missed, summary=_summary(report, missed))


def _summary(report: dict, missed: str) -> str:
    params, acc, ratio = report["parameters"], report["accuracy"], report["latency_ratio"]
    summary = (
        f"{params['after']['total']:,} of {params['before']['total']:,} parameters; engine "
        + ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratio.items())
        + f"; {acc['metric']} {acc['before_pruning']:.4f} → pruned {acc['after_pruning']:.4f}"
        + (f" → recovered {acc['after_recovery']:.4f}" if "after_recovery" in acc else "")
    )
    return f"{missed}; {summary}" if missed else summary


def _target_missed(cfg, report: dict) -> str:
    """The final engine, re-measured after recovery, against --target-latency (the search's
    points are single measurements; this one decides). "" when met or when there is none."""
    if cfg.target_latency is None:
        return ""
    batch = str(report["latency_search"]["batch"])
    ratio = report["latency_ratio"][batch]
    allowed = cfg.target_latency * (1 + cfg.latency_tolerance)
    report["latency_search"]["final_ratio"] = ratio
    report["latency_search"]["target_met"] = ratio <= allowed
    if ratio <= allowed:
        return ""
    return (
        f"target latency missed: the pruned engine re-measured {ratio:.3f}x at batch {batch} "
        f"(target {cfg.target_latency}x, tolerance {cfg.latency_tolerance:.0%})"
    )
