from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from edgesmith.toolchain.cli._run import execute, one_stage, path_str
from edgesmith.toolchain.cli.options import (
    DynamicAxes,
    InputDecls,
    Out,
    PrintRecipe,
    Task,
    Threads,
    Weights,
)
from edgesmith.toolchain.distill.stage import DistillStage

D = DistillStage.default


def HELP(name: str) -> str:  # noqa: N802 (reads as the constant it stands for)
    """The shared training field's own description, as the derived commands show it."""
    f = DistillStage.model_fields[name]
    default = f.get_default()
    text = f.description or name
    return text + (f" (default {default})" if default is not None else "")

# the config's Literal: the parser enforces and lists the choices
LOSSES = DistillStage.model_fields["loss"].annotation

# The command's options (module-level so that its signature stays short).
_Teacher = Annotated[
    str,
    typer.Option(
        help="The teacher: package.module:factory (+ --weights) or a Hugging Face folder.",
        rich_help_panel="Input",
    ),
]
_Data = Annotated[
    Path,
    typer.Option(
        help="Training data: .npz, .npy folder, text lines or .jsonl; labels optional.",
        rich_help_panel="Data",
    ),
]
_Student = Annotated[
    str | None,
    typer.Option(
        help="The student's architecture: package.module:factory.", rich_help_panel="Student"
    ),
]
_StudentLayers = Annotated[
    int | None,
    typer.Option(
        help="Or: keep K of a Hugging Face teacher's layers, initialised from it.",
        rich_help_panel="Student",
    ),
]
_KeepLayer = Annotated[
    list[int] | None,
    typer.Option(
        "--keep-layer",
        help="Which teacher layer to keep (repeatable; default evenly spaced).",
        rich_help_panel="Student",
    ),
]
_EvalData = Annotated[
    Path | None,
    typer.Option(
        help="Eval data for the best checkpoint (default: 10% of --data held out).",
        rich_help_panel="Data",
    ),
]
_Tokenizer = Annotated[
    Path | None,
    typer.Option(
        help="Tokenizer folder for text data (default: the teacher's).", rich_help_panel="Data"
    ),
]
_SeqLen = Annotated[
    int | None,
    typer.Option(
        help=f"Token sequence length for text data (default {D('seq_len')}).",
        rich_help_panel="Data",
    ),
]
_Limit = Annotated[
    int | None, typer.Option(help="Use only the first N samples.", rich_help_panel="Data")
]
_Epochs = Annotated[
    int | None, typer.Option(help=HELP("epochs"), rich_help_panel="Training")
]
_Patience = Annotated[
    int | None, typer.Option(help=HELP("patience"), rich_help_panel="Training")
]
_WeightDecay = Annotated[
    float | None, typer.Option(help=HELP("weight_decay"), rich_help_panel="Training")
]
_BatchSize = Annotated[
    int | None,
    typer.Option(
        help=f"Global batch, split across torchrun processes (default {D('batch_size')}).",
        rich_help_panel="Training",
    ),
]
_Lr = Annotated[
    float | None,
    typer.Option(
        help="Peak learning rate (default: a range test's choice, held within 10x of 3e-3 "
        "for a factory student, 1e-4 for a derived one).",
        rich_help_panel="Training",
    ),
]
_Temperature = Annotated[
    float | None,
    typer.Option(
        help=f"Softmax temperature of the soft targets (default {D('temperature')}).",
        rich_help_panel="Training",
    ),
]
_Alpha = Annotated[
    float | None,
    typer.Option(
        help=f"Weight of the soft targets; 1 - alpha goes to the labels (default {D('alpha')}).",
        rich_help_panel="Training",
    ),
]
_Loss = Annotated[
    LOSSES | None,  # the parser enforces the choices
    typer.Option(
        help="soft targets (logits), embedding (MSE + cosine), or auto by the task.",
        rich_help_panel="Training",
    ),
]
_Output = Annotated[
    str | None,
    typer.Option(
        help="The output to compare (default: the only (batch, features) one).",
        rich_help_panel="Training",
    ),
]
_HiddenWeight = Annotated[
    float | None,
    typer.Option(
        help=f"Weight of the hidden-state MSE (derived students; default {D('hidden_weight')}).",
        rich_help_panel="Training",
    ),
]
_Dropout = Annotated[
    float | None,
    typer.Option(
        help="Dropout probability in the student while it trains (default: as built; 0 "
        "lets it match the teacher's outputs exactly).",
        rich_help_panel="Training",
    ),
]
_Seed = Annotated[
    int | None,
    typer.Option(
        help="Seed of initialisation, shuffling and the eval split.", rich_help_panel="Training"
    ),
]
_Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted run after its last complete epoch.",
        rich_help_panel="Training",
    ),
]


def command(
    teacher: _Teacher,
    data: _Data,
    out: Out,
    student: _Student = None,
    student_layers: _StudentLayers = None,
    keep_layer: _KeepLayer = None,
    weights: Weights = None,
    input: InputDecls = None,
    dynamic: DynamicAxes = None,
    task: Task = None,
    eval_data: _EvalData = None,
    tokenizer: _Tokenizer = None,
    seq_len: _SeqLen = None,
    limit: _Limit = None,
    epochs: _Epochs = None,
    patience: _Patience = None,
    batch_size: _BatchSize = None,
    weight_decay: _WeightDecay = None,
    lr: _Lr = None,
    temperature: _Temperature = None,
    alpha: _Alpha = None,
    loss: _Loss = None,
    output: _Output = None,
    hidden_weight: _HiddenWeight = None,
    dropout: _Dropout = None,
    seed: _Seed = None,
    resume: _Resume = False,
    threads: Threads = None,
    print_recipe: PrintRecipe = False,
) -> None:
    """Distil a teacher into a smaller student (under `torchrun --nproc-per-node N`: DDP)."""
    recipe = one_stage(
        {
            "model": teacher,
            "weights": path_str(weights),
            "inputs": input or [],
            "dynamic": dynamic or [],
            "task": task,
        },
        {
            "kind": "distill",
            "out": str(out),
            "student": student,
            "student_layers": student_layers,
            "keep_layers": keep_layer or None,
            "data": str(data),
            "eval_data": path_str(eval_data),
            "tokenizer": path_str(tokenizer),
            "seq_len": seq_len,
            "limit": limit,
            "epochs": epochs,
            "patience": patience,
            "batch_size": batch_size,
            "weight_decay": weight_decay,
            "lr": lr,
            "temperature": temperature,
            "alpha": alpha,
            "loss": loss,
            "output": output,
            "hidden_weight": hidden_weight,
            "dropout": dropout,
            "seed": seed,
            "resume": resume or None,
        },
        "distill",
    )
    speed = contextlib.nullcontext()
    if threads and not print_recipe:  # not part of the recipe: it changes the speed only
        from edgesmith.toolchain.models.torch import torch_threads

        speed = torch_threads(threads)
    with speed:  # under torchrun every process runs the pipeline (pipeline.py)
        execute(recipe, print_recipe)
