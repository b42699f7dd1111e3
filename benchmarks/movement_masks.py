"""Are movement's masks better than chance? Movement, random and magnitude masks side by side on
the fine-tuned text classifier, with everything else held equal.

Each mode starts from the same fine-tuned model and trains it on the same batches (cross-entropy
on the labels, AdamW 5e-5, batch 32, sequence 64) while the same cubic schedule raises the
sparsity of the encoder's matrices to --sparsity by step --end (movement masks follow the
scores every step, as the prune stage's do; the others are updated every 10 steps):
- movement: the prune stage's scores (prune/sparsity.py: Adam's steps on W·∂L/∂W');
- random: seeded random scores, fixed (what movement's masks would be with no signal);
- magnitude: |w|, masked weights set to zero (Zhu & Gupta).
Accuracy on 400 calibration sentences drawn stratified (every class in its proportion; the
file is written class by class) is printed at every 40th step.

    .venv/bin/python benchmarks/movement_masks.py [--sparsity 0.8] [--end 120] [--steps 130]

Needs build/text_classifier (python examples/text_classifier.py). Not the prune stage's loop
(no distillation, no best-epoch choice): it isolates the masks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import record  # noqa: E402
from benchmarks.prune_text_classifier import TC, isa  # noqa: E402

BATCH, SEQ, INTERVAL, LR, EVAL = 32, 64, 10, 5e-5, 400


def stratified(rows: list[dict], n: int, seed: int = 0) -> list[dict]:
    """n rows with every label in its proportion of `rows` (seeded draw within each label)."""
    import random

    by: dict = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    rng = random.Random(seed)
    out = []
    for _, group in sorted(by.items()):
        take = max(1, round(n * len(group) / len(rows)))
        out += rng.sample(group, min(take, len(group)))
    return out


@dataclass
class MaskConfig:
    """The fields of the prune stage's config that Sparsifier reads."""

    method: str
    sparsity: float
    scope: str = "layer"
    schedule: str = "cubic"
    movement: str = "hard"

    def weight_sparsity(self) -> float:
        return self.sparsity


def run(mode: str, sparsity: float, end: int, steps: int) -> list[tuple[int, float, float]]:
    import torch
    from transformers import AutoTokenizer

    from edgesmith.toolchain.models.hf import load_hf
    from edgesmith.toolchain.prune.sparsity import Sparsifier, cubic, encoder_targets

    torch.manual_seed(0)
    model = load_hf(TC / "model", "text-classification").model
    method = "magnitude" if mode == "magnitude" else "movement"
    sp = Sparsifier(encoder_targets(model), MaskConfig(method, sparsity))
    gen = torch.Generator().manual_seed(0)
    if mode == "random":
        for t in sp.targets:
            t.param.scores.copy_(torch.rand(t.param.scores.shape, generator=gen))
    tok = AutoTokenizer.from_pretrained(str(TC / "model"))

    def encode(rows):
        enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=SEQ,
                  return_tensors="pt")  # fmt: skip
        return enc, torch.tensor([r["label"] for r in rows])

    train = [json.loads(line) for line in (TC / "train.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (TC / "calib.jsonl").read_text().splitlines()]
    evals = stratified(rows, EVAL)
    x_eval, y_eval = encode(evals)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    out = []
    model.train()
    for step in range(1, steps + 1):
        at = (step * BATCH) % len(train)
        x, y = encode([train[i] for i in order[at : at + BATCH]])
        loss = torch.nn.functional.cross_entropy(model(**x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mode == "movement":
            sp.accumulate(world=1)
        if mode == "movement" or step % INTERVAL == 0:
            s = cubic(step, 0, end, sparsity)
            if mode == "magnitude":
                sp.update_magnitude(s)
            else:
                sp.update_movement(s)
        if step % 40 == 0:
            model.eval()
            with torch.no_grad():
                acc = float((model(**x_eval).logits.argmax(1) == y_eval).float().mean())
            model.train()
            out.append((step, cubic(step, 0, end, sparsity), acc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--end", type=int, default=120, help="step the final sparsity is reached at")
    ap.add_argument("--steps", type=int, default=130)
    args = ap.parse_args()
    results = {m: run(m, args.sparsity, args.end, args.steps)
               for m in ("movement", "random", "magnitude")}  # fmt: skip
    print(f"ISA: {isa()}; cross-entropy, batch {BATCH}, lr {LR}, sequence {SEQ}; movement "
          f"masks every step, the others every {INTERVAL} steps, cubic to "
          f"{args.sparsity:.0%} at step {args.end}")  # fmt: skip
    print("| step | sparsity | " + " | ".join(results) + " |")
    print("|---|---|" + "---|" * len(results))
    for i, (step, s, _) in enumerate(results["movement"]):
        accs = " | ".join(f"{results[m][i][2]:.3f}" for m in results)
        print(f"| {step} | {s:.2f} | {accs} |")
    print(f"(accuracy on {EVAL} calibration sentences, every class in proportion)")
    figures = {
        "sparsity": args.sparsity, "end": args.end, "steps": args.steps, "batch": BATCH,
        "seq": SEQ, "lr": LR, "mask_interval": INTERVAL, "eval_sentences": EVAL,
        "step": {step: {"sparsity": s, "accuracy": {m: results[m][i][2] for m in results}}
                 for i, (step, s, _) in enumerate(results["movement"])},
    }  # fmt: skip
    record("movement_masks", figures, [])


if __name__ == "__main__":
    main()
