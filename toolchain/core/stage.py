"""The stage contract: what every stage declares, receives and returns, and the registry.

A stage is one module that defines
- its config: a `StageConfig` subclass (pydantic, extra="forbid") with `kind` as a Literal;
  `FILE_FIELDS` names the fields that are data files it reads, `MODEL_FIELDS` the fields
  that name models it reads besides the flowing artifact (a reference, a teacher);
- `run(inputs: Inputs, cfg, work: Workdir) -> StageResult`;
- `STAGE = Stage(kind, config, run, ...)`, registered once (BUILTIN_STAGES below, or
  `register(STAGE)` for a plug-in).

From that one registration come the recipe schema (`[[stages]] kind = ...`), the pipeline's
runner and the CLI command (its own, or one derived from the config's fields). The pipeline
resolves the declared inputs, hashes them into the cache key, refuses an output that is one
of them, owns the output directory (`work.out`, renamed into place when `run` returns) and
the scratch and cache directories (`work.scratch`, `work.cache`).

A stage module keeps its heavy imports (torch, onnx, onnxruntime) inside its functions:
`edgesmith --help` imports every stage module and none of those packages.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from edgesmith.toolchain.core.artifact import ModelArtifact
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.files import sha256_path


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageConfig(Strict):
    """The base of every stage's config (toolchain/core/stage.py): `kind` and `out`."""

    kind: str
    out: str | None = Field(default=None, description="output directory; default OUT/<i>-<kind>")
    # Fields that name files whose contents the stage reads: hashed into its cache key.
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ()
    # Fields that name models the stage reads besides the flowing one, each with the field of
    # its weights (or None). The pipeline resolves them (inputs.named), hashes them into the
    # cache key and refuses an output that is one of them. The value "source" names the
    # recipe's source model.
    MODEL_FIELDS: ClassVar[dict[str, str | None]] = {}

    def files_digest(self) -> dict[str, str]:
        """sha256 of each FILE_FIELDS file that exists (what the cache key and resume check)."""
        out = {}
        for name in self.FILE_FIELDS:
            value = getattr(self, name, None)
            if isinstance(value, str) and Path(value).exists():
                out[name] = sha256_path(Path(value))
        return out

    @classmethod
    def default(cls, name: str) -> Any:
        """A field's default: what a CLI option left out means (one place, no drift)."""
        return cls.model_fields[name].get_default(call_default_factory=True)


# kind → the module whose STAGE registers it. Adding a stage: its module and one line here.
BUILTIN_STAGES: dict[str, str] = {
    "prune": "edgesmith.toolchain.prune.stage",
    "distill": "edgesmith.toolchain.distill.stage",
    "export": "edgesmith.toolchain.export.stage",
    "quantize": "edgesmith.toolchain.quantize.stage",
    "build": "edgesmith.toolchain.build",
    "validate": "edgesmith.toolchain.validate.stage",
    "bench": "edgesmith.toolchain.bench",
}


@dataclass
class StageResult:
    """What a stage made. `artifact` None: the stage passes its input on (validate, bench)."""

    artifact: ModelArtifact | None
    metrics: dict[str, Any] = field(default_factory=dict)
    passed: bool = True
    summary: str = ""  # one line for the run log, e.g. the gate verdict


@dataclass(frozen=True)
class Inputs:
    """The models a stage reads: the one flowing through the recipe, and the declared others
    (by config field name, resolved by the pipeline: `inputs["reference"]`)."""

    model: ModelArtifact
    named: Mapping[str, ModelArtifact] = field(default_factory=dict)

    def __getitem__(self, name: str) -> ModelArtifact:
        return self.named[name]

    def get(self, name: str) -> ModelArtifact | None:
        return self.named.get(name)


def _quiet(_message: str) -> None:
    return None


@dataclass(frozen=True)
class Workdir:
    """Where a stage writes.

    out: the stage's output directory, temporary while `run` runs; complete or absent after.
    scratch: this stage's own space that outlives an interrupted run (checkpoints for
        `resume`); the pipeline removes it once the output is in place.
    cache: content-addressed entries shared by the stages of one kind under the same root
        (calibration statistics); kept between runs.
    rank: this process's rank under torchrun (0 otherwise); only rank 0's output is kept.
    """

    out: Path
    scratch: Path
    cache: Path
    log: Callable[[str], None] = _quiet
    rank: int = 0


Runner = Callable[[Inputs, "StageConfig", Workdir], StageResult]


@dataclass(frozen=True)
class Stage:
    """One registration: everything the recipe, the pipeline and the CLI need to know."""

    kind: str
    config: type[StageConfig]
    run: Runner
    help: str = ""  # the CLI command's one-line help
    example: str = ""  # one command line, shown under the command's --help
    # The CLI command ("module:function" or a function); None: derived from `config`.
    command: str | Callable[..., None] | None = None
    # What changes the output beyond the config and the inputs (quantize: the preset this
    # CPU resolves to), so that a cache never crosses machines wrongly.
    cache_context: Callable[[StageConfig], dict[str, Any]] | None = None
    # True: every torchrun process runs it in step (distill); the others write nothing.
    distributed: bool = False
    # The derived command's name for its input model, when not the positional MODEL
    # (distill: --teacher); and whether it takes --threads for PyTorch (speed only, not
    # part of the recipe).
    model_option: str = ""
    torch_threads: bool = False

    def __post_init__(self) -> None:
        declared = self.config.model_fields["kind"].default
        if declared != self.kind:
            raise ValueError(f"stage '{self.kind}': its config's kind is {declared!r}")


_REGISTRY: dict[str, Stage] = {}
PLUGIN_GROUP = "edgesmith.stages"  # a package's entry point NAME = "module:STAGE" adds a stage
_plugins_loaded = False


def register(stage: Stage) -> Stage:
    """Add (or replace) a stage; returns it, so a module can write STAGE = register(...)."""
    _REGISTRY[stage.kind] = stage
    return stage


def unregister(kind: str) -> None:
    _REGISTRY.pop(kind, None)


def _load_plugins() -> None:
    """Stages other packages register under the `edgesmith.stages` entry-point group."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        stage = ep.load()
        if not isinstance(stage, Stage):
            raise InvalidInput(f"entry point {ep.name} = {ep.value}: not an edgesmith Stage")
        _REGISTRY.setdefault(stage.kind, stage)


def stages() -> dict[str, Stage]:
    """Every registered stage by kind: the built-in ones (imported on first use), then plug-ins."""
    for kind, module in BUILTIN_STAGES.items():
        if kind not in _REGISTRY:
            _REGISTRY[kind] = importlib.import_module(module).STAGE
    _load_plugins()
    order = list(BUILTIN_STAGES) + [k for k in _REGISTRY if k not in BUILTIN_STAGES]
    return {k: _REGISTRY[k] for k in order}


def get_stage(kind: str) -> Stage:
    known = stages()
    if kind not in known:
        raise InvalidInput(f"unknown stage kind {kind!r}; available: {', '.join(known)}")
    return known[kind]
