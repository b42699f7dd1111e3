"""What every prune method shares: the set-up (source, teacher, data, loss), recovery by
distillation, the accuracy before and after, the artifact written, the plan shared under
torchrun."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesmith.toolchain.core.artifact import Format, ModelArtifact
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.files import sha256_file, sha256_json, sha256_path
from edgesmith.toolchain.core.stage import Inputs, Workdir
from edgesmith.toolchain.training.defaults import Epochs, choose_epochs
from edgesmith.toolchain.training.setup import choose_output, load_data, load_teacher, train_config

# the usual rates the range test is held near (training/defaults.py): recovery fine-tunes a
# model that was trained, at a fine-tuning rate; a small CNN trained with Adam takes a larger
# one (examples/digits.py: 2e-3)
DEFAULT_LR = 5e-5
DEFAULT_LR_CNN = 1e-3


def _check_source(src: ModelArtifact) -> None:
    if src.format is Format.hf or (src.format is Format.torch and src.info.factory):
        return
    raise InvalidInput(
        f"{src.path}: structured pruning takes a Hugging Face encoder folder or a PyTorch "
        f"model from package.module:factory + safetensors, got {src.format.value}"
        + (" (a .pt2 program cannot be resized)" if src.format is Format.torch else "")
        + "; put prune before export in a recipe"
    )


@dataclass
class Setup:
    """What every method works from: the source, the teacher, the data and the loss."""

    src: ModelArtifact
    cfg: Any  # the stage's config (prune/stage.py: PruneStage)
    teacher: Any  # training/setup.py: Teacher
    train: Any
    evals: Any
    output: str
    lr: float
    loss: str
    own_teacher: bool  # the teacher is the unpruned model itself (no teacher given)
    epochs: Epochs  # the recovery's, given or chosen (training/defaults.py)

    def unpruned(self):
        """The unpruned model, loaded (the teacher's, when it is the same model): an HfModel
        or a TorchModel, and its outputs module."""
        if self.own_teacher:
            t = self.teacher
            return (t.hf if self.src.format is Format.hf else t.torch), t.module
        if self.src.format is Format.hf:
            import torch

            from edgesmith.toolchain.models.hf import load_hf

            head = new_head(self.src, self.teacher)
            if head is None:
                return load_hf(self.src.path, self.src.info.task), None
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.seed)
                return load_hf(self.src.path, self.teacher.task, head), None
        from edgesmith.toolchain.models.source import torch_spec
        from edgesmith.toolchain.models.torch import TorchRunner, load_torch

        tm = load_torch(torch_spec(self.src))
        TorchRunner(tm)  # names the outputs
        return tm, None


def new_head(src: ModelArtifact, teacher) -> dict | None:
    """Fine-pruning: when MODEL is an encoder without the teacher's classification head (a
    pretrained encoder, or one with another label set), the head the student gets (the
    teacher's labels, new weights); None when MODEL already has it."""
    if teacher.hf is None or src.format is not Format.hf:
        return None
    config = teacher.hf.model.config
    if teacher.task not in ("text-classification", "token-classification", "image-classification",
                            "audio-classification"):  # fmt: skip
        return None
    import json

    own = json.loads((Path(src.path) / "config.json").read_text())
    from edgesmith.toolchain.models.hf import infer_task

    labels = {int(k): v for k, v in (config.id2label or {}).items()}
    own_labels = {int(k): v for k, v in (own.get("id2label") or {}).items()}
    if (src.info.task or infer_task(Path(src.path))) == teacher.task and own_labels == labels:
        return None  # the same labels in the same order: MODEL's head is the task's
    return {"num_labels": config.num_labels, "id2label": dict(config.id2label),
            "label2id": dict(config.label2id)}  # fmt: skip


def setup(inputs: Inputs, cfg) -> Setup:
    src = inputs.model
    _check_source(src)
    teacher = load_teacher(inputs.get("teacher") or src, cfg)
    train, evals = load_data(cfg, teacher.io, teacher.tokenizer)
    output = choose_output(teacher, train, cfg.output)
    lr = cfg.lr or (DEFAULT_LR if src.format is Format.hf else DEFAULT_LR_CNN)
    epochs = choose_epochs(cfg.epochs, len(train), cfg.batch_size, cfg.budget_scale())
    if cfg.gradual:
        try:
            cfg.schedule_bounds(epochs.count)
        except ValueError as e:
            raise InvalidInput(f"{e} ({epochs.count} epochs: {epochs.reason})") from None
    loss = train_config(cfg, lr, output, teacher.task, epochs).loss
    own = inputs.get("teacher") is None
    return Setup(src, cfg, teacher, train, evals, output, lr, loss, own, epochs)


def recover(candidate, s: Setup, work: Workdir, fingerprint: str, callbacks=()) -> dict:
    """Distil the unpruned model into the pruned one (the distill stage's trainer); a
    checkpoint resumes only a run of the same `fingerprint`."""
    from edgesmith.toolchain.training.trainer import Pair, Trainer, TrainRun

    cfg = s.cfg
    tcfg = train_config(cfg, s.lr, s.output, s.teacher.task, s.epochs)
    run = TrainRun(work.scratch / "recovery", fingerprint, work.log, callbacks)
    trainer = Trainer(Pair(candidate.outputs, s.teacher.module), (s.train, s.evals), tcfg, run)
    result = trainer.fit(resume=cfg.resume)
    return {"loss": tcfg.loss, "epochs": tcfg.epochs, **result.to_dict()}


def accuracy(s: Setup, unpruned, pruned) -> dict[str, Any]:
    """The distillation loop's eval metric (accuracy with labels) of the unpruned model and of
    the pruned one before recovery (outputs modules; `unpruned` None: the teacher is it)."""
    from edgesmith.toolchain.training.parallel import outputs_of
    from edgesmith.toolchain.training.steps import evaluate

    def outputs(module):
        return outputs_of(module, s.evals, s.output, 256)

    ref = outputs(s.teacher.module)
    base = ref if unpruned is None or unpruned is s.teacher.module else outputs(unpruned)
    name, before = evaluate(base, ref, s.evals.labels, s.loss)
    _, after_pruning = evaluate(outputs(pruned), ref, s.evals.labels, s.loss)
    return {"metric": name, "before_pruning": before, "after_pruning": after_pruning}


def artifact(src: ModelArtifact, candidate, path: Path, task, structure) -> ModelArtifact:
    if src.format is Format.hf:
        info = src.info.inherit(task=task, tokenizer=str(path), structure=structure)
        return ModelArtifact(path, Format.hf, sha256=sha256_path(path), parent=src.sha256,
                             info=info)  # fmt: skip
    from edgesmith.toolchain.training.setup import code_digest

    digest = sha256_json({"factory": src.info.factory, "weights": sha256_file(path),
                          "code": code_digest(src.info.factory)})  # fmt: skip
    info = src.info.inherit(outputs=tuple(candidate.tm.output_names), structure=structure)
    return ModelArtifact(path, Format.torch, sha256=digest, parent=src.sha256, info=info)


def shared(plan, work: Workdir):
    """Rank 0's plan on every torchrun process. The processes join the group only now: rank 0
    chose the plan by timing engines, and the others, waiting to join, took no core from it."""
    import torch.distributed as dist

    from edgesmith.toolchain.training.parallel import device_for_rank, init_distributed

    _, world = init_distributed()
    if world == 1:
        return plan
    work.log(f"distributed: {world} processes ({dist.get_backend()})")
    box = [plan]
    # between our own processes, not from a file
    dist.broadcast_object_list(box, src=0, device=device_for_rank())
    return box[0]
