"""Where the time goes in an int8 engine, beside its fp32 engine: onnxruntime's profiler, per
op type and per kind of work (int8 products, quantize/dequantize, float ops, layout).

Each model is built as its ort-cpu engine (`edgesmith build`, loaded as deployed), run
`--runs` times per batch with profiling on (2 threads), and the kernel times of the runs
after `--warmup` are summed per op type and divided by the run count. Prints the host's ISA.

    .venv/bin/python benchmarks/int8_profile.py MODEL.onnx [MODEL.onnx ...] \\
        --data build/digits/test.npz --batch 1 --batch 64
    .venv/bin/python benchmarks/int8_profile.py build/bench-quantize/fp32/model.onnx \\
        build/bench-quantize/ours/model.onnx --text build/bench-quantize/eval.txt \\
        --batch 1 --batch 8
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import isa, record  # noqa: E402

BIN = Path(sys.executable).parent
THREADS, SEQ = 2, 128

KINDS = {
    "int8 products": ("MatMulIntegerToFloat", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                      "ConvInteger", "DynamicQuantizeMatMul", "QGemm", "QAttention"),
    "quantize/dequantize": ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"),
    "int8 other": ("QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool",
                   "QLinearLeakyRelu", "QLinearSigmoid", "QLinearConcat", "QLinearSoftmax"),
    "layout": ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Slice",
               "Gather", "Shape", "Expand", "ReorderInput", "ReorderOutput", "Cast"),
}  # fmt: skip


def kind(op: str) -> str:
    return next((k for k, ops in KINDS.items() if op in ops), "float ops")


def quantize_counts(model: Path) -> str:
    """How many QuantizeLinear nodes the model has, over how many tensors, and how many
    int8 products read a DequantizeLinear (the same model the engine was built from)."""
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    q = [n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    products = [n for n in m.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")
                and any(i in dq for i in n.input[:1])]  # fmt: skip
    return (f"{len(q)} QuantizeLinear over {len(set(q))} tensors, "
            f"{len(products)} products with an int8 activation")  # fmt: skip


def engine(model: Path, tmp: Path) -> Path:
    out = tmp / re.sub(r"[^a-z0-9]+", "-", str(model).lower()).strip("-")
    cmd = [BIN / "edgesmith", "build", model, "--target", "ort-cpu", "-o", out]
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def profile(engine_dir: Path, feeds: dict, runs: int, warmup: int, tmp: Path) -> dict[str, float]:
    """ms per run by op type, from onnxruntime's profiler (kernel time of each node)."""
    from edgesmith.targets.base import read_engine_config
    from edgesmith.toolchain.core.ort_session import SessionSettings, ort_session

    cfg = read_engine_config(engine_dir)
    prefix = tmp / f"prof-{engine_dir.name}"
    s = ort_session(engine_dir / cfg["model"],
                    SessionSettings(level=cfg["runtime_opt_level"], threads=THREADS,
                                    disabled=tuple(cfg["disabled_optimizers"])),
                    profile=prefix)  # fmt: skip
    for _ in range(warmup):
        s.run(None, feeds)
    for _ in range(runs):
        s.run(None, feeds)
    trace = json.loads(Path(s.end_profiling()).read_text())
    runs_seen = [e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"]
    first = runs_seen[warmup]["ts"] if len(runs_seen) > warmup else 0
    per_op: dict[str, float] = defaultdict(float)
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first:
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3
    total = sum(e["dur"] for e in runs_seen[warmup:]) / 1e3
    out = {op: t / runs for op, t in per_op.items()}
    out["(run total)"] = total / runs
    return out


def feeds_for(args, model: Path, batch: int) -> dict[str, np.ndarray]:
    if args.data:
        d = np.load(args.data)
        return {"x": np.ascontiguousarray(d["x"][:batch])}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model.parent))
    texts = Path(args.text).read_text().splitlines()[:batch]
    enc = tok(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", help=".npz with x (image models)")
    ap.add_argument("--text", help="sentences, one per line (text models; tokenizer beside)")
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    print(f"ISA: {isa()}; {THREADS} threads; onnxruntime profiler, {args.runs} runs after "
          f"{args.warmup} warm-up")  # fmt: skip
    results = {}
    models: dict[str, dict] = {}  # per model (the path as given: the file names may be alike)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        engines = {m: engine(m, tmp) for m in args.models}
        for batch in args.batch or [1]:
            for m, e in engines.items():
                prof = profile(e, feeds_for(args, m, batch), args.runs, args.warmup, tmp)
                results[f"{m} b{batch}"] = prof
                by_kind: dict[str, float] = defaultdict(float)
                for op, t in prof.items():
                    if op != "(run total)":
                        by_kind[kind(op)] += t
                run = prof["(run total)"]
                counts = quantize_counts(m)
                print(f"\n{m} batch {batch}: {run:.3f} ms per run (kernels "
                      f"{sum(by_kind.values()):.3f}); {counts}")  # fmt: skip
                for k, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
                    print(f"  {k:<22} {t:8.3f} ms {100 * t / run:5.1f}%")
                top = sorted(((t, op) for op, t in prof.items() if op != "(run total)"),
                             reverse=True)[:8]  # fmt: skip
                print("  top ops: " + ", ".join(f"{op} {t:.3f}" for t, op in top))
                fig = models.setdefault(str(m), {"quantize_counts": counts, "batches": {}})
                fig["batches"][batch] = {
                    "ms_per_run": run,
                    "kernels_ms": sum(by_kind.values()),
                    "ms_by_kind": {k: t for k, t in by_kind.items()},
                    "share_by_kind": {k: t / run for k, t in by_kind.items()},
                    "ms_by_op": {op: t for op, t in prof.items() if op != "(run total)"},
                    "top_ops": [op for _, op in top],
                }  # fmt: skip
    out = ROOT / "build" / "int8-profile.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"isa": isa(), "ms_per_run": results}, indent=1) + "\n")
    record("int8_profile", {
        "threads": THREADS,
        "runs": args.runs,
        "warmup": args.warmup,
        "batches": args.batch or [1],
        "inputs": {"data": args.data} if args.data else {"text": args.text, "seq": SEQ},
        "models": models,
    }, [])  # fmt: skip


if __name__ == "__main__":
    main()
