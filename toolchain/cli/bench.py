from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolchain.cli._run import execute, one_stage
from toolchain.cli.options import PrintRecipe, Target, Threads
from toolchain.core.errors import InvalidInput


def command(
    model: Annotated[str, typer.Argument(help="Engine directory or .onnx.")],
    target: Target = "ort-cpu",
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8",
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 10,
    iterations: Annotated[int, typer.Option(help="Timed runs per batch size.")] = 50,
    threads: Threads = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where bench.json goes.")] = Path(
        "build/bench"
    ),
    print_recipe: PrintRecipe = False,
) -> None:
    """Latency (p50/p90/p99) and throughput on a target, after a warm-up."""
    try:
        batches = [int(b) for b in batch.split(",")]
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
