"""Weight sparsity on the fine-tuned text classifier: magnitude, movement (hard, soft) and 2:4
side by side, the same recovery budget for every method, in one run.

Every variant goes through edgesmith's own pipeline (prune → export → build) and its ort-cpu
engine is measured: test top-1 on test.jsonl (modules never trained on), the engine's latency
beside the dense engine (all engines interleaved in one run, warmed up, medians, 2 threads,
spinning off; unstructured zeros are not expected to change it: onnxruntime's CPU kernels are
dense), and the ONNX's size compressed with xz (the saving zeros do give on ort-cpu).

    .venv/bin/python benchmarks/sparsity_text_classifier.py [--sparsity 0.5 0.8 0.9 0.95]
        [--soft-sparsity ...] [--epochs 3] [--rounds 20]

Needs build/text_classifier (python examples/text_classifier.py). Goals: movement >= magnitude
at 80% and above; at 80% within 2 points of the unpruned model; 2:4 within 1 point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.prune_text_classifier import TC, THREADS, accuracy, isa  # noqa: E402
from benchmarks.prune_text_classifier import run_recipe as tc_recipe  # noqa: E402
from edgesmith.toolchain.core.timing import interleaved  # noqa: E402

OUT = Path("build/bench_sparsity")
SEQ = 128


def run_recipe(name: str, stages: list[dict], source: Path = TC / "model") -> list:
    return tc_recipe(name, stages, OUT, source)


def variants(
    sparsities: list[float], soft: list[float], epochs: int, fine_prune: list[float]
) -> dict[str, tuple[Path, Path]]:
    """name → (engine directory, exported ONNX), each through the pipeline (cached on reruns)."""
    data = {"data": str(TC / "train.jsonl"), "eval_data": str(TC / "calib.jsonl"), "seq_len": 64,
            "epochs": epochs, "latency_batches": [8], "latency_rounds": 3}  # fmt: skip
    build = {"kind": "build", "options": {"threads": THREADS}}

    def chain(name: str, prune: list[dict], source: Path = TC / "model") -> tuple[Path, Path]:
        stages = run_recipe(name, [*prune, {"kind": "export"}, build], source)
        return stages[-1].out, stages[-2].out / "model.onnx"

    out = {"unpruned": chain("unpruned", [])}
    methods = {
        "magnitude": {"method": "magnitude", "schedule": "cubic"},
        "movement hard": {"method": "movement", "movement": "hard"},
        "movement soft": {"method": "movement", "movement": "soft"},
    }
    for s in sparsities:
        for label, m in methods.items():
            if label == "movement soft" and s not in soft:
                continue
            prune = {"kind": "prune", "sparsity": s, **m, **data}
            out[f"{label} {s:.0%}"] = chain(f"{m['method']}-{label.split()[-1]}-{s}", [prune])
    out["2:4"] = chain("two-four", [{"kind": "prune", "method": "2:4", **data}])
    if fine_prune:
        # Sanh et al.'s setting: prune while fine-tuning the pretrained encoder for the task
        # (the fine-tuned model as the distillation teacher), not after the fine-tune
        from examples.text_classifier import write_initial_model

        start = write_initial_model(TC / "pretrained")
        teacher = {"teacher": str(TC / "model")}
        for s in fine_prune:
            for label, m in methods.items():
                if label == "movement soft":
                    continue
                prune = {"kind": "prune", "sparsity": s, **m, **data, **teacher}
                name = f"fine-prune-{m['method']}-{s}"
                out[f"{label} {s:.0%}, fine-pruned"] = chain(name, [prune], start)
    return out


def main() -> None:
    from edgesmith.toolchain.core.audit import audit
    from edgesmith.toolchain.core.timing import synthetic_feeds
    from edgesmith.toolchain.evaluate.engines import timed_runner

    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    ap.add_argument("--soft-sparsity", type=float, nargs="*", help="soft movement at these only")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--fine-prune",
        type=float,
        nargs="*",
        default=[],
        help="also prune from the pretrained encoder while fine-tuning, at these",
    )
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    soft = args.sparsity if args.soft_sparsity is None else args.soft_sparsity
    built = variants(args.sparsity, soft, args.epochs, args.fine_prune)
    runners = {k: timed_runner(engine, THREADS) for k, (engine, _) in built.items()}
    acc = {k: accuracy(engine) for k, (engine, _) in built.items()}
    ms = {}
    for batch in (1, 8):
        feeds = synthetic_feeds(runners["unpruned"].io, batch, SEQ)
        fns = {k: (lambda r=r, f=feeds: r.infer(f)) for k, r in runners.items()}
        ms[batch] = interleaved(fns, args.rounds if batch == 1 else max(8, args.rounds // 2))
    audits = {k: audit(onnx) for k, (_, onnx) in built.items()}
    print(
        f"ISA: {isa()}; {THREADS} threads, spinning off; sequence {SEQ}; {args.epochs} "
        "recovery epochs for every method (cubic schedule to 2/3 of them; 2:4 one-shot)"
    )
    print(
        "| variant | MatMul/Gemm weights zero | 2:4 layers | top-1 | Δ points | b1 × | b8 × | "
        "xz MB | xz × |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base, rows = "unpruned", []
    for name in built:
        a = audits[name]
        xz = a["bytes"]["xz"]
        row = {
            "name": name, "sparsity": a["weight_sparsity"], "two_four": len(a["two_four_layers"]),
            "accuracy": acc[name], "b1": ms[1][name] / ms[1][base], "b8": ms[8][name] / ms[8][base],
            "xz_mb": xz / 1e6, "xz_ratio": xz / audits[base]["bytes"]["xz"],
        }  # fmt: skip
        rows.append(row)
        print(f"| {name} | {row['sparsity']:.1%} | {row['two_four']} | {100 * row['accuracy']:.2f}"
              f" | {100 * (row['accuracy'] - acc[base]):+.2f} | {row['b1']:.2f} | {row['b8']:.2f}"
              f" | {row['xz_mb']:.1f} | {row['xz_ratio']:.2f} |")  # fmt: skip
    print(f"unpruned engine: {ms[1][base]:.2f} ms at batch 1, {ms[8][base]:.2f} ms at batch 8")
    print("goals: movement >= magnitude at 80% and above; 80% within 2 points; 2:4 within 1 point")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
