"""The prune stage's work (prune/stage.py declares it). structured: score, choose the amount,
prune, recover, measure, report; the weight-sparsity methods (prune/weights.py) share the
set-up, the recovery, the accuracy and the artifact written (prune/common.py)."""

from __future__ import annotations

import time
from typing import Any

from toolchain.core.artifact import Format
from toolchain.core.files import sha256_json, write_json
from toolchain.core.stage import StageResult, Workdir
from toolchain.prune.common import Setup, accuracy, artifact, recover, shared
from toolchain.prune.latency import Engine, compare, engine_of, search_fraction
from toolchain.prune.structured import ChannelPruner, EncoderPruner, choose_importance

REPORT, PLOT = "report.json", "prune.png"


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


def prune_structured(s: Setup, cfg, work: Workdir, start: float) -> StageResult:
    """Score, choose the plan (rank 0), prune and recover (every torchrun process), then
    measure, save and report (rank 0)."""
    from toolchain.training.parallel import close_distributed

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
