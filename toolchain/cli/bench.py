from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesmith.toolchain.bench import BenchStage
from edgesmith.toolchain.cli._run import execute, one_stage
from edgesmith.toolchain.cli.options import PrintRecipe, Target, Threads, int_list

D = BenchStage.default


def command(
    model: Annotated[str, typer.Argument(help="Engine directory or .onnx.")],
    target: Target = None,
    batch: Annotated[
        str | None,
        typer.Option(
            help=f"Batch sizes, comma-separated (default {','.join(map(str, D('batches')))})."
        ),
    ] = None,
    warmup: Annotated[
        int | None, typer.Option(help=f"Untimed runs first (default {D('warmup')}).")
    ] = None,
    seq: Annotated[
        str | None,
        typer.Option(
            help="Sequence lengths of a text model, comma-separated (default 128): the shapes "
            "users run, e.g. 16,128."
        ),
    ] = None,
    iterations: Annotated[
        int | None, typer.Option(help=f"Timed runs per batch size (default {D('iterations')}).")
    ] = None,
    threads: Threads = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where bench.json goes.")] = Path(
        "build/bench"
    ),
    print_recipe: PrintRecipe = False,
) -> None:
    """Latency (p50/p90/p99) and throughput on a target, after a warm-up."""
    recipe = one_stage(
        {"model": model},
        {
            "kind": "bench",
            "out": str(out),
            "target": target,
            "batches": int_list("--batch", batch),
            "seqs": int_list("--seq", seq),
            "warmup": warmup,
            "iterations": iterations,
            "threads": threads,
        },
        "bench",
    )
    execute(recipe, print_recipe)
