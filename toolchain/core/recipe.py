"""The typed recipe: one TOML file naming a source and the stages to run on it.

Every single-stage CLI command builds one of these and runs it through the same pipeline,
so the CLI and recipes cannot drift apart (`--print-recipe` prints it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from toolchain.core.errors import InvalidInput


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(Strict):
    """The fine-tuned model: a factory (+ weights), a .pt2, a Hugging Face folder or an ONNX."""

    model: str
    weights: str | None = None
    inputs: list[str] = []
    dynamic: list[str] = []
    outputs: list[str] = []
    task: str | None = None


class StageConfig(Strict):
    kind: str
    out: str | None = Field(default=None, description="output directory; default OUT/<i>-<kind>")
    # Fields that name files whose contents the stage reads: hashed into its cache key.
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ()


class ExportStage(StageConfig):
    kind: Literal["export"] = "export"
    opset: int = Field(default=18, ge=7, le=23)
    atol: float = Field(default=1e-4, gt=0)
    rtol: float = Field(default=1e-3, ge=0)
    check_samples: int = Field(default=2, ge=1)  # each at another batch (and sequence) size


class BuildStage(StageConfig):
    kind: Literal["build"] = "build"
    target: str = "ort-cpu"
    options: dict[str, Any] = {}


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


class ValidateStage(Gated):
    kind: Literal["validate"] = "validate"
    data: str
    reference: str = "source"  # "source" (the recipe's model), or a model path or factory
    reference_weights: str | None = None  # safetensors, when the reference is a factory
    tokenizer: str | None = None  # for text data: a folder with a tokenizer
    seq_len: int = Field(default=128, ge=1)
    batch_size: int = Field(default=32, ge=1)
    limit: int | None = Field(default=None, ge=1)
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ("data", "tokenizer", "reference", "reference_weights")


class BenchStage(StageConfig):
    kind: Literal["bench"] = "bench"
    target: str = "ort-cpu"
    batches: list[int] = [1, 8]
    warmup: int = Field(default=10, ge=0)
    iterations: int = Field(default=50, ge=1)
    threads: int | None = None


class DistillStage(StageConfig):
    """A smaller student trained on the teacher's outputs (toolchain/distill)."""

    kind: Literal["distill"] = "distill"
    student: str | None = None  # package.module:factory, the student's architecture
    student_layers: int | None = Field(default=None, ge=1)  # or: K of the teacher's layers
    keep_layers: list[int] = []  # which ones (default: evenly spaced, first and last kept)
    data: str  # training data: .npz, a folder of .npy, or text lines / .jsonl
    eval_data: str | None = None  # default: eval_fraction of `data`, held out
    eval_fraction: float = Field(default=0.1, gt=0, lt=1)
    tokenizer: str | None = None  # for text data; default: the teacher's folder
    seq_len: int = Field(default=128, ge=1)
    limit: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, ge=1)  # global, across torchrun processes
    lr: float | None = Field(default=None, gt=0)  # default: by student kind (distill/stage.py)
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.5, ge=0, le=1)  # soft-target weight; 1 - alpha on labels
    loss: Literal["auto", "soft", "embedding"] = "auto"
    output: str | None = None  # the output compared; default the only (batch, features) one
    mse_weight: float = Field(default=1.0, ge=0)
    cos_weight: float = Field(default=1.0, ge=0)
    hidden_weight: float = Field(default=0.0, ge=0)
    dropout: float | None = Field(default=None, ge=0, lt=1)  # the student's; None: as built
    train_embeddings: bool = False  # derived students: also train the token embeddings
    weight_decay: float = Field(default=0.01, ge=0)
    seed: int = 0
    resume: bool = False  # continue an interrupted run from its last complete epoch
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ("data", "eval_data", "tokenizer")

    @model_validator(mode="after")
    def _one_student(self) -> DistillStage:
        if (self.student is None) == (self.student_layers is None):
            raise ValueError("give exactly one of student (a factory) and student_layers")
        return self


class QuantizeStage(Gated):
    """Calibrated int8 QDQ (or dynamic) quantization, with an optional accuracy loop
    (toolchain/quantize/stage.py)."""

    kind: Literal["quantize"] = "quantize"
    method: Literal["minmax", "percentile", "entropy", "dynamic"] = "minmax"
    calibration: str | None = None  # data: .npz, .npy folder, image folder, text (+ tokenizer)
    samples: int | None = Field(default=None, ge=1)  # drawn with `seed`; default: all of them
    seed: int = 0
    percentile: float = Field(default=99.999, gt=50, le=100)
    target: str = "ort-cpu"
    preset: str | None = None  # default: the target's, for ort-cpu by this CPU's instruction set
    op_types: list[str] = []  # override the preset's quantized op types
    exclude: list[str] = []  # node-name patterns (fnmatch) that stay in float
    outlier_ratio: float | None = Field(default=None, ge=0)  # None: the preset's; 0: off
    smooth_alpha: float | None = Field(default=None, ge=0, le=1)  # None: the preset's; 0: off
    tokenizer: str | None = None  # for text data; default: the model's folder
    seq_len: int = Field(default=128, ge=1)
    image: dict[str, Any] = {}  # image-folder preprocessing (calibration/images.py)
    eval: str | None = None  # data for the accuracy loop (never the calibration data)
    eval_limit: int | None = Field(default=None, ge=1)
    sensitivity_samples: int = Field(default=64, ge=1)  # eval samples for the per-node ranking
    max_fallback: int | None = Field(default=None, ge=0)  # nodes put back to float at most
    batch_size: int = Field(default=16, ge=1)
    threads: int | None = Field(default=None, ge=1)
    cache_dir: str | None = None  # calibration cache; default: .calibration-cache beside out
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ("calibration", "tokenizer", "eval")

    @model_validator(mode="after")
    def _needs_data(self) -> QuantizeStage:
        if self.method != "dynamic" and not self.calibration:
            raise ValueError(
                f"method '{self.method}' needs calibration data (or use method = \"dynamic\")"
            )
        return self


# kind → config class; a stage module registers its runner under the same kind (pipeline.py).
STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    c.model_fields["kind"].default: c
    for c in (DistillStage, ExportStage, QuantizeStage, BuildStage, ValidateStage, BenchStage)
}


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
        out = []
        for i, item in enumerate(items):
            if isinstance(item, StageConfig):
                out.append(item)
                continue
            kind = item.get("kind") if isinstance(item, dict) else None
            if kind not in STAGE_CONFIGS:
                raise ValueError(
                    f"unknown stage kind {kind!r}; available: {', '.join(STAGE_CONFIGS)}"
                )
            try:
                out.append(STAGE_CONFIGS[kind].model_validate(item))
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


def describe_validation_error(origin: str, e: ValidationError) -> str:
    """One line: the file, the field path and what was expected."""
    err = e.errors()[0]
    # "max_drop.float" → "max_drop": the union member tried is noise to a user.
    loc = ".".join(
        str(p) for p in err["loc"] if p not in ("float", "int", "str", "dict[str,float]")
    )
    loc = loc or "(top level)"
    quiet = ("missing", "extra_forbidden", "value_error")
    got = f" (got {err['input']!r})" if err["type"] not in quiet else ""
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{origin}: {loc}: {msg}{got}{more}"


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
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{path}: not valid TOML ({e})") from None
    return recipe_from_dict(data, str(path))
