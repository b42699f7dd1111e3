"""Structured pruning of the fine-tuned text classifier: engine latency against accuracy.

Every variant goes through edgesmith's own pipeline (prune → export → build, and quantize →
build for int8) and is timed as the ort-cpu engine that ships, all engines side by side in
one run (interleaved rounds, warmed up, medians, 2 threads), at batch 1 and 8 and sequence 64
and 128. Accuracy is top-1 on test.jsonl (modules never trained on). Variants: the unpruned
model, pruned at each --sparsity (with recovery), each with int8 on top, and the 3-layer
student distilled from the same model (the layer-dropping alternative).

    .venv/bin/python benchmarks/prune_text_classifier.py [--sparsity 0.5 0.7] [--rounds 20]

Needs build/text_classifier (python examples/text_classifier.py). Prints the ISA, the table
and the goals (fp32 ≤ 0.50x at ≤ 1.0 point, int8 ≤ 0.25x at ≤ 1.5 points), and draws
docs/prune_text_classifier.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import goal, interleaved, isa, record  # noqa: E402

TC = Path("build/text_classifier")
OUT = Path("build/bench_prune")
THREADS = 2


def run_recipe(name: str, stages: list[dict], out: Path = OUT, source: Path = TC / "model") -> list:
    from edgesmith.toolchain import pipeline
    from edgesmith.toolchain.core.recipe import recipe_from_dict

    recipe = recipe_from_dict(
        {"name": name, "out": str(out / name), "source": {"model": str(source)},
         "stages": stages}
    )  # fmt: skip
    return pipeline.run(recipe, emit=lambda m: print(f"  {name}: {m}", file=sys.stderr)).stages


def variants(sparsities: list[float], epochs: int) -> dict[str, Path]:
    """name → engine directory; every variant built through the pipeline (cached on reruns)."""
    data = {"data": str(TC / "train.jsonl"), "eval_data": str(TC / "calib.jsonl"), "seq_len": 64}
    quant = {"kind": "quantize", "calibration": str(TC / "calib.jsonl"), "limit": 512,
             "seq_len": 64}  # fmt: skip
    build = {"kind": "build", "options": {"threads": THREADS}}
    out: dict[str, Path] = {}

    def fp32_and_int8(name: str, prefix: list[dict]) -> tuple[Path, Path]:
        # one run directory: the shared prefix (prune, export) runs once, then is cached
        fp32 = run_recipe(name, [*prefix, build])[-1].out
        int8 = run_recipe(name, [*prefix, quant, build])[-1].out
        return fp32, int8

    out["unpruned fp32"], out["unpruned int8"] = fp32_and_int8("unpruned", [{"kind": "export"}])
    for s in sparsities:
        prune = {"kind": "prune", "sparsity": s, "epochs": epochs, "latency_seq": 64, **data}
        fp32, int8 = fp32_and_int8(f"pruned-{s}", [prune, {"kind": "export"}])
        out[f"pruned {s:.0%} fp32"], out[f"pruned {s:.0%} int8"] = fp32, int8
    student = {"kind": "distill", "student_layers": 3, "epochs": epochs, "lr": 1e-4, **data}
    st = run_recipe("student-3-layers", [student, {"kind": "export"}, build])
    out["3-layer student fp32"] = st[2].out
    return out


def accuracy(engine: Path) -> float:
    from edgesmith.calibration.sources import Preprocess, load_dataset
    from edgesmith.toolchain.core.artifact import Format, ModelArtifact
    from edgesmith.toolchain.models.runners import runner_for

    runner = runner_for(ModelArtifact(engine, Format.engine), threads=THREADS)
    data = load_dataset(TC / "test.jsonl", runner.io, Preprocess(engine, 128))
    right = 0
    for feeds, y in data.batches(64):
        right += int((runner.infer(feeds)["logits"].argmax(-1) == y).sum())
    return right / len(data)


def timings(engines: dict[str, Path], rounds: int) -> dict[tuple[int, int], dict[str, float]]:
    from edgesmith.toolchain.core.timing import synthetic_feeds
    from edgesmith.toolchain.evaluate.engines import timed_runner

    runners = {k: timed_runner(p, THREADS) for k, p in engines.items()}
    out = {}
    for seq in (64, 128):
        for batch in (1, 8):
            feeds = synthetic_feeds(next(iter(runners.values())).io, batch, seq)
            fns = {k: (lambda r=r, f=feeds: r.infer(f)) for k, r in runners.items()}
            out[(batch, seq)] = interleaved(
                fns, rounds if batch == 1 else max(8, rounds // 2), warmup=3
            )
    return out


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for r in rows:
        marker = "s" if "int8" in r["name"] else "o"
        ax.plot(r["ratio_b8_s128"], 100 * r["accuracy"], marker, label=r["name"])
    ax.set_xlabel("engine latency / unpruned fp32 engine (batch 8, seq 128, 2 threads)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("text classifier: accuracy against engine latency", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    engines = variants(args.sparsity, args.epochs)
    with (TC / "test.jsonl").open() as f:
        recs = [json.loads(line) for line in f]
    acc = {k: accuracy(p) for k, p in engines.items()}
    t = timings(engines, args.rounds)
    base = "unpruned fp32"
    print(
        f"ISA: {isa()}; {THREADS} threads; {len(recs)} test sentences; medians of "
        f"{args.rounds} interleaved rounds (batch 1), {max(8, args.rounds // 2)} (batch 8)"
    )
    cols = [(b, s) for s in (64, 128) for b in (1, 8)]
    head = " | ".join(f"b{b} s{s} ms | x" for b, s in cols)
    print(f"| variant | top-1 | Δ points | {head} |")
    print("|---" * (3 + 2 * len(cols)) + "|")
    rows = []
    for name in engines:
        cells = []
        for c in cols:
            ms = t[c][name]
            cells += [f"{ms:.2f}", f"{ms / t[c][base]:.2f}"]
        delta = 100 * (acc[name] - acc[base])
        print(f"| {name} | {100 * acc[name]:.2f} | {delta:+.2f} | " + " | ".join(cells) + " |")
        rows.append({"name": name, "accuracy": acc[name],
                     "ratio_b8_s128": t[(8, 128)][name] / t[(8, 128)][base]})  # fmt: skip
    plot(rows, Path("docs/prune_text_classifier.png"))
    (OUT / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("goals: pruned fp32 <= 0.50x within 1.0 point; with int8 <= 0.25x within 1.5 points")
    figures = {
        "threads": THREADS, "sparsity": args.sparsity, "epochs": args.epochs,
        "rounds": {"batch 1": args.rounds, "batch 8": max(8, args.rounds // 2)},
        "test_sentences": len(recs),
        "top1": acc,
        "latency_ms": {f"b{b}_s{s}": t[(b, s)] for b, s in cols},
        "x_unpruned_fp32": {f"b{b}_s{s}": {k: t[(b, s)][k] / t[(b, s)][base] for k in engines}
                            for b, s in cols},
    }  # fmt: skip

    def best(kind: str, points: float) -> float:
        """The fastest pruned `kind` variant within `points` of the unpruned top-1, batch 8,
        seq 128, x the unpruned fp32 engine (inf if none is)."""
        fit = [figures["x_unpruned_fp32"]["b8_s128"][k] for k in engines
               if k.startswith("pruned") and k.endswith(kind)
               and 100 * (acc[base] - acc[k]) <= points]  # fmt: skip
        return min(fit, default=float("inf"))

    record("prune_text_classifier", figures, [
        goal("fastest pruned fp32 within 1.0 point, latency x unpruned fp32 (b8, s128)",
             best("fp32", 1.0), "<=", 0.5),
        goal("fastest pruned int8 within 1.5 points, latency x unpruned fp32 (b8, s128)",
             best("int8", 1.5), "<=", 0.25),
    ])  # fmt: skip


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
