"""The structured method: score heads and FFN neurons once, then make pruned copies of the
model at any fraction (the latency search makes several, the stage keeps one)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from toolchain.core.errors import InvalidInput
from toolchain.distill.parallel import to_tensors
from toolchain.export.hf import HfModel
from toolchain.prune.encoder import (
    encoder_layers,
    head_counts,
    parameter_counts,
    prune_encoder,
    remaining_heads,
)
from toolchain.prune.importance import Scores, magnitude_scores, select, taylor_scores


@dataclass
class Plan:
    """What a pruned copy keeps: per layer, original head indices and FFN neuron indices."""

    heads_fraction: float
    ffn_fraction: float
    heads: list[list[int]]
    ffn: list[list[int]]

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


class StructuredPruner:
    """Heads and FFN neurons of one Hugging Face encoder, scored on the training data."""

    def __init__(self, hf: HfModel, train_data, output: str, cfg, kind: str, log, wrapped=None):
        """`hf`: the unpruned model that pruned copies are made from (left as it is);
        `wrapped`: its HfOutputs, when the caller has one (the recovery's teacher)."""
        from toolchain.distill.students import HfOutputs

        self.hf, self.path, self.task = hf, hf.path, hf.task
        self.cfg, self.output, self.log = cfg, output, log
        self.wrapped = wrapped or HfOutputs(hf.model, hf.onnx_config)
        self.layers = encoder_layers(self.hf.model)
        self.before = {
            "heads": head_counts(self.hf.model),
            "ffn": [layer.ffn_size for layer in self.layers],
            "parameters": parameter_counts(self.hf.model),
        }
        self.scores = self._scores(kind, train_data)
        # engines are timed at the configured sequence length, or the model's longest
        longest = getattr(self.hf.model.config, "max_position_embeddings", None) or cfg.latency_seq
        self.seq = min(cfg.latency_seq, longest)

    def _scores(self, kind: str, data) -> Scores:
        if kind == "magnitude":
            return magnitude_scores(self.hf.model, self.layers)
        cfg, device = self.cfg, torch.device("cpu")
        n = min(len(data), cfg.importance_samples)
        batches = []
        for start in range(0, n, cfg.batch_size):
            idx = np.arange(start, min(n, start + cfg.batch_size))
            feeds = self.wrapped.prepare(to_tensors(data.feeds, idx, device))
            batches.append((feeds, torch.from_numpy(data.labels[idx])))

        def loss(feeds, labels):
            logits = self.wrapped(**feeds)[self.output]
            return torch.nn.functional.cross_entropy(logits, labels)

        self.log(f"prune: Taylor importance on {n} samples")
        return taylor_scores(self.hf.model, self.layers, batches, loss)

    def plan(self, heads_fraction: float, ffn_fraction: float) -> Plan:
        keep_h, keep_f = select(
            self.scores, heads_fraction, ffn_fraction, self.cfg.round_to, self.cfg.scope
        )
        heads = []
        for i, positions in enumerate(keep_h):
            remaining = remaining_heads(self.hf.model, i)
            heads.append([remaining[p] for p in positions])
        return Plan(heads_fraction, ffn_fraction, heads, keep_f)

    def apply(self, plan: Plan) -> HfModel:
        """A pruned copy of the model (the unpruned one is left as it is)."""
        model = copy.deepcopy(self.hf.model)
        drop = {
            i: [h for h in remaining_heads(model, i) if h not in set(kept)]
            for i, kept in enumerate(plan.heads)
        }
        prune_encoder(model, drop, dict(enumerate(plan.ffn)))
        ctor = type(self.hf.onnx_config)
        onnx_config = ctor(model.config, task=self.hf.onnx_config.task)
        return HfModel(self.path, self.task, self.hf.library, model.eval(), onnx_config)
