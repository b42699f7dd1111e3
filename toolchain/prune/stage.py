"""The prune stage: a fine-tuned Hugging Face encoder in, a physically smaller one out.

`method = "structured"` removes attention heads and FFN neurons (toolchain/models/encoder.py:
smaller Linear layers, so the exported graph and the engine shrink), chosen by importance
(prune/importance.py), by a fraction or by a latency target searched on the ort-cpu engine
(prune/latency.py), then recovers accuracy by distillation from the unpruned model through
the distill stage's trainer (soft targets plus labels when the data has them; embeddings for
feature-extraction models). The output is a Hugging Face folder whose config records the
pruned shapes; `edgesmith export` takes it with no flags.

The report (report.json, prune.png) gives per layer what was kept, parameters before and
after, engine latency before and after, accuracy before pruning, after it and after recovery,
and every point the latency search tried.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from edgesmith.toolchain.core.stage import Inputs, Stage, StageResult, Workdir
from edgesmith.toolchain.training.config import Training


class PruneStage(Training):
    """Structured pruning with recovery (toolchain/prune)."""

    kind: Literal["prune"] = "prune"
    method: Literal["structured", "magnitude", "movement", "2:4"] = Field(
        default="structured", description="pruning method"
    )
    sparsity: float | None = Field(
        default=None, description="fraction removed (structured: heads, FFN neurons, channels; "
        "magnitude and movement: weights)",
    )  # fmt: skip
    heads: float | None = Field(default=None, description="fraction of attention heads removed")
    ffn: float | None = Field(default=None, description="fraction of FFN neurons removed")
    target_latency: float | None = Field(
        default=None, gt=0, lt=1, description="engine latency ratio to reach (searched)"
    )
    importance: Literal["auto", "taylor", "magnitude"] = Field(
        default="auto", description="head and neuron importance (auto: taylor with labels)"
    )
    scope: Literal["layer", "global"] = Field(
        default="layer", description="rank within each layer, or across layers"
    )
    round_to: int = Field(default=8, ge=1, description="kept FFN sizes are multiples of it")
    importance_samples: int = Field(default=512, ge=1, description="samples Taylor scores on")
    teacher: str | None = Field(
        default=None, description="the recovery's teacher (default: the unpruned input model)"
    )
    epochs: int | None = Field(
        default=None, ge=0, description="recovery epochs (0: none; default: from the data "
        "size, about 2000 steps scaled by the amount pruned)",
    )  # fmt: skip
    latency_batches: list[int] = Field(default=[1, 8], description="engine batch sizes timed")
    latency_seq: int = Field(default=128, ge=1, description="sequence length engines are timed at")
    latency_rounds: int = Field(default=20, ge=1, description="interleaved timing rounds")
    latency_tolerance: float = Field(
        default=0.05, ge=0, description="how far the final engine may re-measure over the target"
    )
    threads: int | None = Field(default=2, ge=1, description="threads of the engines timed")
    schedule: Literal["oneshot", "cubic"] = Field(
        default="oneshot", description="magnitude: mask once, or raise the sparsity gradually "
        "(cubic, Zhu & Gupta); movement is always cubic",
    )  # fmt: skip
    schedule_start: float | None = Field(
        default=None, ge=0, description="epoch the schedule starts at (default: movement "
        "after a warm-up of 10% of the epochs, as Sanh et al.; magnitude at once)",
    )  # fmt: skip
    schedule_end: float | None = Field(
        default=None, gt=0, description="epoch the final sparsity is reached (default: "
        "movement at 80% of the epochs, magnitude at 2/3)",
    )  # fmt: skip
    mask_interval: int = Field(default=10, ge=1, description="steps between mask updates")
    movement: Literal["hard", "soft"] = Field(
        default="hard", description="movement: top scores per layer, or one threshold for all"
    )
    opset: int = Field(default=18, ge=7, le=23)
    MODEL_FIELDS: ClassVar[dict[str, str | None]] = {"teacher": None}

    @model_validator(mode="after")
    def _one_amount(self) -> PruneStage:
        for name in ("sparsity", "heads", "ffn"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < 1:
                raise ValueError(f"{name} {v}: the fraction pruned must be in [0, 1)")
        if self.method == "structured":
            given = [self.sparsity is not None, self.heads is not None or self.ffn is not None]
            given.append(self.target_latency is not None)
            if sum(given) != 1:
                raise ValueError("give exactly one of sparsity, heads/ffn, target_latency")
            return self
        if self.heads is not None or self.ffn is not None or self.target_latency is not None:
            raise ValueError(
                f"method {self.method} makes weights zero: heads, ffn and target_latency "
                "are for structured pruning (zeros do not change an ort-cpu engine's latency)"
            )
        if self.method == "2:4":
            if self.sparsity not in (None, 0.5):
                raise ValueError("method 2:4 is 50% sparse by definition: leave sparsity out")
        elif self.sparsity is None:
            raise ValueError(f"method {self.method} needs sparsity (the fraction of weights zero)")
        if self.gradual and self.epochs == 0:
            raise ValueError(f"method {self.method} with a schedule trains: epochs must be >= 1")
        if self.gradual and self.epochs is not None:
            self.schedule_bounds(self.epochs)  # with epochs chosen: checked once they are
        return self

    @property
    def gradual(self) -> bool:
        return self.method == "movement" or (
            self.method == "magnitude" and self.schedule == "cubic"
        )

    def weight_sparsity(self) -> float:
        """The fraction of weights the weight-sparsity methods make zero."""
        return 0.5 if self.method == "2:4" else float(self.sparsity or 0.0)

    def schedule_bounds(self, epochs: int) -> tuple[float, float]:
        """The epochs the gradual schedule starts and ends at, over a run of `epochs`:
        Sanh et al.'s for movement (a warm-up of 10% at full density, the cubic rise, the last
        20% at the final sparsity), Zhu & Gupta's for magnitude (from the start to 2/3).
        ValueError when they do not fit in the run."""
        movement = self.method == "movement"
        start = self.schedule_start
        start = (0.1 * epochs if movement else 0.0) if start is None else start
        end = self.schedule_end
        end = (0.8 if movement else 2 / 3) * epochs if end is None else end
        if end > epochs:
            raise ValueError(
                f"schedule_end {end:g} is after the last epoch ({epochs}): the schedule must "
                "end within the training"
            )
        if start >= end:
            raise ValueError(f"schedule_start {start:g} must be before its end {end:g}")
        return start, end

    def budget_scale(self) -> float:
        """How much longer than a dense model's the recovery runs when its epochs are chosen
        (training/defaults.py: budget_scale), by the largest fraction removed."""
        from edgesmith.toolchain.training.defaults import budget_scale

        if self.target_latency is not None:
            return budget_scale(1 - self.target_latency)
        if self.method != "structured":
            return budget_scale(self.weight_sparsity())
        return budget_scale(max(self.fractions()))

    def fractions(self) -> tuple[float, float]:
        if self.sparsity is not None:
            return self.sparsity, self.sparsity
        return self.heads or 0.0, self.ffn or 0.0


def run(inputs: Inputs, cfg: PruneStage, work: Workdir) -> StageResult:
    import time

    from edgesmith.toolchain.prune.common import setup

    start = time.perf_counter()
    s = setup(inputs, cfg)
    if cfg.method == "structured":
        from edgesmith.toolchain.prune.run import prune_structured

        return prune_structured(s, work, start)
    from edgesmith.toolchain.prune.weights import prune_weights

    return prune_weights(s, work, start)


STAGE = Stage(
    "prune",
    PruneStage,
    run,
    help="Prune a fine-tuned model for real (an encoder's heads and FFN neurons, a CNN's "
    "channels), recover it by distillation, and measure the engine before and after.",
    distributed=True,
    example="edgesmith prune ./my-bert -o build/pruned --data train.jsonl --heads 0.5 --ffn 0.5",
)
