"""The prune stage's work (prune/stage.py declares it). structured: score, choose the amount,
prune, recover, measure, report; the weight-sparsity methods (prune/weights.py) share the
set-up, the recovery, the accuracy and the artifact written here."""

from __future__ import annotations

import time
from dataclasses import dataclass
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


@dataclass
class Setup:
    """What every method works from: the source, the teacher, the data and the loss."""

    src: ModelArtifact
    teacher: Any  # distill/setup.py: Teacher
    train: Any
    evals: Any
    output: str
    lr: float
    loss: str
    own_teacher: bool  # the teacher is the unpruned model itself (no teacher given)

    def unpruned(self):
        """The unpruned model, loaded (the teacher's, when it is the same model): an HfModel
        or a TorchModel, and its outputs module."""
        if self.own_teacher:
            t = self.teacher
            return (t.hf if self.src.format is Format.hf else t.torch), t.module
        if self.src.format is Format.hf:
            from toolchain.export.hf import load_hf

            return load_hf(self.src.path, self.src.info.task), None
        from toolchain.export.source import torch_spec
        from toolchain.export.torch import TorchRunner, load_torch

        tm = load_torch(torch_spec(self.src))
        TorchRunner(tm)  # names the outputs
        return tm, None


def setup(inputs: Inputs, cfg) -> Setup:
    src = inputs.model
    _check_source(src)
    teacher = load_teacher(inputs.get("teacher") or src, cfg)
    train, evals = load_data(cfg, teacher.io, teacher.tokenizer)
    output = choose_output(teacher, train, cfg.output)
    lr = cfg.lr or (DEFAULT_LR if src.format is Format.hf else DEFAULT_LR_CNN)
    loss = train_config(cfg, lr, output, teacher.task).loss
    return Setup(src, teacher, train, evals, output, lr, loss, inputs.get("teacher") is None)


def _pruner(s: Setup, cfg, kind: str, log):
    """The structured pruner for the source's kind."""
    model, wrapped = s.unpruned()
    if s.src.format is Format.hf:
        return EncoderPruner(model, s.train, s.output, cfg, kind, log, wrapped)
    return ChannelPruner(model, s.train, s.output, cfg, kind, log, wrapped)


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


def recover(candidate, s: Setup, cfg, work: Workdir, fingerprint: str, callbacks=()) -> dict:
    """Distil the unpruned model into the pruned one (the distill stage's trainer)."""
    from toolchain.distill.trainer import Pair, Trainer

    tcfg = train_config(cfg, s.lr, s.output, s.teacher.task)
    trainer = Trainer(
        Pair(candidate.outputs, s.teacher.module), s.train, s.evals, tcfg,
        checkpoints=work.scratch / "recovery", fingerprint=fingerprint, log=work.log,
        callbacks=callbacks,
    )  # fmt: skip
    result = trainer.fit(resume=cfg.resume)
    return {"loss": tcfg.loss, "epochs": cfg.epochs, **result.to_dict()}


def accuracy(s: Setup, unpruned, pruned) -> dict[str, Any]:
    """The distillation loop's eval metric (accuracy with labels) of the unpruned model and of
    the pruned one before recovery (outputs modules; `unpruned` None: the teacher is it)."""
    from toolchain.distill.parallel import outputs_of
    from toolchain.distill.steps import evaluate

    def outputs(module):
        return outputs_of(module, s.evals, s.output, batch_size=256)

    ref = outputs(s.teacher.module)
    base = ref if unpruned is None or unpruned is s.teacher.module else outputs(unpruned)
    name, before = evaluate(base, ref, s.evals.labels, s.loss)
    _, after_pruning = evaluate(outputs(pruned), ref, s.evals.labels, s.loss)
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


def artifact(src: ModelArtifact, candidate, path: Path, task, structure) -> ModelArtifact:
    if src.format is Format.hf:
        info = src.info.inherit(task=task, tokenizer=str(path), structure=structure)
        return ModelArtifact(path, Format.hf, sha256=sha256_path(path), parent=src.sha256,
                             info=info)  # fmt: skip
    from toolchain.distill.setup import code_digest

    digest = sha256_json({"factory": src.info.factory, "weights": sha256_file(path),
                          "code": code_digest(src.info.factory)})  # fmt: skip
    info = src.info.inherit(outputs=tuple(candidate.tm.output_names), structure=structure)
    return ModelArtifact(path, Format.torch, sha256=digest, parent=src.sha256, info=info)


def shared(plan, work: Workdir):
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
    s = setup(inputs, cfg)
    if cfg.method != "structured":
        from toolchain.prune.weights import prune_weights

        return prune_weights(s, cfg, work, start)
    kind = choose_importance(cfg.importance, s.train.labels is not None, s.loss)
    pruner = _pruner(s, cfg, kind, work.log)
    report: dict[str, Any] = {"name": "prune", "method": cfg.method, "importance": kind,
                              "model": pruner.format}  # fmt: skip
    base = plan = None
    if work.rank == 0:
        base = engine_of(pruner.unpruned, work.scratch / "unpruned", cfg.opset, cfg.threads)
        plan = _choose_plan(pruner, cfg, work, base, report)
    try:
        plan = shared(plan, work)
        if plan is not None:
            candidate = pruner.apply(plan)
            if work.rank == 0:
                report["accuracy"] = accuracy(s, pruner.wrapped, candidate.outputs)
            if cfg.epochs:
                fingerprint = sha256_json({"model": s.src.sha256, "plan": plan.digest()})
                report["recovery"] = recover(candidate, s, cfg, work, fingerprint)
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
    art = artifact(s.src, candidate, path, s.teacher.task, structure)
    return StageResult(art, report, passed=not missed, summary=summary(report, missed))


def summary(report: dict, missed: str) -> str:
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
