"""Distillation losses: what pulls a student toward its teacher.

- Classifiers: soft targets at a temperature (Hinton et al., 2015), plus cross-entropy on hard
  labels when the data has them, mixed by `alpha`.
- Sentence-embedding encoders (no labels): MSE and cosine distance between the embeddings,
  optionally plus MSE between matched hidden states (layer i of the student against the
  teacher layer it was initialised from).

Every function returns the scalar to minimise and its parts (floats, for the progress log).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

LOSS_KINDS = ("soft", "embedding")


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher ‖ student) of the tempered softmaxes, times T².

    The T² keeps the gradient's scale independent of T (Hinton et al., section 2), so `alpha`
    means the same at every temperature.
    """
    t = float(temperature)
    return (
        F.kl_div(
            F.log_softmax(student_logits / t, dim=-1),
            F.log_softmax(teacher_logits / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


def logits_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha · soft targets + (1 − alpha) · cross-entropy on labels (soft only without labels)."""
    soft = soft_target_loss(student_logits, teacher_logits, temperature)
    if labels is None:
        return soft, {"soft": float(soft.detach())}
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard, {
        "soft": float(soft.detach()),
        "hard": float(hard.detach()),
    }


def embedding_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    mse_weight: float = 1.0,
    cos_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """mse_weight · MSE + cos_weight · (1 − cosine), both averaged over the batch.

    For L2-normalised embeddings the MSE alone is tiny (about 2(1 − cos)/dim); the cosine
    term is what keeps the directions together, the MSE keeps the norms.
    """
    mse = F.mse_loss(student, teacher)
    cos = 1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=-1).mean()
    return mse_weight * mse + cos_weight * cos, {
        "mse": float(mse.detach()),
        "1-cos": float(cos.detach()),
    }


def hidden_state_loss(
    student_states: list[torch.Tensor], teacher_states: list[torch.Tensor]
) -> torch.Tensor:
    """Mean MSE over matched pairs of hidden states (every position, padding included)."""
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError(
            f"hidden states: {len(student_states)} student vs {len(teacher_states)} teacher"
        )
    losses = [F.mse_loss(s, t) for s, t in zip(student_states, teacher_states, strict=True)]
    return torch.stack(losses).mean()


Loss = Callable[[torch.Tensor, torch.Tensor, np.ndarray], tuple[torch.Tensor, dict[str, float]]]


def make_loss(cfg, labels: np.ndarray | None, device: torch.device) -> Loss:
    """The loss strategy: (student output, teacher target, batch indices) → (loss, parts)."""
    if cfg.loss == "soft":

        def soft(out, target, idx):
            y = None if labels is None else torch.from_numpy(labels[idx]).to(device)
            return logits_loss(out, target, y, temperature=cfg.temperature, alpha=cfg.alpha)

        return soft

    def embedding(out, target, idx):
        return embedding_loss(out, target, mse_weight=cfg.mse_weight, cos_weight=cfg.cos_weight)

    return embedding
