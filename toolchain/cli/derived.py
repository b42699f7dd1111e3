"""The CLI command of a stage that does not write its own: derived from its config's fields.

`edgesmith KIND MODEL -o OUT [--field VALUE ...] [--print-recipe]`: one option per config
field (a list field is a repeatable option), every option defaulting to None so that what is
left out takes the config's own default, and the same one-stage recipe as every command.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import typer

from edgesmith.toolchain.cli._run import execute, one_stage, path_str
from edgesmith.toolchain.cli.options import DynamicAxes, InputDecls, Task, Weights
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.stage import Stage

SKIP = {"kind", "out", "weights", "task", "input", "dynamic"}  # the output, the source's flags
SCALARS = (str, int, float, bool)
TorchThreads = Annotated[
    int | None,
    typer.Option(
        "--threads", min=1, rich_help_panel="Training",
        help="PyTorch threads while training (speed only: not part of the recipe).",
    ),
]  # fmt: skip


def _option_type(annotation: Any) -> tuple[Any, bool]:
    """The click-friendly type of a field, and whether it is a list (a repeatable option)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _option_type(args[0]) if len(args) == 1 else (str, False)
    if origin is list:
        (item,) = typing.get_args(annotation) or (str,)
        return (item if item in SCALARS else str), True
    if origin is typing.Literal:  # the parser enforces and shows the choices
        return annotation, False
    return (annotation if annotation in SCALARS else str), False


def _parse(name: str, value: Any, annotation: Any) -> Any:
    """A value typed as str because its field is not a scalar (a dict, a union): JSON or text;
    a list's values split at commas (the config converts each item to its type)."""
    if isinstance(value, list):
        return [item.strip() for v in value for item in str(v).split(",") if item.strip()]
    if not isinstance(value, str) or _option_type(annotation)[0] is not str:
        return value
    if typing.get_origin(annotation) in (dict,) or annotation is dict:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise InvalidInput(f"--{name.replace('_', '-')} '{value}': expected JSON") from None
    return value


def derived_command(stage: Stage):
    """A typer command for `stage` built from its config."""
    fields = {k: f for k, f in stage.config.model_fields.items() if k not in SKIP}
    model_help = "The input model: a Hugging Face folder, or package.module:factory (+ --weights)."
    model = (
        typer.Option(f"--{stage.model_option}", help=model_help, rich_help_panel="Input")
        if stage.model_option
        else typer.Argument(help=model_help)
    )
    params = [
        inspect.Parameter(
            "model",
            inspect.Parameter.KEYWORD_ONLY if stage.model_option else
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[str, model],
        ),
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
        ),
        inspect.Parameter(
            "weights", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Weights
        ),
        inspect.Parameter("input", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=InputDecls),
        inspect.Parameter("dynamic", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=DynamicAxes),
        inspect.Parameter("task", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Task),
    ]  # fmt: skip
    from edgesmith.toolchain.training.config import Training

    shared = set(Training.model_fields) if issubclass(stage.config, Training) else set()
    # the method's own options first, then the training options every trainer shares
    for name, f in sorted(fields.items(), key=lambda kv: kv[0] in shared):
        # options grouped in --help: the method's own, then the training every trainer shares
        panel = "Training" if name in shared else "Method"
        kind, repeatable = _option_type(f.annotation)
        # a list is written as every command writes lists: comma-separated (1,8), or repeated
        typ = list[str] if repeatable else kind
        default = f.get_default(call_default_factory=True)
        help_text = f.description or name.replace("_", " ")
        if repeatable:
            help_text += "; comma-separated, or repeated"
        if f.is_required():
            help_text += " (required)"
        elif default not in (None, [], {}):
            help_text += f" (default {default})"
        flag = "--" + name.replace("_", "-")
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    typ | None, typer.Option(flag, help=help_text, rich_help_panel=panel)
                ],
            )
        )
    if stage.torch_threads:
        params.append(
            inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=TorchThreads)
        )  # fmt: skip
    params.append(
        inspect.Parameter(
            "print_recipe",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool, typer.Option("--print-recipe", help="Print the recipe TOML and exit.")
            ],
        )
    )

    def command(**kw: Any) -> None:
        values = {
            k: _parse(k, v, fields[k].annotation)
            for k, v in kw.items()
            if k in fields and v not in (None, [])
        }
        stage_cfg = {"kind": stage.kind, "out": str(kw["out"]), **values}
        source = {"model": kw["model"], "weights": path_str(kw["weights"]), "task": kw["task"],
                  "inputs": kw["input"] or [], "dynamic": kw["dynamic"] or []}  # fmt: skip
        speed = contextlib.nullcontext()
        if kw.get("threads") and not kw["print_recipe"]:  # not in the recipe: speed only
            from edgesmith.toolchain.models.torch import torch_threads

            speed = torch_threads(kw["threads"])
        with speed:  # under torchrun every process runs the pipeline (pipeline.py)
            execute(one_stage(source, stage_cfg, stage.kind), kw["print_recipe"])

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = stage.help or (stage.config.__doc__ or "").strip().splitlines()[0]
    command.__name__ = stage.kind
    return command
