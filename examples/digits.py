"""The embedded default: a small CNN fine-tuned on scikit-learn's digits (8x8 grey images).

    python examples/digits.py --out build/digits

writes model.safetensors (the fine-tuned weights), train.npz, calib.npz and test.npz
(inputs named `x`, float32 [N,1,8,8] scaled to [0,1], integer `labels`). The held-out test
split is never used for training or calibration. Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

# The model family's spec: how edgesmith exports it without flags.
EDGESMITH_SPEC = {
    "inputs": {"x": {"shape": [1, 1, 8, 8], "dtype": "float32", "dynamic": [0]}},
    "outputs": ["logits"],
}


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 16, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_model() -> nn.Module:
    """The fine-tuned architecture (weights come from model.safetensors)."""
    return DigitsCNN()


def split(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train 60% / calib 10% / test 30%, stratified, from sklearn's bundled digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.3, stratify=y, random_state=seed
    )
    x_train, x_cal, y_train, y_cal = train_test_split(
        x_rest, y_rest, test_size=1 / 7, stratify=y_rest, random_state=seed
    )
    return {"train": (x_train, y_train), "calib": (x_cal, y_cal), "test": (x_test, y_test)}


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int = 40,
    lr: float = 2e-3,
    seed: int = 0,
) -> nn.Module:
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.inference_mode():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/digits"))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    parts = split(args.seed)
    torch.manual_seed(args.seed)
    model = train(make_model(), *parts["train"], epochs=args.epochs, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in parts.items():
        np.savez(args.out / f"{name}.npz", x=x, labels=y)
    # Written last: the Makefile treats the weights file as "the example is ready".
    save_file(model.state_dict(), str(args.out / "model.safetensors"))
    print(
        f"digits CNN: test top-1 {accuracy(model, *parts['test']):.4f} on {len(parts['test'][1])} "
        f"held-out images; wrote {args.out}/model.safetensors"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
