from __future__ import annotations

from typing import Annotated

import typer

from edgesmith.toolchain.cli._run import execute, one_stage, path_str
from edgesmith.toolchain.cli.options import DynamicAxes, InputDecls, Out, PrintRecipe, Task, Weights
from edgesmith.toolchain.export.stage import ExportStage

D = ExportStage.default
# the config's Literal: the parser enforces and lists the choices
EXPORTERS = ExportStage.model_fields["exporter"].annotation


def command(
    source: Annotated[
        str, typer.Argument(help="package.module:factory, a .pt2, or a Hugging Face folder.")
    ],
    out: Out,
    weights: Weights = None,
    input: InputDecls = None,
    dynamic: DynamicAxes = None,
    output: Annotated[
        list[str] | None,
        typer.Option(
            "--output-name",
            "--output",
            help="Output names, in order (repeat it; default: the names the model's outputs "
            "carry: dict keys, dataclass or namedtuple fields, `output`, `output_0`...).",
        ),
    ] = None,
    task: Task = None,
    opset: Annotated[int | None, typer.Option(help=f"ONNX opset (default {D('opset')}).")] = None,
    atol: Annotated[
        float | None,
        typer.Option(
            help=f"Absolute tolerance of the check against the source (default {D('atol')})."
        ),
    ] = None,
    rtol: Annotated[
        float | None, typer.Option(help=f"Relative tolerance of the check (default {D('rtol')}).")
    ] = None,
    exporter: Annotated[
        EXPORTERS,  # Literal | None: choices enforced
        typer.Option(
            help="Hugging Face exporter: torch (torch.onnx dynamo; transformers 4 and 5) or "
            "optimum (needs optimum-onnx, transformers < 4.58). Default torch."
        ),
    ] = None,
    print_recipe: PrintRecipe = False,
) -> None:
    """Export a fine-tuned model to ONNX and check it against the source (exit 1 if it differs)."""
    recipe = one_stage(
        {
            "model": source,
            "weights": path_str(weights),
            "inputs": input or [],
            "dynamic": dynamic or [],
            "outputs": output or [],
            "task": task,
        },
        {
            "kind": "export",
            "out": str(out),
            "opset": opset,
            "atol": atol,
            "rtol": rtol,
            "exporter": exporter,
        },
        "export",
    )
    execute(recipe, print_recipe)
