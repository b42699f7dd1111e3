"""The prune stage's work (prune/stage.py declares it): score, choose the amount, prune,
recover, measure, report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from toolchain.core.artifact import Format, ModelArtifact
from toolchain.core.errors import InvalidInput
from toolchain.core.files import sha256_json, sha256_path, write_json
from toolchain.core.stage import Inputs, StageResult, Workdir
from toolchain.distill.setup import choose_output, load_data, load_teacher, train_config
from toolchain.export.hf import load_hf
from toolchain.prune.latency import Engine, compare, engine_of, search_fraction
from toolchain.prune.structured import Plan, StructuredPruner, choose_importance

REPORT, PLOT = "report.json", "prune.png"
DEFAULT_LR = 5e-5  # recovery fine-tunes a model that was trained: a fine-tuning rate


def _check_source(src: ModelArtifact) -> None:
    if src.format is not Format.hf:
        raise InvalidInput(
            f"{src.path}: structured pruning takes a Hugging Face encoder folder, got "
            f"{src.format.value} (channel pruning of PyTorch factory models is not built yet; "
            "put prune before export in a recipe)"
        )


def _baseline(pruner: StructuredPruner, cfg, work: Workdir) -> Engine:
    """The unpruned model's engine, the baseline every pruned engine is timed beside."""
    return engine_of(pruner.hf, work.scratch / "unpruned", cfg.opset, cfg.threads)


def _choose_plan(pruner: StructuredPruner, cfg, work: Workdir, base: Engine, report: dict):
    """The plan: from the fractions given, or the smallest that meets --target-latency."""
    if cfg.target_latency is None:
        return pruner.plan(*cfg.fractions())
    batch = max(cfg.latency_batches)

    def measure(fraction: float) -> float:
        candidate = pruner.apply(pruner.plan(fraction, fraction))
        eng = engine_of(candidate, work.scratch / f"try-{fraction:.4f}", cfg.opset, cfg.threads)
        ms = compare({"unpruned": base, "pruned": eng}, [batch], pruner.seq, cfg.latency_rounds)
        t = ms[str(batch)]
        return t["pruned"] / t["unpruned"]

    search = search_fraction(measure, cfg.target_latency, log=work.log)
    report["latency_search"] = {**search.to_dict(), "batch": batch, "seq": pruner.seq}
    if search.chosen is None:
        return None
    return pruner.plan(search.chosen, search.chosen)


def _recover(pruned, teacher, train, evals, output: str, cfg, work: Workdir, task,
             plan_digest: str) -> dict:  # fmt: skip
    """Distil the unpruned model into the pruned one (the distill stage's trainer)."""
    from toolchain.distill.students import HfOutputs
    from toolchain.distill.trainer import Pair, Trainer

    student = HfOutputs(pruned.model, pruned.onnx_config)
    tcfg = train_config(cfg, DEFAULT_LR, output, task)
    trainer = Trainer(
        Pair(student, teacher.module), train, evals, tcfg, checkpoints=work.scratch / "recovery",
        fingerprint=sha256_json({"model": sha256_path(Path(pruned.path)), "plan": plan_digest}),
        log=work.log,
    )  # fmt: skip
    result = trainer.fit(resume=cfg.resume)
    return {"loss": tcfg.loss, "epochs": cfg.epochs, **result.to_dict()}


def _accuracy(pruner, pruned, teacher, evals, output: str, loss: str) -> dict[str, Any]:
    """The distillation loop's eval metric (accuracy with labels) before and after pruning."""
    from toolchain.distill.parallel import outputs_of
    from toolchain.distill.steps import evaluate
    from toolchain.distill.students import HfOutputs

    def outputs(module):
        return outputs_of(module, evals, output, batch_size=256)

    ref = outputs(teacher.module)
    unpruned = ref if pruner.wrapped is teacher.module else outputs(pruner.wrapped)
    name, before = evaluate(unpruned, ref, evals.labels, loss)
    after = outputs(HfOutputs(pruned.model, pruned.onnx_config))
    _, after_pruning = evaluate(after, ref, evals.labels, loss)
    return {"metric": name, "before_pruning": before, "after_pruning": after_pruning}


def _finish(plan: Plan, pruner, pruned, base: Engine, cfg, work: Workdir, report: dict):
    from toolchain.distill.students import save_hf_student
    from toolchain.prune.encoder import head_counts, parameter_counts
    from toolchain.prune.report import plot

    save_hf_student(pruned.model, Path(pruner.path), work.out)
    final = engine_of(pruned, work.scratch / "pruned", cfg.opset, cfg.threads)
    ms = compare({"unpruned": base, "pruned": final}, cfg.latency_batches, pruner.seq,
                 cfg.latency_rounds)  # fmt: skip
    after = {"heads": head_counts(pruned.model), "ffn": [len(f) for f in plan.ffn]}
    params = {"before": pruner.before["parameters"], "after": parameter_counts(pruned.model)}
    report.update(
        layers=plan.describe(pruner.before),
        parameters=params,
        latency_ms={"seq": pruner.seq, "threads": cfg.threads, "batches": ms},
        latency_ratio={b: round(t["pruned"] / t["unpruned"], 4) for b, t in ms.items()},
    )
    try:
        plot(report, work.out / PLOT)
        report["plot"] = PLOT
    except ImportError:
        report["plot"] = "not drawn: matplotlib is not installed"
    write_json(work.out / REPORT, report)
    return after, params


def prune(inputs: Inputs, cfg, work: Workdir) -> StageResult:
    start = time.perf_counter()
    src = inputs.model
    _check_source(src)
    teacher = load_teacher(inputs.get("teacher") or src, cfg)
    train, evals = load_data(cfg, teacher.io, teacher.tokenizer)
    output = choose_output(teacher, train, cfg.output)
    loss = train_config(cfg, DEFAULT_LR, output, teacher.task).loss
    kind = choose_importance(cfg.importance, train.labels is not None, loss)
    if inputs.get("teacher") is None:  # the teacher is the unpruned model: load it once
        pruner = StructuredPruner(teacher.hf, train, output, cfg, kind, work.log, teacher.module)
    else:
        unpruned = load_hf(src.path, src.info.task)
        pruner = StructuredPruner(unpruned, train, output, cfg, kind, work.log)
    report: dict[str, Any] = {"name": "prune", "method": cfg.method, "importance": kind}
    base = _baseline(pruner, cfg, work)
    plan = _choose_plan(pruner, cfg, work, base, report)
    if plan is None:
        write_json(work.out / REPORT, report)
        tried = ", ".join(
            f"{p['fraction']:.0%}: {p['ratio']:.2f}x" for p in report["latency_search"]["tried"]
        )
        return StageResult(None, report, passed=False, summary=(
            f"no amount of pruning reaches {cfg.target_latency}x the unpruned engine ({tried})"
        ))  # fmt: skip
    pruned = pruner.apply(plan)
    report["accuracy"] = _accuracy(pruner, pruned, teacher, evals, output, loss)
    if cfg.epochs:
        digest = sha256_json({"heads": plan.heads, "ffn": plan.ffn})
        report["recovery"] = _recover(
            pruned, teacher, train, evals, output, cfg, work, teacher.task, digest
        )
        report["accuracy"]["after_recovery"] = report["recovery"]["best_metric"]
    after, params = _finish(plan, pruner, pruned, base, cfg, work, report)
    report["seconds"] = round(time.perf_counter() - start, 1)
    _target_missed(cfg, report)  # recorded in the report before it is written
    write_json(work.out / REPORT, report)
    structure = {"method": cfg.method, **after, "parameters": params["after"]["total"]}
    info = src.info.inherit(task=teacher.task, tokenizer=str(work.out), structure=structure)
    art = ModelArtifact(work.out, Format.hf, sha256=sha256_path(work.out), parent=src.sha256,
                        info=info)  # fmt: skip
    acc, ratio = report["accuracy"], report["latency_ratio"]
    summary = (
        f"{params['after']['total']:,} of {params['before']['total']:,} parameters; engine "
        + ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratio.items())
        + f"; {acc['metric']} {acc['before_pruning']:.4f} → pruned {acc['after_pruning']:.4f}"
        + (f" → recovered {acc['after_recovery']:.4f}" if "after_recovery" in acc else "")
    )
    missed = _target_missed(cfg, report)
    if missed:
        summary = f"{missed}; {summary}"
    return StageResult(art, report, passed=not missed, summary=summary)


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
