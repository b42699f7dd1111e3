"""The build stage: an ONNX model → an engine directory for one target."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from targets.base import BuildConfig
from toolchain.core.artifact import Format, ModelInfo
from toolchain.core.errors import InvalidInput, TargetUnavailable
from toolchain.core.files import sha256_path
from toolchain.core.recipe import StageConfig
from toolchain.core.registry import get_target
from toolchain.core.stage import Inputs, Stage, StageResult, Workdir


class BuildStage(StageConfig):
    kind: Literal["build"] = "build"
    target: str = "ort-cpu"
    options: dict[str, Any] = {}


def run(inputs: Inputs, cfg: BuildStage, work: Workdir) -> StageResult:
    src, out = inputs.model, work.out
    target = get_target(cfg.target)
    why = target.unavailable_reason()
    if why:
        raise TargetUnavailable(f"target '{cfg.target}' cannot build on this machine: {why}")
    if src.format is not Format.onnx:
        raise InvalidInput(
            f"{src.path}: build takes an ONNX model, got {src.format.value}; export it first"
        )
    engine = target.build(src, BuildConfig(dict(cfg.options)), out)
    carried = carry_preprocessing(Path(src.path).parent, out)
    # what ships: the carried files too; the engine describes itself like the model it runs
    engine = replace(
        engine, sha256=sha256_path(out), info=info_with_carried(src.info, carried, out)
    )
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return StageResult(
        engine,
        {"target": cfg.target, "size_bytes": size, "carried": carried},
        summary=f"{cfg.target} engine, {size / 1e6:.2f} MB",
    )


def info_with_carried(info: ModelInfo, carried: list[str], out: Path) -> ModelInfo:
    """The info of a model whose folder now holds the carried files: its tokenizer is there."""
    has_tokenizer = any(n in carried for n in ("tokenizer.json", "tokenizer_config.json"))
    return info.inherit(tokenizer=str(out)) if has_tokenizer else info


# Files a deployment needs beside the model to turn raw input into tensors (Hugging Face names).
PREPROCESSING_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "added_tokens.json",
    "preprocessor_config.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)


def carry_preprocessing(src_dir: Path, out: Path) -> list[str]:
    """Copy the tokenizer/config files beside the model into the engine: it ships complete."""
    carried = []
    for name in PREPROCESSING_FILES:
        if (src_dir / name).is_file() and not (out / name).exists():
            shutil.copy2(src_dir / name, out / name)
            carried.append(name)
    return carried


STAGE = Stage(
    "build",
    BuildStage,
    run,
    command="toolchain.cli.build:command",
)
