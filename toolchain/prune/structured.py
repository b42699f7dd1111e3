"""The structured method: score the prunable units once, then make pruned copies of the model
at any fraction (the latency search makes several, the stage keeps one).

Two kinds of model, one interface (`Pruner.plan`, `Pruner.apply` → `Candidate`):
- a Hugging Face encoder (`EncoderPruner`): attention heads and FFN neurons
  (models/encoder.py); the pruned copy is a Hugging Face folder;
- a PyTorch model from `package.module:factory` + safetensors (`ChannelPruner`): conv
  channels and Linear features with their dependents (models/channels.py); the pruned copy is
  a safetensors file that records its shapes, loaded by the same factory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.files import sha256_json
from edgesmith.toolchain.prune.importance import (
    Scores,
    accumulate_taylor,
    magnitude_scores,
    select,
    select_units,
    taylor_scores,
)
from edgesmith.toolchain.training.parallel import to_tensors

WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Scoring:
    """How a pruner scores its units: `kind` (choose_importance()), on `data` (the training
    data), through the loss of the output named `output`; `log` for progress."""

    kind: str
    data: Any
    output: str
    log: Any


def choose_importance(wanted: str, has_labels: bool, loss: str) -> str:
    """auto: taylor where labels give the gradient a meaning (a classifier), else magnitude."""
    if wanted != "auto":
        if wanted == "taylor" and not (has_labels and loss == "soft"):
            raise InvalidInput(
                "--importance taylor needs labelled data for a classifier (the gradient of its "
                "loss); this data has no labels or the model is an embedding model: use magnitude"
            )
        return wanted
    return "taylor" if has_labels and loss == "soft" else "magnitude"


def timing_seq(hf, cfg) -> int:
    """Engines are timed at the configured sequence length, or the model's longest."""
    longest = getattr(hf.model.config, "max_position_embeddings", None) or cfg.latency_seq + 2
    # RoBERTa-like families number positions from after the padding index: 2 fewer tokens
    return min(cfg.latency_seq, longest - 2)


def _taylor_batches(wrapped, data, cfg, log) -> list[tuple[dict, torch.Tensor]]:
    n = min(len(data), cfg.importance_samples)
    log(f"prune: Taylor importance on {n} samples")
    batches = []
    for start in range(0, n, cfg.batch_size):
        idx = np.arange(start, min(n, start + cfg.batch_size))
        feeds = wrapped.prepare(to_tensors(data.feeds, idx, torch.device("cpu")))
        batches.append((feeds, torch.from_numpy(data.labels[idx])))
    return batches


def _task_loss(wrapped, output: str):
    def loss(feeds, labels):
        return torch.nn.functional.cross_entropy(wrapped(**feeds)[output], labels)

    return loss


# --- Hugging Face encoders: heads and FFN neurons --------------------------------------------


@dataclass
class Plan:
    """What a pruned encoder keeps: per layer, original head indices and FFN neuron indices."""

    heads_fraction: float
    ffn_fraction: float
    heads: list[list[int]]
    ffn: list[list[int]]

    def digest(self) -> str:
        return sha256_json({"heads": self.heads, "ffn": self.ffn})

    def describe(self, before: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "layer": i,
                "heads": f"{len(h)}/{before['heads'][i]}",
                "ffn": f"{len(f)}/{before['ffn'][i]}",
                "heads_kept": h,
            }
            for i, (h, f) in enumerate(zip(self.heads, self.ffn, strict=True))
        ]


class EncoderCandidate:
    """A pruned copy of a Hugging Face encoder."""

    def __init__(self, hf, source: Path) -> None:
        from edgesmith.toolchain.models.encoder import encoder_layers, head_counts, parameter_counts
        from edgesmith.toolchain.models.students import HfOutputs

        self.hf, self.source = hf, source
        self.outputs = HfOutputs(hf.model, hf.signature)
        self.parameters = parameter_counts(hf.model)
        self.structure = {
            "heads": head_counts(hf.model),
            "ffn": [lay.ffn_size for lay in encoder_layers(hf.model)],
        }

    def export(self, directory: Path, opset: int) -> Path:
        from edgesmith.toolchain.models.hf import onnx_from_hf

        return onnx_from_hf(self.hf, directory, opset)

    def save(self, out: Path) -> Path:
        from edgesmith.toolchain.models.students import save_hf_student

        save_hf_student(self.hf.model, self.source, out)
        return out


class EncoderPruner:
    """Heads and FFN neurons of one Hugging Face encoder, scored on the training data."""

    format = "hf"

    def __init__(self, hf, cfg, scoring: Scoring, wrapped=None):
        """`hf`: the unpruned model that pruned copies are made from (left as it is);
        `wrapped`: its HfOutputs, when the caller has one (the recovery's teacher)."""
        from edgesmith.toolchain.models.encoder import encoder_layers, head_counts, parameter_counts
        from edgesmith.toolchain.models.students import HfOutputs

        self.hf, self.path, self.task = hf, hf.path, hf.task
        self.cfg, self.output, self.log = cfg, scoring.output, scoring.log
        self.wrapped = wrapped or HfOutputs(hf.model, hf.signature)
        self.layers = encoder_layers(self.hf.model)
        self.before = {
            "heads": head_counts(self.hf.model),
            "ffn": [layer.ffn_size for layer in self.layers],
            "parameters": parameter_counts(self.hf.model),
        }
        self.scores = self._scores(scoring.kind, scoring.data)
        self.seq = timing_seq(hf, cfg)
        self.unpruned = EncoderCandidate(hf, Path(self.path))

    def _scores(self, kind: str, data) -> Scores:
        if kind == "magnitude":
            return magnitude_scores(self.hf.model, self.layers)
        batches = _taylor_batches(self.wrapped, data, self.cfg, self.log)
        return taylor_scores(
            self.hf.model, self.layers, batches, _task_loss(self.wrapped, self.output)
        )

    def plan(self, heads_fraction: float, ffn_fraction: float | None = None) -> Plan:
        from edgesmith.toolchain.models.encoder import remaining_heads

        ffn_fraction = heads_fraction if ffn_fraction is None else ffn_fraction
        keep_h, keep_f = select(
            self.scores, heads_fraction, ffn_fraction, self.cfg.round_to, self.cfg.scope
        )
        heads = []
        for i, positions in enumerate(keep_h):
            remaining = remaining_heads(self.hf.model, i)
            heads.append([remaining[p] for p in positions])
        return Plan(heads_fraction, ffn_fraction, heads, keep_f)

    def apply(self, plan: Plan) -> EncoderCandidate:
        """A pruned copy of the model (the unpruned one is left as it is)."""
        from edgesmith.toolchain.models.encoder import prune_encoder, remaining_heads
        from edgesmith.toolchain.models.hf import HfModel

        model = copy.deepcopy(self.hf.model)
        drop = {
            i: [h for h in remaining_heads(model, i) if h not in set(kept)]
            for i, kept in enumerate(plan.heads)
        }
        prune_encoder(model, drop, dict(enumerate(plan.ffn)))
        hf = HfModel(self.path, self.task, self.hf.library, model.eval(), self.hf.signature)
        return EncoderCandidate(hf, Path(self.path))


# --- PyTorch factory models: channels -------------------------------------------------------


@dataclass
class ChannelPlan:
    """What a pruned model keeps: per prunable channel group, the channel indices."""

    fraction: float
    keep: list[list[int]]
    names: list[str]
    sizes: list[int]

    def digest(self) -> str:
        return sha256_json({"channels": self.keep, "groups": self.names})

    def describe(self, before: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"group": name, "channels": f"{len(k)}/{size}"}
            for name, k, size in zip(self.names, self.keep, self.sizes, strict=True)
        ]


class ChannelCandidate:
    """A pruned copy of a PyTorch factory model (the module, its inputs and outputs)."""

    def __init__(self, tm, rec: dict[str, Any], plan: ChannelPlan | None) -> None:
        from edgesmith.toolchain.models.students import TorchOutputs, parameter_count

        self.tm, self.record = tm, rec
        names = [d.name for d in tm.inputs]
        self.outputs = TorchOutputs(tm.module, names, tm.output_names)
        self.parameters = {"total": parameter_count(tm.module)}
        self.structure = {
            "channels": {n: len(k) for n, k in zip(plan.names, plan.keep, strict=True)}
            if plan
            else {}
        }

    def export(self, directory: Path, opset: int) -> Path:
        from edgesmith.toolchain.models.torch import onnx_from_torch

        return onnx_from_torch(self.tm, directory / "model.onnx", opset)

    def save(self, out: Path) -> Path:
        from safetensors.torch import save_file

        from edgesmith.toolchain.models.channels import metadata

        state = {k: v.detach().cpu().contiguous() for k, v in self.tm.module.state_dict().items()}
        save_file(state, str(out / WEIGHTS), metadata=metadata(self.record))
        return out / WEIGHTS


class ChannelPruner:
    """The prunable channel groups of a PyTorch model, scored on the training data."""

    format = "torch"

    def __init__(self, tm, cfg, scoring: Scoring, wrapped=None):
        from edgesmith.toolchain.models.channels import channel_groups
        from edgesmith.toolchain.models.students import TorchOutputs, parameter_count

        if cfg.heads is not None or cfg.ffn is not None:
            raise InvalidInput(
                "--heads/--ffn prune a transformer encoder; for channel pruning give "
                "--sparsity or --target-latency"
            )
        self.tm, self.cfg, self.output, self.log = tm, cfg, scoring.output, scoring.log
        names = [d.name for d in tm.inputs]
        self.wrapped = wrapped or TorchOutputs(tm.module, names, tm.output_names)
        example = tuple(torch.from_numpy(v) for v in tm.example(batch=2).values())
        groups = channel_groups(tm.module, example)
        self.groups = [g for g in groups if g.prunable]
        if not self.groups:
            reasons = sorted({g.blocked for g in groups if g.blocked})
            raise InvalidInput(
                "nothing prunable: no channel group can be removed without changing the "
                f"model's inputs or outputs or an op the analysis does not know ({reasons[:3]})"
            )
        self.before = {
            "channels": {g.name(): g.size for g in self.groups},
            "parameters": {"total": parameter_count(tm.module)},
        }
        self.scores = self._scores(scoring.kind, scoring.data)
        self.seq = None  # inputs have fixed shapes but the batch
        self.unpruned = ChannelCandidate(tm, {"method": "channels", "modules": []}, None)

    def _scores(self, kind: str, data) -> list[np.ndarray]:
        from edgesmith.toolchain.models.channels import group_scores

        module = self.tm.module

        def score(fn) -> list[np.ndarray]:
            return [group_scores(module, g, fn) for g in self.groups]

        if kind == "magnitude":
            with torch.no_grad():
                return score(torch.abs)
        batches = _taylor_batches(self.wrapped, data, self.cfg, self.log)
        return accumulate_taylor(module, batches, _task_loss(self.wrapped, self.output), score)

    def plan(self, fraction: float, _ffn: float | None = None) -> ChannelPlan:
        keep = select_units(self.scores, fraction, self.cfg.round_to, self.cfg.scope)
        return ChannelPlan(
            fraction, keep, [g.name() for g in self.groups], [g.size for g in self.groups]
        )

    def apply(self, plan: ChannelPlan) -> ChannelCandidate:
        from dataclasses import replace

        from edgesmith.toolchain.models.channels import apply_groups, record

        module = copy.deepcopy(self.tm.module)
        apply_groups(module, self.groups, plan.keep)
        tm = replace(self.tm, module=module.eval(), output_names=list(self.tm.output_names))
        return ChannelCandidate(tm, record(self.groups, plan.keep), plan)
