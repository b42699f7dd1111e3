"""What flows between stages: a model artifact, its inputs/outputs, and its manifest."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.files import file_hashes, sha256_path, write_json

MANIFEST = "manifest.json"
# ModelInfo.weights of a factory that returns a ready model: no weights file, its own code
FACTORY_WEIGHTS = "factory"
TOOL_PACKAGES = ("edgesmith", "torch", "onnx", "onnxruntime", "transformers", "optimum", "tensorrt")


class Format(str, Enum):
    torch = "torch"
    hf = "hf"
    onnx = "onnx"
    engine = "engine"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"
    mixed = "mixed"


Dim = int | str  # a fixed size, or a symbolic name for a dynamic axis ("batch")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", ...
    dims: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.dims)

    def describe(self) -> str:
        return f"{self.name}:{self.dtype}[{','.join(str(d) for d in self.dims)}]"


@dataclass(frozen=True)
class IoSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IoSpec:
        def specs(items: list[dict]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(i["name"], i["dtype"], tuple(i["dims"])) for i in items)

        return cls(specs(d["inputs"]), specs(d["outputs"]))


@dataclass(frozen=True)
class ModelInfo:
    """What a model says about itself beyond its files: enough for any stage to load, run and
    export it without the recipe that made it.

    A stage that makes a model from another passes this on (`inherit`), changing what it
    changed: a distilled student names its own factory; a pruned model adds its structure.
    """

    # PyTorch weights: the package.module:factory that builds the module they load into.
    factory: str | None = None
    # Where the factory's weights come from: None, the artifact's safetensors file;
    # FACTORY_WEIGHTS, the factory's own code (the artifact's path is its source file).
    weights: str | None = None
    # Input declarations, NAME:DIMS[:DTYPE] ("x:1x1x8x8", "ids:1x16:int64"), the dynamic axes
    # ("x:0", "ids:0,1") and the output names, in order (PyTorch models).
    inputs: tuple[str, ...] = ()
    dynamic: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    task: str | None = None  # Hugging Face task ("text-classification", "feature-extraction")
    labels: tuple[str, ...] = ()  # class names by index, when the model is a classifier
    # A folder holding the tokenizer text data is read with (the source's, until a stage
    # copies the files beside the model it writes).
    tokenizer: str | None = None
    # What a stage recorded about the model's shape that later stages report or rely on
    # (pruning: kept heads and neurons, sparsity); JSON values.
    structure: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ModelInfo:
        d = d or {}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidInput(f"manifest: unknown model info fields {sorted(unknown)}")
        tuples = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}
        return cls(**{**d, **tuples})

    def inherit(self, **changes: Any) -> ModelInfo:
        """The info of a model made from this one: everything kept but what `changes` says."""
        return replace(self, **changes)


def info_with_carried(info: ModelInfo, carried: list[str], out: Path) -> ModelInfo:
    """The info of a model whose folder now holds the carried files: its tokenizer is there."""
    has_tokenizer = any(n in carried for n in ("tokenizer.json", "tokenizer_config.json"))
    return info.inherit(tokenizer=str(out)) if has_tokenizer else info


@dataclass(frozen=True)
class ModelArtifact:
    """A model on disk: an .onnx file, an engine directory, a .pt2, a Hugging Face folder."""

    path: Path
    format: Format
    precision: Precision = Precision.fp32
    io: IoSpec | None = None
    sha256: str = ""
    parent: str | None = None  # sha256 of what it was made from (provenance)
    info: ModelInfo = field(default_factory=ModelInfo)  # what later stages read
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # a record, for people

    @classmethod
    def at(cls, path: Path, fmt: Format, **kw: Any) -> ModelArtifact:
        return cls(Path(path), fmt, sha256=sha256_path(Path(path)), **kw)


def tool_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in TOOL_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_manifest(
    directory: Path, artifact: ModelArtifact | None, record: dict[str, Any]
) -> dict[str, Any]:
    """manifest.json beside an artifact: the artifact, every file's sha256 and the tools'
    versions, with the stage's `record` (stage, cache_key, config, metrics, ...).

    `artifact.path` is recorded relative to `directory`.
    """
    manifest = {
        **record,
        "artifact": None
        if artifact is None
        else {
            "path": Path(artifact.path).relative_to(directory).as_posix()
            if Path(artifact.path).is_relative_to(directory)
            else str(artifact.path),
            "format": artifact.format.value,
            "precision": artifact.precision.value,
            "sha256": artifact.sha256,
            "parent": artifact.parent,
            "io": artifact.io.to_dict() if artifact.io else None,
            "info": _relative_info(artifact.info, directory),
            "meta": artifact.meta,
        },  # None: the stage made no model (validate, bench)
        "files": file_hashes(directory),
        "tools": tool_versions(),
    }
    write_json(directory / MANIFEST, manifest)
    return manifest


def _relative_info(info: ModelInfo, directory: Path) -> dict[str, Any]:
    """Paths inside the stage's directory are recorded relative to it: it is written under a
    temporary name and renamed when complete."""
    d = info.to_dict()
    tok = info.tokenizer
    if tok and Path(tok).resolve().is_relative_to(Path(directory).resolve()):
        d["tokenizer"] = Path(tok).resolve().relative_to(Path(directory).resolve()).as_posix()
    return d


def _absolute_info(info: ModelInfo, directory: Path) -> ModelInfo:
    tok = info.tokenizer
    if tok and not Path(tok).is_absolute():
        return replace(info, tokenizer=str(directory / tok))
    return info


def read_manifest(directory: Path) -> dict[str, Any] | None:
    p = Path(directory) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None


def integrity_problems(directory: Path, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """How `directory` differs from the sha256 of every file its manifest recorded, as (file,
    what happened to it): missing, changed or added since (empty: what the stage wrote)."""
    recorded = manifest.get("files")
    if not isinstance(recorded, dict):
        return [(MANIFEST, "records no file hashes")]
    now = file_hashes(directory)
    problems = [(name, "is missing") for name in sorted(set(recorded) - set(now))]
    problems += [
        (name, "was changed") for name in sorted(set(recorded) & set(now))
        if recorded[name] != now[name]
    ]  # fmt: skip
    problems += [(name, "was added") for name in sorted(set(now) - set(recorded))]
    return problems


def verified_artifact(directory: Path) -> ModelArtifact | None:
    """The artifact a stage directory holds (None without a manifest naming one), refused when
    its files are not the ones the manifest recorded: an edited engine is not the one that was
    built and validated."""
    manifest = read_manifest(directory)
    if manifest is None or not manifest.get("artifact"):
        return None
    problems = integrity_problems(directory, manifest)
    if problems:
        (name, what), more = problems[0], len(problems) - 1
        raise InvalidInput(
            f"{Path(directory) / name}: {what} since {MANIFEST} was written"
            + (f" (and {more} more)" if more else "")
            + "; rebuild the directory or restore the file"
        )
    art = artifact_from_manifest(directory, manifest)
    if not art.path.exists():
        raise InvalidInput(f"{directory}: manifest names {art.path}, which is missing")
    return art


def artifact_from_manifest(directory: Path, manifest: dict[str, Any]) -> ModelArtifact:
    a = manifest["artifact"]
    return ModelArtifact(
        path=Path(directory) / a["path"],
        format=Format(a["format"]),
        precision=Precision(a["precision"]),
        io=IoSpec.from_dict(a["io"]) if a.get("io") else None,
        sha256=a["sha256"],
        parent=a.get("parent"),
        info=_absolute_info(ModelInfo.from_dict(a.get("info")), Path(directory)),
        meta=a.get("meta") or {},
    )
