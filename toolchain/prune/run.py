"""The prune stage's work (prune/stage.py declares it). structured: score, choose the amount,
prune, recover, measure, report; the weight-sparsity methods (prune/weights.py) share the
set-up, the recovery, the accuracy and the artifact written (prune/common.py)."""

from __future__ import annotations

import time
from typing import Any

from edgesmith.toolchain.core.artifact import Format
from edgesmith.toolchain.core.files import sha256_json
from edgesmith.toolchain.core.report import write_report
from edgesmith.toolchain.core.stage import StageResult, Workdir
from edgesmith.toolchain.prune.common import Setup, accuracy, artifact, recover, shared
from edgesmith.toolchain.prune.latency import Engine, compare, engine_of, search_fraction
from edgesmith.toolchain.prune.report import PLOT, PruneReport, engine_times, plot
from edgesmith.toolchain.prune.structured import (
    ChannelPruner,
    EncoderPruner,
    Scoring,
    choose_importance,
)


def _pruner(s: Setup, kind: str, log):
    """The structured pruner for the source's kind."""
    model, wrapped = s.unpruned()
    scoring = Scoring(kind, s.train, s.output, log)
    if s.src.format is Format.hf:
        return EncoderPruner(model, s.cfg, scoring, wrapped)
    return ChannelPruner(model, s.cfg, scoring, wrapped)


def _choose_plan(pruner, cfg, work: Workdir, base: Engine) -> tuple[Any, dict | None]:
    """The plan (None: no amount reaches the target), from the fractions given or the
    smallest that meets --target-latency; and the search's record (None without a target)."""
    if cfg.target_latency is None:
        return pruner.plan(*cfg.fractions()), None
    batch = max(cfg.latency_batches)

    def measure(fraction: float) -> float:
        candidate = pruner.apply(pruner.plan(fraction))
        eng = engine_of(candidate, work.scratch / f"try-{fraction:.4f}", cfg.opset, cfg.threads)
        ms = compare({"unpruned": base, "pruned": eng}, [batch], pruner.seq, cfg.latency_rounds)
        t = ms[str(batch)]
        return t["pruned"] / t["unpruned"]

    search = search_fraction(measure, cfg.target_latency, log=work.log)
    record = {**search.to_dict(), "batch": batch, "seq": pruner.seq}
    return (None if search.chosen is None else pruner.plan(search.chosen)), record


def prune_structured(s: Setup, work: Workdir, start: float) -> StageResult:
    """Score, choose the plan (rank 0), prune and recover (every torchrun process), then
    measure, save and report (rank 0)."""
    from edgesmith.toolchain.training.parallel import close_distributed

    cfg = s.cfg
    kind = choose_importance(cfg.importance, s.train.labels is not None, s.loss)
    pruner = _pruner(s, kind, work.log)
    report = PruneReport(cfg.method, pruner.format, importance=kind)
    base = plan = None
    if work.rank == 0:
        base = engine_of(pruner.unpruned, work.scratch / "unpruned", cfg.opset, cfg.threads)
        plan, report.latency_search = _choose_plan(pruner, cfg, work, base)
    try:
        plan = shared(plan, work)
        if plan is not None:
            candidate = pruner.apply(plan)
            if work.rank == 0:
                report.accuracy = accuracy(s, pruner.wrapped, candidate.outputs)
            if s.epochs.count:
                fingerprint = sha256_json({"model": s.src.sha256, "plan": plan.digest()})
                report.recovery = recover(candidate, s, work, fingerprint)
    finally:
        close_distributed()
    if work.rank != 0:
        return StageResult(None)
    if plan is None:
        data = write_report(work.out, report)
        tried = ", ".join(
            f"{p['fraction']:.0%}: {p['ratio']:.2f}x" for p in report.latency_search["tried"]
        )
        return StageResult(None, data, passed=False, summary=(
            f"no amount of pruning reaches {cfg.target_latency}x the unpruned engine ({tried})"
        ))  # fmt: skip
    if report.recovery is not None:
        report.accuracy["after_recovery"] = report.recovery["best_metric"]
    path = candidate.save(work.out)
    final = engine_of(candidate, work.scratch / "pruned", cfg.opset, cfg.threads)
    ms = compare({"unpruned": base, "pruned": final}, cfg.latency_batches, pruner.seq,
                 cfg.latency_rounds)  # fmt: skip
    times = engine_times(ms, pruner.seq, cfg.threads, ("unpruned", "pruned"))
    report.latency_ms, report.latency_ratio = times.latency_ms, times.latency_ratio
    report.layers = plan.describe(pruner.before)
    report.parameters = {"before": pruner.before["parameters"], "after": candidate.parameters}
    report.plot = plot(report, work.out / PLOT)
    report.seconds = round(time.perf_counter() - start, 1)
    missed = ""
    if report.latency_search is not None:  # recorded in the report before it is written
        met, missed = target_check(cfg, report.latency_search["batch"], report.latency_ratio)
        batch = str(report.latency_search["batch"])
        report.latency_search.update(final_ratio=report.latency_ratio[batch], target_met=met)
    data = write_report(work.out, report)
    structure = {"method": cfg.method, **candidate.structure}
    structure["parameters"] = candidate.parameters["total"]
    art = artifact(s.src, candidate, path, s.teacher.task, structure)
    return StageResult(art, data, passed=not missed, summary=summary(report, missed))


def summary(report: PruneReport, missed: str) -> str:
    params, acc, ratio = report.parameters, report.accuracy, report.latency_ratio
    summary = (
        f"{params['after']['total']:,} of {params['before']['total']:,} parameters; engine "
        + ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratio.items())
        + f"; {acc['metric']} {acc['before_pruning']:.4f} → pruned {acc['after_pruning']:.4f}"
        + (f" → recovered {acc['after_recovery']:.4f}" if "after_recovery" in acc else "")
    )
    return f"{missed}; {summary}" if missed else summary


def target_check(cfg, batch: int, ratios: dict[str, float]) -> tuple[bool, str]:
    """The final engine, re-measured after recovery, against --target-latency (the search's
    points are single measurements; this one decides): (met, the message when missed)."""
    ratio = ratios[str(batch)]
    allowed = cfg.target_latency * (1 + cfg.latency_tolerance)
    if ratio <= allowed:
        return True, ""
    return False, (
        f"target latency missed: the pruned engine re-measured {ratio:.3f}x at batch {batch} "
        f"(target {cfg.target_latency}x, tolerance {cfg.latency_tolerance:.0%})"
    )
