"""What distillation trains: the teacher, the student, the data and the loss settings, built the
same way on every torchrun process (prepare), and how the trained student is saved.

The student comes out as something the export stage takes, like any source:
- a factory student: `model.safetensors`; its artifact's info names the factory and the
  input declarations (the teacher's), so export rebuilds it without flags;
- a student derived from a Hugging Face teacher: a Hugging Face folder (config.json with the
  new depth, model.safetensors, the teacher's tokenizer and sentence-transformers files).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesmith.calibration.sources import TEXT_SUFFIXES, Dataset, Preprocess, load_dataset
from edgesmith.toolchain.core.artifact import Format, IoSpec, ModelArtifact
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.files import sha256_file, sha256_json, sha256_path
from edgesmith.toolchain.models.source import import_factory, torch_spec
from edgesmith.toolchain.models.students import (
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
from edgesmith.toolchain.training.defaults import Epochs, choose_epochs, choose_patience
from edgesmith.toolchain.training.trainer import Callback, Pair, TrainConfig, Trainer, TrainRun

# A student trained from its own initialisation takes a larger step than one initialised
# from the teacher's weights (fine-tuning rates for transformers are ~1e-4 and below).
DEFAULT_LR_SCRATCH = 3e-3
DEFAULT_LR_DERIVED = 1e-4
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

    def trainer(self, checkpoints: Path, log=None, callbacks: Sequence[Callback] = ()) -> Trainer:
        """The training loop over this set-up, checkpointing into `checkpoints`."""
        run = TrainRun(checkpoints, self.fingerprint, log, callbacks)
        return Trainer(self.pair, (self.train_data, self.eval_data), self.train_cfg, run)


@dataclass
class Teacher:
    """The teacher as distillation sees it: a module with named outputs, its inputs' spec."""

    module: Any  # TorchOutputs or HfOutputs
    io: IoSpec
    input_names: list[str]
    inputs: list[str]  # input declarations for the student's artifact info
    dynamic: list[str]
    tokenizer: Path | None
    task: str | None = None
    hf: Any = None  # the loaded Hugging Face model, for derived students and pruning
    torch: Any = None  # the loaded TorchModel (models/torch.py), for pruning


@dataclass
class Student:
    module: Any
    net: torch.nn.Module
    desc: dict[str, Any]  # what the fingerprint records about it
    default_lr: float
    layers: list[tuple[torch.nn.Module, torch.nn.Module]]


def _decls_from_io(io: IoSpec) -> tuple[list[str], list[str]]:
    """Input declarations ("ids:1x16:int64", "ids:0,1") for a model's inputs."""
    inputs, dynamic = [], []
    for t in io.inputs:
        dims = [d if isinstance(d, int) else (1 if i == 0 else 16) for i, d in enumerate(t.dims)]
        inputs.append(f"{t.name}:{'x'.join(str(d) for d in dims)}:{t.dtype}")
        dyn = [i for i, d in enumerate(t.dims) if not isinstance(d, int)]
        if dyn:
            dynamic.append(f"{t.name}:{','.join(str(a) for a in dyn)}")
    return inputs, dynamic


def load_teacher(src: ModelArtifact, cfg) -> Teacher:
    if src.format not in (Format.torch, Format.hf):
        raise InvalidInput(
            f"{src.path}: distill takes a PyTorch or Hugging Face teacher; this is "
            f"{src.format.value} (put distill before export in the recipe)"
        )
    given = Path(cfg.tokenizer) if cfg.tokenizer else None
    if src.format is Format.torch:
        from edgesmith.toolchain.models.torch import TorchRunner, load_torch

        if getattr(cfg, "student_layers", None):
            raise InvalidInput(
                "student_layers derives a student from a Hugging Face encoder; for a PyTorch "
                "teacher name the student's architecture (student = package.module:factory)"
            )
        tm = load_torch(torch_spec(src))
        names = [d.name for d in tm.inputs]
        io = TorchRunner(tm).io  # names the outputs (output, output_0 ...) when none are given
        return Teacher(
            TorchOutputs(tm.module, names, tm.output_names),
            io,
            names,
            [f"{d.name}:{'x'.join(map(str, d.shape))}:{d.dtype}" for d in tm.inputs],
            [f"{d.name}:{','.join(map(str, d.dynamic))}" for d in tm.inputs if d.dynamic],
            given,
            torch=tm,
        )
    from edgesmith.toolchain.models.hf import HfRunner, load_hf

    hf = load_hf(src.path, src.info.task)
    io = HfRunner(hf).io
    inputs, dynamic = _decls_from_io(io)
    return Teacher(
        HfOutputs(hf.model, hf.signature),
        io,
        io.input_names,
        inputs,
        dynamic,
        given or Path(src.path),
        task=hf.task,
        hf=hf,
    )


def load_data(cfg, io: IoSpec, tokenizer: Path | None) -> tuple[Dataset, Dataset]:
    def load(path: str) -> Dataset:
        p = Path(path)
        if p.suffix in TEXT_SUFFIXES and tokenizer is None:
            raise InvalidInput(f"{p}: text data needs a tokenizer (set tokenizer = a model folder)")
        return load_dataset(p, io, Preprocess(tokenizer, cfg.seq_len), cfg.limit)

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


def choose_output(teacher: Teacher, data: Dataset, wanted: str | None) -> str:
    """The output the loss compares: the one named, the only one, or the only (batch, features)."""
    with torch.no_grad():
        feeds = {k: torch.from_numpy(v[:2]) for k, v in data.feeds.items()}
        outs = teacher.module(**teacher.module.prepare(feeds))
    if wanted:
        if wanted not in outs:
            raise InvalidInput(f"output '{wanted}': the teacher's outputs are {list(outs)}")
        chosen = wanted
    elif len(outs) == 1:
        chosen = next(iter(outs))
    else:
        pooled = [n for n, t in outs.items() if t.ndim == 2]
        if len(pooled) != 1:
            shapes = ", ".join(f"{n}{tuple(t.shape)}" for n, t in outs.items())
            raise InvalidInput(
                f"the teacher has several outputs ({shapes}); name one with --output"
            )
        chosen = pooled[0]
    if teacher.hf is not None and chosen in teacher.io.output_names:
        dims = next(t.dims for t in teacher.io.outputs if t.name == chosen)
        if len(dims) > 1 and not isinstance(dims[1], int):
            # Batches are cut to their longest text, so per-token outputs differ in length.
            raise InvalidInput(
                f"output '{chosen}' has a sequence axis; distill compares a pooled output "
                f"(batch, features): one of {teacher.io.output_names}"
            )
    return chosen


def code_digest(ref: str) -> str | None:
    module, _ = import_factory(ref)
    code = inspect.getsourcefile(module)
    return sha256_file(Path(code)) if code else None


def factory_student(cfg, teacher: Teacher, output: str, data: Dataset) -> Student:
    """A student built by its own factory, checked to run on the teacher's inputs and to give
    the compared output the teacher's shape."""
    # the student's initialisation, the same on every rank, without touching the global seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = student_from_factory(cfg.student)
    outs = teacher.module.outputs
    student = TorchOutputs(net, teacher.input_names, outs if len(outs) > 1 else [output])
    with torch.no_grad():
        feeds = {k: torch.from_numpy(v[:2]) for k, v in data.feeds.items()}
        try:
            got = student(**feeds)
        except (RuntimeError, TypeError, ValueError, InvalidInput) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InvalidInput(
                f"student '{cfg.student}' cannot run on the teacher's inputs "
                f"({', '.join(t.describe() for t in teacher.io.inputs)}): {msg}"
            ) from None
        want = teacher.module(**teacher.module.prepare(feeds))[output]
    if output not in got or got[output].shape != want.shape:
        shape = tuple(got[output].shape) if output in got else None
        raise InvalidInput(
            f"student '{cfg.student}' output '{output}' has shape {shape}; the teacher's "
            f"is {tuple(want.shape)}"
        )
    desc = {"factory": cfg.student, "code": code_digest(cfg.student)}
    return Student(student, net, desc, DEFAULT_LR_SCRATCH, [])


def derived_student(cfg, src: ModelArtifact, teacher: Teacher, log) -> Student:
    """K of a Hugging Face teacher's layers, initialised from them."""
    from edgesmith.toolchain.models.hf import load_hf

    n = hidden_layers(teacher.hf.model)
    keep = list(cfg.keep_layers) or default_layers(n, cfg.student_layers)
    if cfg.keep_layers and len(keep) != cfg.student_layers:
        raise InvalidInput(
            f"keep_layers {keep} names {len(keep)} layers, student_layers is {cfg.student_layers}"
        )
    shf = load_hf(src.path, teacher.task)
    kept = keep_layers(shf.model, keep)
    if not cfg.train_embeddings:
        # The student reads the teacher's vocabulary; its token embeddings are most of its
        # parameters (MiniLM: 11.7M of 17.4M), and updating them every step is most of the
        # step's time on CPU, so they stay the teacher's unless asked.
        pretrained_part(shf.model).get_input_embeddings().requires_grad_(False)
    _, teacher_stack = layer_stack(teacher.hf.model, n)
    layers = [(kept[i], teacher_stack[t]) for i, t in enumerate(keep)]
    log(f"student: teacher layers {keep} of 0..{n - 1}, initialised from the teacher")
    return Student(
        HfOutputs(shf.model, shf.signature),
        shf.model,
        {"layers": keep},
        DEFAULT_LR_DERIVED,
        layers,
    )


def train_config(cfg, default_lr: float, output: str, task: str | None, epochs: Epochs):
    """The loop's settings from a Training config (distill/stage.py) and the epochs chosen
    (training/defaults.py: choose_epochs); without --lr a range test picks the rate near
    `default_lr`, the usual one for what is trained."""
    loss = cfg.loss if cfg.loss != "auto" else ("embedding" if task == FEATURE_TASK else "soft")
    return TrainConfig(
        epochs=epochs.count,
        lr=cfg.lr or default_lr,
        batch_size=cfg.batch_size,
        find_lr=cfg.lr is None,
        patience=choose_patience(cfg.patience, epochs.count),
        epochs_from=epochs.reason,
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


def saver(cfg, src: ModelArtifact, teacher: Teacher, student: Student):
    """The function that writes the trained student into a directory, as an artifact."""

    def save(out: Path) -> ModelArtifact:
        if cfg.student:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in student.net.state_dict().items()}
            save_file(state, str(out / STUDENT_WEIGHTS))
            digest = sha256_json(
                {
                    "factory": cfg.student,
                    "weights": sha256_file(out / STUDENT_WEIGHTS),
                    "code": student.desc["code"],
                }
            )
            info = src.info.inherit(
                factory=cfg.student,
                inputs=tuple(teacher.inputs),
                dynamic=tuple(teacher.dynamic),
                outputs=tuple(student.module.outputs),
            )
            path = out / STUDENT_WEIGHTS
            return ModelArtifact(path, Format.torch, sha256=digest, parent=src.sha256, info=info)
        save_hf_student(student.net, Path(src.path), out)
        return ModelArtifact(
            out,
            Format.hf,
            sha256=sha256_path(out),
            parent=src.sha256,
            info=src.info.inherit(task=teacher.task, tokenizer=str(out)),
            meta={"keep_layers": student.desc["layers"]},
        )

    return save


def prepare(src: ModelArtifact, cfg, log: Callable[[str], None]) -> Setup:
    """Load teacher, student and data for `cfg`; the same on every process."""
    teacher = load_teacher(src, cfg)
    train_data, eval_data = load_data(cfg, teacher.io, teacher.tokenizer)
    output = choose_output(teacher, train_data, cfg.output)
    epochs = choose_epochs(cfg.epochs, len(train_data), cfg.batch_size)
    if cfg.student:
        student = factory_student(cfg, teacher, output, train_data)
    else:
        student = derived_student(cfg, src, teacher, log)
    fingerprint = sha256_json(
        {
            "teacher": src.sha256,
            "student": student.desc,
            "config": cfg.model_dump(exclude={"out", "resume"}),
            "files": cfg.files_digest(),
        }
    )
    return Setup(
        Pair(student.module, teacher.module, student.layers),
        train_data,
        eval_data,
        train_config(cfg, student.default_lr, output, teacher.task, epochs),
        fingerprint,
        parameter_count(teacher.module),
        parameter_count(student.module),
        saver(cfg, src, teacher, student),
    )
