"""The distill stage: a teacher (the stage's input) and data in, a smaller student out.

What is trained and how the student is saved: distill/setup.py; the loop: distill/trainer.py.
Checkpoints go to the stage's scratch directory (the pipeline's, under the run's root): the
output appears only when complete, and an interrupted run must leave its epochs where
`resume` finds them. The pipeline removes them once the student is in place.

Under torchrun every process runs this stage (distributed=True): each trains, rank 0 alone
writes.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from toolchain.core.recipe import StageConfig
from toolchain.core.stage import Inputs, Stage, StageResult, Workdir


class Training(StageConfig):
    """What a stage that trains with the distillation loop takes (distill; prune's recovery):
    the data, the loss and the optimiser's settings. Fields only; the stages add their own."""

    data: str = Field(description="training data: .npz, a folder of .npy, text lines or .jsonl")
    eval_data: str | None = Field(
        default=None, description="eval data (default: eval_fraction of the data, held out)"
    )
    eval_fraction: float = Field(default=0.1, gt=0, lt=1)
    tokenizer: str | None = Field(
        default=None, description="tokenizer folder for text data (default: the model's)"
    )
    seq_len: int = Field(default=128, ge=1, description="token sequence length for text data")
    limit: int | None = Field(default=None, ge=1, description="use only the first N samples")
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, ge=1)  # global, across torchrun processes
    lr: float | None = Field(
        default=None, gt=0, description="peak learning rate (default: by what is trained)"
    )
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(
        default=0.5, ge=0, le=1, description="weight of the soft targets; 1 - alpha on labels"
    )
    loss: Literal["auto", "soft", "embedding"] = "auto"
    output: str | None = None  # the output compared; default the only (batch, features) one
    mse_weight: float = Field(default=1.0, ge=0)
    cos_weight: float = Field(default=1.0, ge=0)
    hidden_weight: float = Field(default=0.0, ge=0)
    dropout: float | None = Field(default=None, ge=0, lt=1)  # the student's; None: as built
    weight_decay: float = Field(default=0.01, ge=0)
    seed: int = 0
    resume: bool = False  # continue an interrupted run from its last complete epoch
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ("data", "eval_data", "tokenizer")


class DistillStage(Training):
    """A smaller student trained on the teacher's outputs (toolchain/distill)."""

    kind: Literal["distill"] = "distill"
    student: str | None = None  # package.module:factory, the student's architecture
    student_layers: int | None = Field(default=None, ge=1)  # or: K of the teacher's layers
    keep_layers: list[int] = []  # which ones (default: evenly spaced, first and last kept)
    train_embeddings: bool = False  # derived students: also train the token embeddings

    @model_validator(mode="after")
    def _one_student(self) -> DistillStage:
        if (self.student is None) == (self.student_layers is None):
            raise ValueError("give exactly one of student (a factory) and student_layers")
        return self


def run(inputs: Inputs, cfg: DistillStage, work: Workdir) -> StageResult:
    """Train (every torchrun process), then write the student into `work.out` (rank 0)."""
    import torch

    from toolchain.distill.setup import prepare
    from toolchain.distill.trainer import close_distributed, init_distributed

    setup = prepare(inputs.model, cfg, work.log)
    try:
        _, world = init_distributed()
        if world > 1:
            work.log(f"distributed: {world} processes ({torch.distributed.get_backend()})")
        work.log(
            f"teacher {setup.teacher_params:,} parameters, student {setup.student_params:,} "
            f"({setup.student_params / setup.teacher_params:.1%}); {len(setup.train_data)} "
            f"training, {len(setup.eval_data)} eval samples; loss {setup.train_cfg.loss} on "
            f"'{setup.train_cfg.output}'"
        )
        trainer = setup.trainer(work.scratch, log=work.log)
        result = trainer.fit(resume=cfg.resume)
    finally:
        close_distributed()
    if work.rank != 0:
        return StageResult(None)
    art = setup.save(work.out)
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


STAGE = Stage(
    "distill",
    DistillStage,
    run,
    command="toolchain.cli.distill:command",
    distributed=True,
)
