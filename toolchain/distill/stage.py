"""The distill stage: a teacher (the stage's input) and data in, a smaller student out.

What is trained and how the student is saved: training/setup.py; the loop: training/trainer.py.
Checkpoints go to the stage's scratch directory (the pipeline's, under the run's root): the
output appears only when complete, and an interrupted run must leave its epochs where
`resume` finds them. The pipeline removes them once the student is in place.

Under torchrun every process runs this stage (distributed=True): each trains, rank 0 alone
writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from edgesmith.toolchain.core.stage import Inputs, Stage, StageResult, Workdir
from edgesmith.toolchain.training.config import Training


class DistillStage(Training):
    """A smaller student trained on the teacher's outputs (toolchain/distill)."""

    kind: Literal["distill"] = "distill"
    student: str | None = Field(
        default=None, description="the student's architecture: package.module:factory"
    )
    student_layers: int | None = Field(
        default=None, ge=1, description="or: keep K of a Hugging Face teacher's layers, "
        "initialised from them",
    )  # fmt: skip
    keep_layers: list[int] = Field(
        default=[], description="which teacher layers the student keeps (default: evenly "
        "spaced, the first and the last kept)",
    )  # fmt: skip
    train_embeddings: bool = Field(
        default=False, description="derived students: also train the token embeddings"
    )

    @model_validator(mode="after")
    def _one_student(self) -> DistillStage:
        if (self.student is None) == (self.student_layers is None):
            raise ValueError("give exactly one of student (a factory) and student_layers")
        return self


@dataclass
class DistillReport:
    """The distillation's record (the manifest's metrics): sizes, the loss and its output,
    the rate, and the training's result (training/trainer.py: TrainResult)."""

    teacher_params: int
    student_params: int
    param_ratio: float
    loss: str
    output: str
    lr: float
    training: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The training's result beside the other fields, as the manifest has always held it."""
        fields = {k: v for k, v in asdict(self).items() if k != "training"}
        return {**fields, **self.training}


def run(inputs: Inputs, cfg: DistillStage, work: Workdir) -> StageResult:
    """Train (every torchrun process), then write the student into `work.out` (rank 0)."""
    import torch

    from edgesmith.toolchain.training.setup import prepare
    from edgesmith.toolchain.training.trainer import close_distributed, init_distributed

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
    report = DistillReport(
        setup.teacher_params,
        setup.student_params,
        ratio,
        setup.train_cfg.loss,
        setup.train_cfg.output,
        result.settings["lr"],
        result.to_dict(),
    )
    teacher = f" (teacher {result.teacher_metric:.4f})" if result.teacher_metric is not None else ""
    summary = (
        f"student {setup.student_params:,} parameters ({ratio:.1%} of the teacher's); best "
        f"epoch {result.best_epoch}/{setup.train_cfg.epochs}: eval {result.metric_name} "
        f"{result.best_metric:.4f}{teacher}"
    )
    return StageResult(art, report.to_json(), summary=summary)


STAGE = Stage(
    "distill",
    DistillStage,
    run,
    help="Distil a teacher into a smaller student (under `torchrun --nproc-per-node N`: DDP).",
    distributed=True,
    model_option="teacher",
    torch_threads=True,
    example="edgesmith distill --teacher ./my-bert --student-layers 3 --data train.txt "
    "-o build/student",
)
