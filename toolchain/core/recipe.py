"""The typed recipe: one TOML file naming a source and the stages to run on it.

Every single-stage CLI command builds one of these and runs it through the same pipeline,
so the CLI and recipes cannot drift apart (`--print-recipe` prints it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import tomllib
from pydantic import (
    ValidationError,
    field_validator,
)

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.stage import StageConfig, Strict, stages

# a source named package.module:factory (models/source.py imports it)
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Source(Strict):
    """The fine-tuned model: a factory (+ weights), a .pt2, a Hugging Face folder or an ONNX."""

    model: str
    weights: str | None = None
    inputs: list[str] = []
    dynamic: list[str] = []
    outputs: list[str] = []
    task: str | None = None


class Gated(StageConfig):
    """The accuracy gate's settings, shared by every stage that gates (validate, quantize)."""

    metrics: list[str] = []  # default: accuracy when the data has labels, else cosine
    max_drop: float | dict[str, float] = 0.01  # fractions: 0.003 = 0.3 points of accuracy
    output: str | None = None  # gate this output only; default every output a metric fits

    @field_validator("max_drop")
    @classmethod
    def _non_negative(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        values = v.values() if isinstance(v, dict) else [v]
        if any(x < 0 for x in values):
            raise ValueError("max_drop must be >= 0")
        return v

    def budget(self, metric: str) -> float:
        if isinstance(self.max_drop, dict):
            return self.max_drop.get(metric, self.max_drop.get("default", 0.01))
        return self.max_drop


class Recipe(Strict):
    name: str = "recipe"
    out: str = "build/run"
    source: Source
    stages: list[StageConfig]

    @field_validator("stages", mode="before")
    @classmethod
    def _typed_stages(cls, items: Any) -> list[StageConfig]:
        if not isinstance(items, list) or not items:
            raise ValueError("expected a non-empty list of [[stages]] tables")
        known = stages()
        out = []
        for i, item in enumerate(items):
            if isinstance(item, StageConfig):
                out.append(item)
                continue
            kind = item.get("kind") if isinstance(item, dict) else None
            if kind not in known:
                raise ValueError(f"unknown stage kind {kind!r}; available: {', '.join(known)}")
            try:
                out.append(known[kind].config.model_validate(item))
            except ValidationError as e:
                raise ValueError(describe_validation_error(f"[{i}] ({kind})", e)) from None
        return out

    def to_toml(self) -> str:
        """The recipe as TOML (what --print-recipe shows); loads back to an equal recipe."""
        lines = [f"name = {_toml(self.name)}", f"out = {_toml(self.out)}", "", "[source]"]
        lines += [
            f"{k} = {_toml(v)}" for k, v in self.source.model_dump(exclude_defaults=True).items()
        ]
        for stage in self.stages:
            lines += ["", "[[stages]]", f"kind = {_toml(stage.kind)}"]
            for k, v in stage.model_dump(exclude_defaults=True, exclude={"kind"}).items():
                lines.append(f"{k} = {_toml(v)}")
        return "\n".join(lines) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def describe_validation_error(origin: str, e: ValidationError, as_flags: bool = False) -> str:
    """One line: the file, the field path and what was expected (`as_flags`: a command's
    options, named as the user typed them: batch_size → --batch-size)."""
    err = e.errors()[0]
    # "max_drop.float" → "max_drop": the union member tried is noise to a user.
    parts = [str(p) for p in err["loc"] if p not in ("float", "int", "str", "dict[str,float]")]
    if as_flags and parts:
        parts = ["--" + parts[0].replace("_", "-"), *parts[1:]]
    loc = ".".join(parts) or ("" if as_flags else "(top level)")
    quiet = ("missing", "extra_forbidden", "value_error")
    got = f" (got {err['input']!r})" if err["type"] not in quiet else ""
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{origin}: {loc + ': ' if loc else ''}{msg}{got}{more}"


def recipe_from_dict(data: dict[str, Any], origin: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise InvalidInput(describe_validation_error(origin, e)) from None


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"recipe not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{path}: not UTF-8 text (at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{path}: not valid TOML ({e})") from None
    return recipe_from_dict(data, str(path))


def check_paths(recipe: Recipe, path: Path) -> None:
    """The files a recipe names exist, said with the recipe and the field: checked by `run`
    before any stage, so a typo in the last stage does not cost the first stage's work (not on
    load: a recipe is valid before make has written its inputs)."""
    named = [("source.model", recipe.source.model), ("source.weights", recipe.source.weights)]
    for i, st in enumerate(recipe.stages):
        named += [(f"stages[{i}] ({st.kind}).{f}", getattr(st, f)) for f in st.FILE_FIELDS]
    for field, value in named:
        if not isinstance(value, str) or Path(value).exists():
            continue
        if field == "source.model" and FACTORY.match(value):
            continue  # package.module:factory, imported by the export stage
        raise InvalidInput(f"{path}: {field}: '{value}' does not exist")
