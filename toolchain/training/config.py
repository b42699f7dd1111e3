"""The training settings distill and prune's recovery share (one set of fields and defaults)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from edgesmith.toolchain.core.stage import StageConfig


class Training(StageConfig):
    """What a stage that trains with the distillation loop takes (distill; prune's recovery):
    the data, the loss and the optimiser's settings. Fields only; the stages add their own."""

    data: str = Field(description="training data: .npz, a folder of .npy, text lines or .jsonl")
    eval_data: str | None = Field(
        default=None, description="eval data (default: eval_fraction of the data, held out)"
    )
    eval_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="fraction of the data held out when no eval data"
    )
    tokenizer: str | None = Field(
        default=None, description="tokenizer folder for text data (default: the model's)"
    )
    seq_len: int = Field(default=128, ge=1, description="token sequence length for text data")
    limit: int | None = Field(default=None, ge=1, description="use only the first N samples")
    epochs: int | None = Field(
        default=None, ge=1,
        description="training epochs (default: from the data size, about 2000 steps)",
    )  # fmt: skip
    batch_size: int = Field(
        default=32, ge=1, description="samples per step, across all torchrun processes"
    )
    lr: float | None = Field(
        default=None, gt=0, description="peak learning rate (default: a range test's choice)"
    )
    patience: int | None = Field(
        default=None, ge=0, description="stop after this many epochs without a better eval "
        "metric (0: never; default: a tenth of the epochs, at least 3)",
    )  # fmt: skip
    temperature: float = Field(
        default=4.0, gt=0, description="softmax temperature of the soft targets"
    )
    alpha: float = Field(
        default=0.5, ge=0, le=1, description="weight of the soft targets; 1 - alpha on labels"
    )
    loss: Literal["auto", "soft", "embedding"] = Field(
        default="auto",
        description="soft targets (classifiers), embedding (MSE + cosine), or auto by the task",
    )
    output: str | None = Field(
        default=None,
        description="the output compared (default: the only one shaped batch x features)",
    )
    mse_weight: float = Field(default=1.0, ge=0, description="embedding loss: weight of MSE")
    cos_weight: float = Field(default=1.0, ge=0, description="embedding loss: weight of 1 - cosine")
    hidden_weight: float = Field(
        default=0.0, ge=0, description="weight of the hidden-state loss (derived students)"
    )
    dropout: float | None = Field(
        default=None, ge=0, lt=1, description="the student's dropout (default: as built)"
    )
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay")
    seed: int = Field(default=0, description="seed of the data order and initialisation")
    resume: bool = Field(
        default=False, description="continue an interrupted run from its last complete epoch"
    )
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ("data", "eval_data", "tokenizer")
