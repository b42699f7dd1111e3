"""Latency and throughput of a model on a target: warm-up, then percentiles of timed runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from edgesmith.targets.base import Runner
from edgesmith.toolchain.core.artifact import Format
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.files import write_json
from edgesmith.toolchain.core.stage import Inputs, Stage, StageConfig, StageResult, Workdir
from edgesmith.toolchain.core.timing import DEFAULT_SEQ, latency, synthetic_feeds

BENCH_FILE = "bench.json"


class BenchStage(StageConfig):
    kind: Literal["bench"] = "bench"
    target: str = "ort-cpu"
    batches: list[int] = [1, 8]
    # lengths of the non-batch symbolic axes (a sequence): [] times them at DEFAULT_SEQ (128)
    seqs: list[Annotated[int, Field(ge=1)]] = []
    warmup: int = Field(default=10, ge=0)
    iterations: int = Field(default=50, ge=1)
    threads: int | None = None


@dataclass
class BenchReport:
    """bench.json: per batch size (and sequence length), latency percentiles (ms) and
    throughput, with the threads and the instruction set they were measured with."""

    model: str
    target: str
    threads: int
    rows: list[dict[str, Any]]
    isa: dict[str, Any]


def bench(runner: Runner, cfg: BenchStage) -> tuple[int, list[dict[str, Any]]]:
    """(threads, a row per batch size and sequence length): warm-up, then percentiles of
    timed runs. A model with a sequence axis records the length of each row."""
    has_seq = any(not isinstance(d, int) for t in runner.io.inputs for d in t.dims[1:])
    if cfg.seqs and not has_seq:
        raise InvalidInput(
            "--seq: the model has no sequence axis (every input axis but the batch is fixed)"
        )
    rows = []
    for b in cfg.batches:
        for seq in cfg.seqs or [DEFAULT_SEQ]:
            feeds = synthetic_feeds(runner.io, b, seq)
            lat = latency(runner, feeds, cfg.warmup, cfg.iterations)
            row = {"batch": b, **({"seq": seq} if has_seq else {})}
            rows.append({**row, **lat, "throughput_per_s": b * 1e3 / lat["p50"]})
    threads = cfg.threads or getattr(runner, "threads", None) or os.cpu_count() or 1
    return threads, rows


def run(inputs: Inputs, cfg: BenchStage, work: Workdir) -> StageResult:
    from edgesmith.toolchain.models.runners import runner_for

    src = inputs.model
    if src.format is Format.onnx and cfg.target != "ort-cpu":
        raise InvalidInput(
            f"{src.path}: build it for {cfg.target} first; an ONNX file runs on ort-cpu"
        )
    if src.format is Format.engine:
        from edgesmith.targets.base import read_engine_config

        built_for = read_engine_config(src.path)["target"]
        if built_for != cfg.target:
            raise InvalidInput(f"{src.path}: an engine for {built_for}, not {cfg.target}")
    from edgesmith.toolchain.core.presets import detect_isa
    from edgesmith.toolchain.core.report import report_json

    runner = runner_for(src, threads=cfg.threads)
    threads, rows = bench(runner, cfg)
    result = report_json(
        BenchReport(str(src.path), cfg.target, threads, rows, detect_isa().summary())
    )
    write_json(work.out / BENCH_FILE, result)
    summary = "; ".join(
        f"batch {r['batch']}"
        + (f", seq {r['seq']}" if "seq" in r else "")
        + f": p50 {r['p50']:.3f} ms, p99 {r['p99']:.3f} ms, "
        f"{r['throughput_per_s']:.0f}/s"
        for r in result["rows"]
    )
    return StageResult(None, result, summary=f"{summary} ({result['threads']} threads)")


STAGE = Stage(
    "bench",
    BenchStage,
    run,
    command="edgesmith.toolchain.cli.bench:command",
    example="edgesmith bench build/engine --target ort-cpu --batch 1,8",
)
