from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesmith.toolchain.cli._run import execute, one_stage, path_str
from edgesmith.toolchain.cli.options import (
    GateOutput,
    MaxDrop,
    Metric,
    PrintRecipe,
    Task,
    Weights,
    parse_budget,
)
from edgesmith.toolchain.validate.stage import ValidateStage

D = ValidateStage.default


def command(
    candidate: Annotated[
        str, typer.Argument(help="Model to validate: engine dir, .onnx, or a source.")
    ],
    reference: Annotated[
        str, typer.Option(help="The fp32 original: PyTorch source, .onnx or engine dir.")
    ],
    data: Annotated[
        Path, typer.Option(help=".npz, a folder of .npy, or text lines (+ tokenizer).")
    ],
    metric: Metric = None,
    max_drop: MaxDrop = None,
    output: GateOutput = None,
    reference_weights: Annotated[
        Path | None, typer.Option(help="safetensors for a factory reference.")
    ] = None,
    weights: Weights = None,
    task: Task = None,
    tokenizer: Annotated[Path | None, typer.Option(help="Tokenizer folder for text data.")] = None,
    seq_len: Annotated[
        int | None,
        typer.Option(help=f"Token sequence length for text data (default {D('seq_len')})."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help=f"Samples per inference call (default {D('batch_size')})."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N samples.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory.")] = Path(
        "build/validate"
    ),
    print_recipe: PrintRecipe = False,
) -> None:
    """Validate a candidate against the fp32 original on real data; exit 1 if over budget."""
    recipe = one_stage(
        {"model": candidate, "weights": path_str(weights), "task": task},
        {
            "kind": "validate",
            "out": str(out),
            "data": str(data),
            "reference": reference,
            "reference_weights": path_str(reference_weights),
            "metrics": metric or [],
            "max_drop": parse_budget(max_drop),
            "output": output,
            "tokenizer": path_str(tokenizer),
            "seq_len": seq_len,
            "batch_size": batch_size,
            "limit": limit,
        },
        "validate",
    )
    execute(recipe, print_recipe)
