from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from toolchain.cli._run import dump
from toolchain.core.artifact import read_manifest
from toolchain.export.source import SourceSpec, resolve_source


def command(
    model: Annotated[str, typer.Argument(help="A model, engine directory or stage output.")],
) -> None:
    """Format, precision, inputs/outputs, hash and provenance of a model."""
    art = resolve_source(SourceSpec(model=model))
    typer.echo(
        f"path:      {art.path}\nformat:    {art.format.value}\nprecision: {art.precision.value}"
    )
    typer.echo(f"sha256:    {art.sha256}\nparent:    {art.parent}")
    if art.io is None and art.format.value in ("onnx", "engine"):
        from toolchain.runners import runner_for

        art = replace(art, io=runner_for(art).io)
    if art.io is not None:
        for t in art.io.inputs:
            typer.echo(f"input:     {t.describe()}")
        for t in art.io.outputs:
            typer.echo(f"output:    {t.describe()}")
    manifest = read_manifest(Path(model)) if Path(model).is_dir() else None
    if manifest:
        typer.echo(
            f"stage:     {manifest.get('stage')}\nmetrics:   {dump(manifest.get('metrics'))}"
        )
