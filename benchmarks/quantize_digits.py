"""int8 digits CNN: top-1 against fp32 on the held-out split, and the latency ratio.

Exports the CNN of examples/digits.py, quantizes it with `edgesmith quantize` (calibrated on
the calib split, never on test) with the preset this CPU gets and with the AVX2 (7-bit weight)
preset, and runs all on the 540 held-out test images. Latency: 2 threads, batch 1 and 64,
interleaved rounds, medians. Goal: int8 top-1 within 0.3 points of fp32.

    .venv/bin/python benchmarks/quantize_digits.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import interleaved  # noqa: E402

WORK = ROOT / "build" / "bench-quantize"
DIGITS = ROOT / "build" / "digits"
BIN = Path(sys.executable).parent
THREADS = 2


def sh(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def session(path: Path):
    """The session every ort-cpu runner of ours makes (same options for every model)."""
    from targets.ort_cpu import session_from_onnx

    return session_from_onnx(path, threads=THREADS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    if not (DIGITS / "model.safetensors").exists():
        sh(sys.executable, "examples/digits.py", "--out", DIGITS)
    sh(
        BIN / "edgesmith",
        "export",
        "examples.digits:make_model",
        "--weights",
        DIGITS / "model.safetensors",
        "-o",
        WORK / "digits-fp32",
    )
    calib = ["--calibration", DIGITS / "calib.npz", "--threads", str(THREADS)]
    sh(BIN / "edgesmith", "quantize", WORK / "digits-fp32", "-o", WORK / "digits-int8", *calib)
    sh(
        BIN / "edgesmith",
        "quantize",
        WORK / "digits-fp32",
        "-o",
        WORK / "digits-int8-avx2",
        *calib,
        "--preset",
        "ort-cpu-avx2",
    )
    preset = json.loads((WORK / "digits-int8" / "report.json").read_text())["preset"]["name"]
    paths = {
        "fp32": WORK / "digits-fp32" / "model.onnx",
        f"int8 {preset}": WORK / "digits-int8" / "model.onnx",
        "int8 ort-cpu-avx2": WORK / "digits-int8-avx2" / "model.onnx",
    }
    test = np.load(DIGITS / "test.npz")
    x, y = test["x"], test["labels"]
    sessions = {k: session(p) for k, p in paths.items()}
    top1 = {k: float((s.run(None, {"x": x})[0].argmax(1) == y).mean()) for k, s in sessions.items()}
    lat = {}
    for batch in (1, 64):
        f = {"x": x[:batch]}
        lat[batch] = interleaved(
            {k: (lambda s=s, f=f: s.run(None, f)) for k, s in sessions.items()},
            args.rounds,
            warmup=20,
        )
    print(
        f"digits CNN, {len(y)} held-out images; int8 calibrated on the calib split; "
        f"{THREADS} threads, medians of {args.rounds} interleaved rounds"
    )
    head = ("model", "top-1", "Δ pts", "b1 ms", "x fp32", "b64 ms", "x fp32")
    print(f"{head[0]:<22}" + "".join(f"{h:>8}" for h in head[1:]))
    for k in paths:
        d = 100 * (top1[k] - top1["fp32"])
        r1, r64 = lat[1][k] / lat[1]["fp32"], lat[64][k] / lat[64]["fp32"]
        print(
            f"{k:<22}{100 * top1[k]:8.2f}{d:+8.2f}{lat[1][k]:8.4f}{r1:8.2f}"
            f"{lat[64][k]:8.4f}{r64:8.2f}"
        )
    print("goal: int8 top-1 within 0.3 points of fp32")
    out = {"top1": top1, "latency_ms": lat, "test_images": len(y)}
    (WORK / "digits-results.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
