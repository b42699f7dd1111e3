"""The Target protocol: what builds an engine from ONNX, and what runs it."""

from __future__ import annotations

import difflib
import json
import os
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, get_args, get_origin, runtime_checkable

import numpy as np

from edgesmith.toolchain.core.artifact import IoSpec, ModelArtifact
from edgesmith.toolchain.core.errors import InvalidInput

ENGINE_CONFIG = "engine.json"  # in every engine directory: target name and session settings


@runtime_checkable
class Runner(Protocol):
    """Something that runs a model: feeds by input name in, outputs by name out."""

    io: IoSpec

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Option:
    """One build option a target declares in its `OPTIONS`: a key that `--option KEY=VALUE`
    and a recipe's `options` table may set (values as TOML writes them).

    type: bool, int, float, str, Path (a file or directory, written as a string), dict (a
    TOML table), list[T], or a union such as str | list[str]. default: the value when the key
    is not given; None means unset and the target decides (its help says how).
    """

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: int | None = None  # the lowest value an int option takes

    def type_label(self) -> str:
        """The type as `targets --options` and the error messages write it."""
        label = _type_name(self.type)
        if self.choices is not None:
            return f"{label} {{{','.join(map(str, self.choices))}}}"
        return f"{label} >= {self.minimum}" if self.minimum is not None else label

    def default_label(self) -> str:
        if self.default is None:
            return "-"
        if isinstance(self.default, bool):
            return str(self.default).lower()  # as TOML writes it
        if isinstance(self.default, list | tuple):
            return "[" + ", ".join(map(str, self.default)) + "]"
        return str(self.default)

    def check(self, value: Any, target: str) -> Any:
        """`value` if it is of this option's type (and among its choices, at or above its
        minimum); None only where the default is None (unset). Else InvalidInput."""
        if value is None and self.default is None:
            return None
        ok = value is not None and _matches(value, self.type)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.minimum is not None:
            ok = value >= self.minimum
        if not ok:
            expected = self.type_label()
            if self.choices is not None:
                expected = "one of " + ", ".join(map(str, self.choices))
            raise InvalidInput(f"{target} option {self.name}: expected {expected}, got {value!r}")
        return value


def _type_name(tp: Any) -> str:
    if isinstance(tp, types.UnionType):
        return " | ".join(_type_name(t) for t in get_args(tp))
    if get_origin(tp) is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    return {Path: "path", dict: "table"}.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value: Any, tp: Any) -> bool:
    """Whether `value` is of the declared type. A bool is not an int (TOML keeps them apart);
    a list may also be a tuple (a default, or a value given from Python)."""
    if isinstance(tp, types.UnionType):
        return any(_matches(value, t) for t in get_args(tp))
    if get_origin(tp) is list:
        (item,) = get_args(tp)
        return isinstance(value, list | tuple) and all(_matches(v, item) for v in value)
    if tp in (int, float):
        return isinstance(value, int | tp) and not isinstance(value, bool)
    if tp is Path:
        return isinstance(value, str | os.PathLike) and str(value) != ""
    if tp is dict:
        return isinstance(value, Mapping)
    return isinstance(value, tp)


def check_options(
    target: str, declared: Sequence[Option], given: Mapping[str, Any]
) -> dict[str, Any]:
    """Every declared option's value: the given ones checked against the declaration, the
    rest their default. An undeclared key is InvalidInput naming it, a close match and the
    keys `target` takes. Checked values pass again unchanged (a target may check values
    the build stage already checked)."""
    names = [o.name for o in declared]
    unknown = [k for k in given if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        takes = ", ".join(names) if names else "no options"
        which = f"option{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}"
        raise InvalidInput(f"unknown {target} {which}{hint}; {target} takes {takes}")
    values = {o.name: o.default for o in declared}
    for o in declared:
        if o.name in given:
            values[o.name] = o.check(given[o.name], target)
    return values


def option_values(target: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a build for `target` (an instance or class), checked against its
    `OPTIONS` and with the defaults filled in. A target that declares none takes none."""
    return check_options(target.name, getattr(target, "OPTIONS", ()), options)


def listed(value: str | Sequence[str]) -> tuple[str, ...]:
    """An option given as a list or as a comma-separated string ('a,b' is ['a', 'b']): its
    items, stripped, blanks left out."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(s.strip() for s in items if s.strip())


@dataclass(frozen=True)
class BuildConfig:
    """Per-build settings; `options` holds the target's own keys, as given or as already
    checked: each target reads them through option_values against its `OPTIONS`."""

    options: dict[str, Any] = field(default_factory=dict)


class Target(Protocol):
    name: ClassVar[str]
    OPTIONS: ClassVar[tuple[Option, ...]]  # the build options it takes (`targets --options`)

    def unavailable_reason(self) -> str | None:
        """None when this machine can build and run the target, else why not (one line)."""
        ...

    def build(self, model: ModelArtifact, cfg: BuildConfig, out: Path) -> ModelArtifact:
        """Write an engine into the (empty, temporary) directory `out` and return it."""
        ...

    def load(self, engine: ModelArtifact, threads: int | None = None) -> Runner: ...


def read_engine_config(directory: Path) -> dict[str, Any]:
    p = Path(directory) / ENGINE_CONFIG
    if not p.is_file():
        raise InvalidInput(f"{directory}: not an engine directory (no {ENGINE_CONFIG})")
    return json.loads(p.read_text())
