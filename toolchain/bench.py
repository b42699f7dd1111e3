"""Latency and throughput of a model on a target: warm-up, then percentiles of timed runs."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from targets.base import Runner
from toolchain.core.artifact import Format
from toolchain.core.errors import InvalidInput
from toolchain.core.files import write_json
from toolchain.core.stage import Inputs, Stage, StageConfig, StageResult, Workdir
from toolchain.core.timing import latency, synthetic_feeds

BENCH_FILE = "bench.json"


class BenchStage(StageConfig):
    kind: Literal["bench"] = "bench"
    target: str = "ort-cpu"
    batches: list[int] = [1, 8]
    warmup: int = Field(default=10, ge=0)
    iterations: int = Field(default=50, ge=1)
    threads: int | None = None


def bench(
    runner: Runner, batches: list[int], warmup: int, iterations: int, threads: int | None
) -> dict:
    rows = []
    for b in batches:
        lat = latency(runner, synthetic_feeds(runner.io, b), warmup, iterations)
        rows.append({"batch": b, **lat, "throughput_per_s": b * 1e3 / lat["p50"]})
    return {"threads": threads or getattr(runner, "threads", None) or os.cpu_count(), "rows": rows}


def run(inputs: Inputs, cfg: BenchStage, work: Workdir) -> StageResult:
    from toolchain.models.runners import runner_for

    src = inputs.model
    if src.format is Format.onnx and cfg.target != "ort-cpu":
        raise InvalidInput(
            f"{src.path}: build it for {cfg.target} first; an ONNX file runs on ort-cpu"
        )
    if src.format is Format.engine:
        from targets.base import read_engine_config

        built_for = read_engine_config(src.path)["target"]
        if built_for != cfg.target:
            raise InvalidInput(f"{src.path}: an engine for {built_for}, not {cfg.target}")
    runner = runner_for(src, threads=cfg.threads)
    result = {
        "model": str(src.path),
        "target": cfg.target,
        **bench(runner, cfg.batches, cfg.warmup, cfg.iterations, cfg.threads),
    }
    write_json(work.out / BENCH_FILE, result)
    summary = "; ".join(
        f"batch {r['batch']}: p50 {r['p50']:.3f} ms, p99 {r['p99']:.3f} ms, "
        f"{r['throughput_per_s']:.0f}/s"
        for r in result["rows"]
    )
    return StageResult(None, result, summary=f"{summary} ({result['threads']} threads)")


STAGE = Stage(
    "bench",
    BenchStage,
    run,
    command="toolchain.cli.bench:command",
)
