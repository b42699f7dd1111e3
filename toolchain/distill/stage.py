"""The distill stage: a teacher (the stage's input) and data in, a smaller student out.

The student comes out as something the export stage takes, like any source:
- a factory student: `model.safetensors`; the manifest's artifact meta names the factory and
  the input declarations (the teacher's), so export rebuilds it without flags;
- a student derived from a Hugging Face teacher: a Hugging Face folder (config.json with the
  new depth, model.safetensors, the teacher's tokenizer and sentence-transformers files).

Checkpoints live beside the stage's output directory (`.<out>.distill-checkpoints`), not in
it: the output appears only when complete, and an interrupted run must leave its epochs
somewhere `resume` can find them. They are removed once the student is written.

Under torchrun every process runs the training; rank 0 alone writes (run), the others join
through run_worker (see toolchain/cli/distill.py).
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calibration.sources import TEXT_SUFFIXES, Dataset, load_dataset
from toolchain.core.artifact import Format, IoSpec, ModelArtifact
from toolchain.core.errors import InvalidInput
from toolchain.core.files import sha256_file, sha256_json, sha256_path
from toolchain.core.recipe import DistillStage, Recipe
from toolchain.distill.students import (
    HfOutputs,
    TorchOutputs,
    default_layers,
    hidden_layers,
    keep_layers,
    layer_stack,
    parameter_count,
    pretrained_part,
    save_hf_student,
    student_from_factory,
)
from toolchain.distill.trainer import (
    Pair,
    TrainConfig,
    TrainResult,
    close_distributed,
    init_distributed,
    train,
)
from toolchain.export.source import SourceSpec, import_factory, torch_spec

# A student trained from its own initialisation takes a larger step than one initialised
# from the teacher's weights (fine-tuning rates for transformers are ~1e-4 and below).
DEFAULT_LR_SCRATCH = 3e-3
DEFAULT_LR_DERIVED = 1e-4
CHECKPOINTS_SUFFIX = ".distill-checkpoints"
STUDENT_WEIGHTS = "model.safetensors"
FEATURE_TASK = "feature-extraction"  # sentence-embedding encoders: no logits, embedding loss


@dataclass
class Setup:
    """Everything a process needs to train, built the same way on every rank."""

    pair: Pair
    train_data: Dataset
    eval_data: Dataset
    train_cfg: TrainConfig
    fingerprint: str
    teacher_params: int
    student_params: int
    save: Callable[[Path], ModelArtifact]  # writes the trained student into a directory


def checkpoint_dir(stage_out: Path) -> Path:
    stage_out = Path(stage_out)
    return stage_out.parent / f".{stage_out.name}{CHECKPOINTS_SUFFIX}"


def _decls_from_io(io: IoSpec) -> tuple[list[str], list[str]]:
    """SourceSpec input declarations ("ids:1x16:int64", "ids:0,1") for a model's inputs."""
    inputs, dynamic = [], []
    for t in io.inputs:
        dims = [d if isinstance(d, int) else (1 if i == 0 else 16) for i, d in enumerate(t.dims)]
        inputs.append(f"{t.name}:{'x'.join(str(d) for d in dims)}:{t.dtype}")
        dyn = [i for i, d in enumerate(t.dims) if not isinstance(d, int)]
        if dyn:
            dynamic.append(f"{t.name}:{','.join(str(a) for a in dyn)}")
    return inputs, dynamic


def _load_data(cfg: DistillStage, io: IoSpec, tokenizer: Path | None) -> tuple[Dataset, Dataset]:
    def load(path: str) -> Dataset:
        p = Path(path)
        if p.suffix in TEXT_SUFFIXES and tokenizer is None:
            raise InvalidInput(f"{p}: text data needs a tokenizer (set tokenizer = a model folder)")
        return load_dataset(p, io, tokenizer=tokenizer, seq_len=cfg.seq_len, limit=cfg.limit)

    data = load(cfg.data)
    if cfg.eval_data:
        return data, load(cfg.eval_data)
    n_eval = max(1, round(len(data) * cfg.eval_fraction))
    if len(data) - n_eval < 1:
        raise InvalidInput(f"{cfg.data}: {len(data)} samples are too few to hold out an eval split")
    perm = np.random.default_rng(cfg.seed).permutation(len(data))

    def subset(idx: np.ndarray) -> Dataset:
        idx = np.sort(idx)
        labels = data.labels[idx] if data.labels is not None else None
        return Dataset({k: v[idx] for k, v in data.feeds.items()}, labels)

    return subset(perm[n_eval:]), subset(perm[:n_eval])


def _choose_output(teacher: Any, data: Dataset, wanted: str | None) -> str:
    """The output the loss compares: the one named, the only one, or the only (batch, features)."""
    with torch.no_grad():
        feeds = {k: torch.from_numpy(v[:2]) for k, v in data.feeds.items()}
        outs = teacher(**teacher.prepare(feeds))
    if wanted:
        if wanted not in outs:
            raise InvalidInput(f"output '{wanted}': the teacher's outputs are {list(outs)}")
        return wanted
    if len(outs) == 1:
        return next(iter(outs))
    pooled = [n for n, t in outs.items() if t.ndim == 2]
    if len(pooled) == 1:
        return pooled[0]
    shapes = ", ".join(f"{n}{tuple(t.shape)}" for n, t in outs.items())
    raise InvalidInput(f"the teacher has several outputs ({shapes}); name one with --output")


def _code_digest(ref: str) -> str | None:
    module, _ = import_factory(ref)
    code = inspect.getsourcefile(module)
    return sha256_file(Path(code)) if code else None


def _files_digest(cfg: DistillStage) -> dict[str, str]:
    return {
        f: sha256_path(Path(getattr(cfg, f)))
        for f in cfg.FILE_FIELDS
        if getattr(cfg, f, None) and Path(getattr(cfg, f)).exists()
    }


def prepare(
    src: ModelArtifact, source: SourceSpec, cfg: DistillStage, log: Callable[[str], None]
) -> Setup:
    """Load teacher, student and data for `cfg`; the same on every process."""
    if src.format not in (Format.torch, Format.hf):
        raise InvalidInput(
            f"{src.path}: distill takes a PyTorch or Hugging Face teacher; this is "
            f"{src.format.value} (put distill before export in the recipe)"
        )
    layers: list[tuple[torch.nn.Module, torch.nn.Module]] = []
    task = None
    if src.format is Format.torch:
        from toolchain.export.torch import TorchRunner, load_torch

        if cfg.student_layers:
            raise InvalidInput(
                "student_layers derives a student from a Hugging Face encoder; for a PyTorch "
                "teacher name the student's architecture (student = package.module:factory)"
            )
        tm = load_torch(torch_spec(src, source))
        io = TorchRunner(tm).io
        input_names = [d.name for d in tm.inputs]
        teacher = TorchOutputs(tm.module, input_names, tm.output_names)
        inputs = [f"{d.name}:{'x'.join(map(str, d.shape))}:{d.dtype}" for d in tm.inputs]
        dynamic = [f"{d.name}:{','.join(map(str, d.dynamic))}" for d in tm.inputs if d.dynamic]
        tokenizer = Path(cfg.tokenizer) if cfg.tokenizer else None
    else:
        from toolchain.export.hf import HfRunner, load_hf

        hf = load_hf(src.path, src.meta.get("task") or source.task)
        task = hf.task
        io = HfRunner(hf).io
        input_names = io.input_names
        teacher = HfOutputs(hf.model, hf.onnx_config)
        inputs, dynamic = _decls_from_io(io)
        tokenizer = Path(cfg.tokenizer) if cfg.tokenizer else Path(src.path)

    train_data, eval_data = _load_data(cfg, io, tokenizer)
    output = _choose_output(teacher, train_data, cfg.output)
    if src.format is Format.hf and output in io.output_names:
        dims = next(t.dims for t in io.outputs if t.name == output)
        if len(dims) > 1 and not isinstance(dims[1], int):
            # Batches are cut to their longest text, so per-token outputs differ in length.
            raise InvalidInput(
                f"output '{output}' has a sequence axis; distill compares a pooled output "
                f"(batch, features): one of {io.output_names}"
            )

    if cfg.student:
        torch.manual_seed(cfg.seed)  # the student's initialisation, the same on every rank
        net = student_from_factory(cfg.student)
        names = teacher.outputs if len(teacher.outputs) > 1 else [output]
        student = TorchOutputs(net, input_names, names)
        with torch.no_grad():
            feeds = {k: torch.from_numpy(v[:2]) for k, v in train_data.feeds.items()}
            try:
                got = student(**feeds)
            except (RuntimeError, TypeError, ValueError, InvalidInput) as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise InvalidInput(
                    f"student '{cfg.student}' cannot run on the teacher's inputs "
                    f"({', '.join(t.describe() for t in io.inputs)}): {msg}"
                ) from None
            want = teacher(**teacher.prepare(feeds))[output]
        if output not in got or got[output].shape != want.shape:
            shape = tuple(got[output].shape) if output in got else None
            raise InvalidInput(
                f"student '{cfg.student}' output '{output}' has shape {shape}; the teacher's "
                f"is {tuple(want.shape)}"
            )
        student_desc: dict[str, Any] = {"factory": cfg.student, "code": _code_digest(cfg.student)}
        default_lr = DEFAULT_LR_SCRATCH
    else:
        from toolchain.export.hf import load_hf

        n = hidden_layers(hf.model)
        keep = list(cfg.keep_layers) or default_layers(n, cfg.student_layers)
        if cfg.keep_layers and len(keep) != cfg.student_layers:
            raise InvalidInput(
                f"keep_layers {keep} names {len(keep)} layers, student_layers is "
                f"{cfg.student_layers}"
            )
        shf = load_hf(src.path, task)
        kept = keep_layers(shf.model, keep)
        if not cfg.train_embeddings:
            # The student reads the teacher's vocabulary; its token embeddings are most of its
            # parameters (MiniLM: 11.7M of 17.4M), and updating them every step is most of the
            # step's time on CPU, so they stay the teacher's unless asked.
            pretrained_part(shf.model).get_input_embeddings().requires_grad_(False)
        student = HfOutputs(shf.model, shf.onnx_config)
        _, teacher_stack = layer_stack(hf.model, n)
        layers = [(kept[i], teacher_stack[t]) for i, t in enumerate(keep)]
        student_desc = {"layers": keep}
        default_lr = DEFAULT_LR_DERIVED
        net = shf.model
        log(f"student: teacher layers {keep} of 0..{n - 1}, initialised from the teacher")

    loss = cfg.loss if cfg.loss != "auto" else ("embedding" if task == FEATURE_TASK else "soft")
    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        lr=cfg.lr or default_lr,
        batch_size=cfg.batch_size,
        loss=loss,
        output=output,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        mse_weight=cfg.mse_weight,
        cos_weight=cfg.cos_weight,
        hidden_weight=cfg.hidden_weight,
        dropout=cfg.dropout,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
    )
    fingerprint = sha256_json(
        {
            "teacher": src.sha256,
            "student": student_desc,
            "config": cfg.model_dump(exclude={"out", "resume"}),
            "files": _files_digest(cfg),
        }
    )
    t_params, s_params = parameter_count(teacher), parameter_count(student)

    def save(out: Path) -> ModelArtifact:
        if cfg.student:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            save_file(state, str(out / STUDENT_WEIGHTS))
            digest = sha256_json(
                {
                    "factory": cfg.student,
                    "weights": sha256_file(out / STUDENT_WEIGHTS),
                    "code": student_desc["code"],
                }
            )
            meta = {
                "factory": cfg.student,
                "inputs": inputs,
                "dynamic": dynamic,
                "outputs": student.outputs,
            }
            return ModelArtifact(
                out / STUDENT_WEIGHTS, Format.torch, sha256=digest, parent=src.sha256, meta=meta
            )
        save_hf_student(net, Path(src.path), out)
        return ModelArtifact(
            out,
            Format.hf,
            sha256=sha256_path(out),
            parent=src.sha256,
            meta={"task": task, "keep_layers": student_desc["layers"]},
        )

    return Setup(
        Pair(student, teacher, layers),
        train_data,
        eval_data,
        train_cfg,
        fingerprint,
        t_params,
        s_params,
        save,
    )


def _stage_out(recipe: Recipe, cfg: DistillStage) -> Path:
    from toolchain.pipeline import stage_dir

    # The pipeline hands the stage a temporary directory; checkpoints must sit beside the
    # final one, whose name depends on the stage's position in the recipe.
    index = next(i for i, s in enumerate(recipe.stages) if s is cfg)
    return stage_dir(recipe, index, cfg)


def _train(setup: Setup, cfg: DistillStage, stage_out: Path, log) -> TrainResult:
    rank, world = init_distributed()
    if world > 1:
        log(f"distributed: {world} processes ({torch.distributed.get_backend()})")
    log(
        f"teacher {setup.teacher_params:,} parameters, student {setup.student_params:,} "
        f"({setup.student_params / setup.teacher_params:.1%}); {len(setup.train_data)} training, "
        f"{len(setup.eval_data)} eval samples; loss {setup.train_cfg.loss} on "
        f"'{setup.train_cfg.output}'"
    )
    return train(
        setup.pair,
        setup.train_data,
        setup.eval_data,
        setup.train_cfg,
        checkpoints=checkpoint_dir(stage_out),
        fingerprint=setup.fingerprint,
        resume=cfg.resume,
        log=log,
    )


def run(ctx, src: ModelArtifact, cfg: DistillStage, out: Path):
    """The pipeline's entry (rank 0 under torchrun): train, then write the student into `out`."""
    from toolchain.pipeline import StageResult

    rank, world = _env_rank()
    if rank != 0:
        raise InvalidInput(
            f"process {rank} of {world} ran the whole pipeline; under torchrun use "
            "`edgesmith distill`, whose other processes only train"
        )
    stage_out = _stage_out(ctx.recipe, cfg)
    setup = prepare(src, ctx.source, cfg, ctx.log)
    try:
        result = _train(setup, cfg, stage_out, ctx.log)
    finally:
        close_distributed()
    art = setup.save(out)
    # Written last: until the student is saved the checkpoints are the only copy of the work.
    shutil.rmtree(checkpoint_dir(stage_out), ignore_errors=True)
    ratio = setup.student_params / setup.teacher_params
    metrics = {
        "teacher_params": setup.teacher_params,
        "student_params": setup.student_params,
        "param_ratio": ratio,
        "loss": setup.train_cfg.loss,
        "output": setup.train_cfg.output,
        "lr": setup.train_cfg.lr,
        **result.to_dict(),
    }
    teacher = f" (teacher {result.teacher_metric:.4f})" if result.teacher_metric is not None else ""
    summary = (
        f"student {setup.student_params:,} parameters ({ratio:.1%} of the teacher's); best "
        f"epoch {result.best_epoch}/{cfg.epochs}: eval {result.metric_name} "
        f"{result.best_metric:.4f}{teacher}"
    )
    return StageResult(art, metrics, summary=summary)


def _env_rank() -> tuple[int, int]:
    import os

    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_worker() -> bool:
    """True in a torchrun process other than rank 0 (it trains but writes nothing)."""
    return _env_rank()[0] != 0


def run_worker(recipe: Recipe, log: Callable[[str], None] = lambda _m: None) -> None:
    """A non-zero rank's part of `edgesmith distill`: train in step with rank 0, write nothing.

    Rank 0 runs the pipeline, which skips a stage whose output is current; this process
    checks the same cache key, so both skip or both train.
    """
    from toolchain.core.artifact import read_manifest
    from toolchain.pipeline import cache_key, source_artifact, source_spec, stage_dir

    if not recipe.stages or not isinstance(recipe.stages[0], DistillStage):
        raise InvalidInput("under torchrun the recipe must start with its distill stage")
    cfg = recipe.stages[0]
    spec = source_spec(recipe)
    src = source_artifact(spec)
    out = stage_dir(recipe, 0, cfg)
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is not None and manifest.get("cache_key") == cache_key(src, cfg):
        return
    setup = prepare(src, spec, cfg, log)
    try:
        _train(setup, cfg, out, log)
    finally:
        close_distributed()
