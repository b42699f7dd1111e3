"""Why int8 ort-cpu engines are built without onnxruntime's BiasGeluFusion (targets/ort_cpu.py).

onnxruntime fuses a MatMul's bias Add into the Gelu after it (BiasGelu). On an int8 graph that
takes the Add away from our fusion of the bias into the int8 MatMul (fuse_int8_bias), where it
costs nothing. This builds the fp32 and int8 all-MiniLM-L6-v2 models of
benchmarks/quantize_minilm.py (run that first) into engines with and without the fusion and
times all four side by side (2 threads, seq 128, interleaved rounds, medians).

    .venv/bin/python benchmarks/bias_gelu.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import interleaved, isa, record  # noqa: E402

WORK = ROOT / "build" / "bench-quantize"


def engine(src: Path, disabled: list[str], out: Path):
    import onnx

    from edgesmith.targets.ort_cpu import fuse_int8_bias
    from edgesmith.toolchain.core.ort_session import SessionSettings, ort_session

    ort_session(  # as OrtCpu.build does
        src, SessionSettings("extended", disabled=tuple(disabled)), save_to=out
    )
    model = onnx.load(str(out))
    fuse_int8_bias(model)
    onnx.save(model, str(out))
    return ort_session(out, SessionSettings("all", 2, disabled=tuple(disabled), spinning=False))


def main() -> None:
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(str(WORK / "fp32"))
    texts = (WORK / "eval.txt").read_text().splitlines()[:8]
    enc = tok(texts, padding="max_length", truncation=True, max_length=128, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    base = ["SkipLayerNormFusion"]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        s = {
            "fp32": engine(WORK / "fp32" / "model.onnx", base, t / "a.onnx"),
            "fp32, no BiasGelu": engine(WORK / "fp32" / "model.onnx", [*base, "BiasGeluFusion"],
                                        t / "b.onnx"),
            "int8": engine(WORK / "ours" / "model.onnx", base, t / "c.onnx"),
            "int8, no BiasGelu": engine(WORK / "ours" / "model.onnx", [*base, "BiasGeluFusion"],
                                        t / "d.onnx"),
        }  # fmt: skip
        print(f"ISA: {isa()}; all-MiniLM-L6-v2, 2 threads, seq 128; x the fp32 engine")
        figures = {"threads": 2, "seq": 128, "rounds": args.rounds, "latency_ms": {},
                   "x_fp32": {}}  # fmt: skip
        for b in (1, 8):
            f = {k: v[:b] for k, v in feeds.items()}
            fns = {k: (lambda s=x, f=f: s.run(None, f)) for k, x in s.items()}
            times = interleaved(fns, args.rounds if b == 1 else max(args.rounds // 2, 5))
            print(f"batch {b}: " + ", ".join(f"{k} {v / times['fp32']:.3f}" for k, v in
                                             times.items()))  # fmt: skip
            figures["latency_ms"][b] = times
            figures["x_fp32"][b] = {k: v / times["fp32"] for k, v in times.items()}
    record("bias_gelu", figures, [])


if __name__ == "__main__":
    main()
