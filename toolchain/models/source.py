"""What a user names as a model, resolved to an artifact: a file, a folder or a factory.

Accepted: `package.module:factory` (+ safetensors weights), a torch.export program (.pt2),
a Hugging Face folder (config.json + safetensors), an .onnx file, an engine directory, or a
directory written by an earlier stage (its manifest.json says what it holds).
Pickle checkpoints are refused: loading one runs arbitrary code.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgesmith.toolchain.core.artifact import (
    FACTORY_WEIGHTS,
    Format,
    ModelArtifact,
    ModelInfo,
    verified_artifact,
)
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.files import sha256_file, sha256_json
from edgesmith.toolchain.core.recipe import FACTORY

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")
DTYPES = ("float32", "float16", "int64", "int32", "bool", "uint8", "int8")


@dataclass(frozen=True)
class InputDecl:
    """One model input: its example shape, dtype, and which axes are dynamic."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic: tuple[int, ...] = ()


@dataclass(frozen=True)
class SourceSpec:
    """A model as the user named it, plus what the export needs to know about its inputs."""

    model: str
    weights: str | None = None
    inputs: tuple[str, ...] = ()  # "x:1x1x8x8" or "ids:1x128:int64"
    dynamic: tuple[str, ...] = ()  # "x:0" or "x:0,1"
    outputs: tuple[str, ...] = ()
    task: str | None = None
    extra: dict = field(default_factory=dict, compare=False)


def parse_inputs(inputs: tuple[str, ...], dynamic: tuple[str, ...]) -> list[InputDecl]:
    decls: dict[str, InputDecl] = {}
    for text in inputs:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise InvalidInput(f"--input '{text}': expected NAME:DIMS[:DTYPE], e.g. x:1x1x8x8")
        try:
            shape = tuple(int(d) for d in parts[1].lower().split("x"))
        except ValueError:
            raise InvalidInput(f"--input '{text}': DIMS must be integers joined by 'x'") from None
        dtype = parts[2] if len(parts) == 3 else "float32"
        if dtype not in DTYPES:
            raise InvalidInput(f"--input '{text}': unknown dtype '{dtype}'; known: {DTYPES}")
        decls[parts[0]] = InputDecl(parts[0], shape, dtype)
    for text in dynamic:
        name, _, axes = text.partition(":")
        if name not in decls:
            raise InvalidInput(
                f"--dynamic '{text}': no input named '{name}' (given: {list(decls)})"
            )
        try:
            ax = tuple(int(a) for a in axes.split(","))
        except ValueError:
            raise InvalidInput(f"--dynamic '{text}': expected NAME:AXIS[,AXIS]") from None
        if any(a < 0 or a >= len(decls[name].shape) for a in ax):
            raise InvalidInput(
                f"--dynamic '{text}': axis out of range for rank {len(decls[name].shape)}"
            )
        d = decls[name]
        decls[name] = InputDecl(d.name, d.shape, d.dtype, tuple(sorted(set(d.dynamic + ax))))
    return list(decls.values())


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InvalidInput(
            f"{path}: pickle checkpoints are refused (loading one runs arbitrary code); "
            "save the weights with safetensors or the program with torch.export.save (.pt2)"
        )


def is_factory(model: str) -> bool:
    return bool(FACTORY.match(model)) and not Path(model).exists()


@contextlib.contextmanager
def _cwd_importable():
    """The working directory on sys.path while a factory's module is imported (as with
    python -m), and off it again after: no lasting change to the process's import path."""
    cwd = str(Path.cwd())
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def import_factory(ref: str):
    """Import `package.module:factory`; the working directory is importable, as with python -m."""
    module_name, _, attr = ref.partition(":")
    try:
        with _cwd_importable():
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise InvalidInput(f"factory '{ref}': cannot import module '{module_name}' ({e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InvalidInput(f"factory '{ref}': module '{module_name}' has no callable '{attr}'")
    return module, factory


def resolve_source(spec: SourceSpec) -> ModelArtifact:
    """The artifact a source names, with its content hash (the cache key of what follows)."""
    model = spec.model
    if is_factory(model):
        return _factory_artifact(spec)
    path = Path(model)
    if not path.exists():
        hint = " (a factory is written package.module:function)" if ":" in model else ""
        raise InvalidInput(f"model not found: {path}{hint}")
    _refuse_pickle(path)
    if path.is_file():
        if path.suffix == ".pt2":
            info = ModelInfo(outputs=tuple(spec.outputs))
            return ModelArtifact.at(path, Format.torch, info=info)
        if path.suffix == ".onnx":
            from edgesmith.toolchain.core.onnx_model import check_onnx, io_from_onnx, onnx_digest

            proto = check_onnx(path)
            return ModelArtifact(
                path, Format.onnx, io=io_from_onnx(proto), sha256=onnx_digest(path, proto)
            )
        if path.suffix == ".safetensors":
            raise InvalidInput(
                f"{path}: weights alone are not a model; name the factory that builds the module "
                "(package.module:function --weights FILE.safetensors)"
            )
        raise InvalidInput(
            f"{path}: unsupported model file; expected .onnx, .pt2, a Hugging Face folder, "
            "an engine directory, or package.module:factory"
        )
    art = verified_artifact(path)
    if art is not None:
        return art
    if (path / "engine.json").is_file():
        return ModelArtifact.at(path, Format.engine)
    if (path / "config.json").is_file():
        weights = list(path.glob("*.safetensors"))
        if not weights:
            pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
            detail = (
                f" (found pickle files {pickles}; convert them to safetensors)" if pickles else ""
            )
            raise InvalidInput(f"{path}: Hugging Face folder without .safetensors weights{detail}")
        return ModelArtifact.at(path, Format.hf, info=hf_info(path, spec.task))
    raise InvalidInput(
        f"{path}: not a model folder (expected config.json + safetensors, an engine.json, "
        "or a manifest.json written by edgesmith)"
    )


def _factory_artifact(spec: SourceSpec) -> ModelArtifact:
    """package.module:factory with --weights FILE.safetensors, or a factory that returns a
    ready model (its weights come from its own code: the artifact is the module's source)."""
    module, _ = import_factory(spec.model)
    code = inspect.getsourcefile(module)
    info = ModelInfo(
        factory=spec.model,
        inputs=tuple(spec.inputs),
        dynamic=tuple(spec.dynamic),
        outputs=tuple(spec.outputs),
    )
    if not spec.weights:
        if not code:
            raise InvalidInput(f"factory '{spec.model}' needs --weights FILE.safetensors")
        digest = sha256_json({"factory": spec.model, "code": sha256_file(Path(code))})
        info = replace(info, weights=FACTORY_WEIGHTS)
        return ModelArtifact(Path(code), Format.torch, sha256=digest, info=info)
    weights = Path(spec.weights)
    if not weights.exists():
        raise InvalidInput(f"weights not found: {weights}")
    _refuse_pickle(weights)
    if weights.suffix != ".safetensors":
        raise InvalidInput(f"{weights}: weights must be a .safetensors file")
    digest = sha256_json(
        {
            "factory": spec.model,
            "weights": sha256_file(weights),
            "code": sha256_file(Path(code)) if code else None,
        }
    )
    return ModelArtifact(weights, Format.torch, sha256=digest, info=info)


def hf_info(folder: Path, task: str | None) -> ModelInfo:
    """A Hugging Face folder's own description: its task (as given), class names, tokenizer."""
    import json

    labels: tuple[str, ...] = ()
    try:
        config = json.loads((folder / "config.json").read_text())
        # every config has an id2label (LABEL_0, LABEL_1 by default); a classifier's means it
        if any(str(a).endswith("Classification") for a in config.get("architectures") or []):
            id2label = config.get("id2label") or {}
            labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        labels = ()  # not readable here: load_hf reports the folder's problem in its words
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = str(Path(folder).resolve()) if has_tokenizer else None
    return ModelInfo(task=task, labels=labels, tokenizer=tokenizer)


def torch_spec(art: ModelArtifact) -> SourceSpec:
    """The spec that loads a PyTorch artifact, from what the artifact says about itself."""
    info = art.info
    if info.factory:
        return SourceSpec(
            model=info.factory,
            weights=None if info.weights == FACTORY_WEIGHTS else str(art.path),
            inputs=info.inputs,
            dynamic=info.dynamic,
            outputs=info.outputs,
        )
    if Path(art.path).suffix != ".pt2":
        raise InvalidInput(
            f"{art.path}: PyTorch weights whose artifact names no factory; "
            "the stage that wrote them must record ModelInfo.factory"
        )
    return SourceSpec(model=str(art.path), outputs=info.outputs)


def with_spec_digest(art: ModelArtifact, spec: SourceSpec) -> ModelArtifact:
    """The source artifact, its hash extended by the flags that change what an export makes.

    Without such flags the hash is the artifact's own, so provenance links stay plain hashes.
    """
    flags = {
        "inputs": spec.inputs,
        "dynamic": spec.dynamic,
        "outputs": spec.outputs,
        "task": spec.task,
    }
    if not any(flags.values()):
        return art
    return replace(art, sha256=sha256_json({"artifact": art.sha256, **flags}))


def find_tokenizer(given: str | None, *models: ModelArtifact) -> Path | None:
    """The tokenizer for text data: the one given, else the first model that names one, else
    the first folder beside a model that holds one."""
    if given:
        return Path(given)
    for art in models:
        if art.info.tokenizer:
            return Path(art.info.tokenizer)
    for art in models:
        p = Path(art.path)
        folder = p if p.is_dir() else p.parent
        if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
            return folder
    return None
