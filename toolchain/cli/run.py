from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesmith.toolchain.cli._run import execute
from edgesmith.toolchain.cli.options import PrintRecipe
from edgesmith.toolchain.core.recipe import check_paths, load_recipe


def command(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML (see recipes/).")],
    print_recipe: PrintRecipe = False,
) -> None:
    """Run a recipe's stages in order; stages whose inputs did not change are not redone."""
    loaded = load_recipe(recipe)
    if not print_recipe:
        check_paths(loaded, recipe)
    execute(loaded, print_recipe)
