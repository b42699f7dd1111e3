"""int8 digits CNN: top-1 against fp32 on the held-out split, and the latency ratio.

Exports the CNN of examples/digits.py, quantizes it with `edgesmith quantize` (calibrated on
the calib split, never on test): all-int8 with the preset this CPU gets and with the AVX2
(7-bit weight) preset (--latency-batches off), and as the tool ships it by default, with the
latency check at the batches measured here (--latency-batches 1,64). Each model is built as
its ort-cpu engine and run on the 540 held-out test images. Latency: 2 threads, batch 1 and
64, interleaved rounds, medians. Goals: int8 top-1 within 0.3 points of fp32, and the
shipped int8 engine never slower than fp32 at either batch. Prints the host's ISA.

    .venv/bin/python benchmarks/quantize_digits.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import goal, interleaved, isa, record, sh  # noqa: E402

WORK = ROOT / "build" / "bench-quantize"
DIGITS = ROOT / "build" / "digits"
BIN = Path(sys.executable).parent
THREADS = 2


def session(path: Path, name: str):
    """`edgesmith build --target ort-cpu` of the model, loaded as the engine is deployed."""
    from edgesmith.targets.ort_cpu import OrtCpu
    from edgesmith.toolchain.core.artifact import Format, ModelArtifact

    out = WORK / f"digits-engine-{name.replace(' ', '-')}"
    sh(BIN / "edgesmith", "build", path, "--target", "ort-cpu", "-o", out)
    art = ModelArtifact.at(out, Format.engine)
    return OrtCpu().load(art, threads=THREADS, spinning=False).session


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
    q = (BIN / "edgesmith", "quantize", WORK / "digits-fp32", *calib)
    sh(*q, "-o", WORK / "digits-int8", "--latency-batches", "off")
    sh(*q, "-o", WORK / "digits-int8-avx2", "--preset", "ort-cpu-avx2", "--latency-batches", "off")
    shutil.rmtree(WORK / "digits-int8-checked", ignore_errors=True)  # timed afresh each run
    sh(*q, "-o", WORK / "digits-int8-checked", "--latency-batches", "1,64")
    report = json.loads((WORK / "digits-int8" / "report.json").read_text())
    checked = json.loads((WORK / "digits-int8-checked" / "report.json").read_text())
    preset = report["preset"]["name"]
    paths = {
        "fp32": WORK / "digits-fp32" / "model.onnx",
        f"all-int8 {preset}": WORK / "digits-int8" / "model.onnx",
        "all-int8 avx2": WORK / "digits-int8-avx2" / "model.onnx",
        "shipped (checked)": WORK / "digits-int8-checked" / "model.onnx",
    }
    test = np.load(DIGITS / "test.npz")
    x, y = test["x"], test["labels"]
    sessions = {k: session(p, k) for k, p in paths.items()}
    top1 = {k: float((s.run(None, {"x": x})[0].argmax(1) == y).mean()) for k, s in sessions.items()}
    lat = {}
    for batch in (1, 64):
        f = {"x": x[:batch]}
        lat[batch] = interleaved(
            {k: (lambda s=s, f=f: s.run(None, f)) for k, s in sessions.items()},
            args.rounds,
            inner=50 if batch == 1 else 5,  # a sample of ~1 ms: steadier than one 20 µs call
            warmup=20,
        )
    print(f"ISA: {isa()}")
    print(
        f"digits CNN, {len(y)} held-out images; int8 calibrated on the calib split; "
        f"{THREADS} threads, ort-cpu engines, medians of {args.rounds} interleaved rounds "
        "(50 / 5 calls each)"
    )
    lat_report = checked.get("latency", {})
    print(f"latency check at quantize time: {lat_report.get('verdict')}; float: "
          f"{lat_report.get('float_nodes')}")  # fmt: skip
    head = ("model", "top-1", "Δ pts", "b1 ms", "x fp32", "b64 ms", "x fp32")
    print(f"{head[0]:<22}" + "".join(f"{h:>8}" for h in head[1:]))  # noqa: RUF001
    for k in paths:
        d = 100 * (top1[k] - top1["fp32"])
        r1, r64 = lat[1][k] / lat[1]["fp32"], lat[64][k] / lat[64]["fp32"]
        print(
            f"{k:<22}{100 * top1[k]:8.2f}{d:+8.2f}{lat[1][k]:8.4f}{r1:8.2f}"
            f"{lat[64][k]:8.4f}{r64:8.2f}"
        )
    print("goals: int8 top-1 within 0.3 points of fp32; the shipped engine <= 1.00x at both")
    out = {"top1": top1, "latency_ms": lat, "test_images": len(y), "isa": isa(),
           "latency_check": lat_report}  # fmt: skip
    (WORK / "digits-results.json").write_text(json.dumps(out, indent=2) + "\n")
    shipped, drop = "shipped (checked)", 100 * (top1["fp32"] - top1[f"all-int8 {preset}"])
    out["x_fp32"] = {b: {k: lat[b][k] / lat[b]["fp32"] for k in paths} for b in (1, 64)}
    record("quantize_digits", out, [
        goal(f"all-int8 ({preset}) top-1 drop, points", drop, "<=", 0.3),
        goal("shipped engine latency x fp32, batch 1", out["x_fp32"][1][shipped], "<=", 1.0),
        goal("shipped engine latency x fp32, batch 64", out["x_fp32"][64][shipped], "<=", 1.0),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
