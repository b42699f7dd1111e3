from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesmith.toolchain.bench import BenchStage
from edgesmith.toolchain.cli._run import execute, one_stage
from edgesmith.toolchain.cli.options import PrintRecipe, Target, Threads
from edgesmith.toolchain.core.errors import InvalidInput

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
    try:
        batches = [int(b) for b in batch.split(",")] if batch is not None else None
    except ValueError:
        raise InvalidInput(
            f"--batch '{batch}': expected integers joined by commas, e.g. 1,8"
        ) from None
    recipe = one_stage(
        {"model": model},
        {
            "kind": "bench",
            "out": str(out),
            "target": target,
            "batches": batches,
            "warmup": warmup,
            "iterations": iterations,
            "threads": threads,
        },
        "bench",
    )
    execute(recipe, print_recipe)
