from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from edgesmith.toolchain.cli._run import dump
from edgesmith.toolchain.core.artifact import read_manifest
from edgesmith.toolchain.models.source import SourceSpec, resolve_source


def command(
    model: Annotated[str, typer.Argument(help="A model, engine directory or stage output.")],
) -> None:
    """Format, precision, inputs/outputs, hash and provenance of a model; for an ONNX model or
    an engine built from one, its weight sparsity per layer, 2:4 and compressed size."""
    art = resolve_source(SourceSpec(model=model))
    typer.echo(
        f"path:      {art.path}\nformat:    {art.format.value}\nprecision: {art.precision.value}"
    )
    typer.echo(f"sha256:    {art.sha256}\nparent:    {art.parent}")
    if art.io is None and art.format.value in ("onnx", "engine"):
        from edgesmith.toolchain.models.runners import runner_for

        art = replace(art, io=runner_for(art).io)
    if art.io is not None:
        for t in art.io.inputs:
            typer.echo(f"input:     {t.describe()}")
        for t in art.io.outputs:
            typer.echo(f"output:    {t.describe()}")
    onnx_file = _onnx_file(art)
    if onnx_file is not None:
        from edgesmith.toolchain.core.audit import audit, describe

        for line in describe(audit(onnx_file)):
            typer.echo(line)
    manifest = read_manifest(Path(model)) if Path(model).is_dir() else None
    if manifest:
        typer.echo(
            f"stage:     {manifest.get('stage')}\nmetrics:   {dump(manifest.get('metrics'))}"
        )
        # loading refused a directory whose files differ from the manifest: these match it
        typer.echo(f"integrity: {len(manifest.get('files', {}))} files match manifest.json")


def _onnx_file(art) -> Path | None:
    """The .onnx file the artifact is or runs (an ort-cpu engine's model); None otherwise."""
    path = Path(art.path)
    if art.format.value == "onnx":
        return path
    if art.format.value == "engine":
        from edgesmith.targets.base import read_engine_config

        name = read_engine_config(path).get("model")
        if isinstance(name, str) and name.endswith(".onnx") and (path / name).is_file():
            return path / name
    return None
