"""Channel pruning of the digits CNN: engine latency against top-1, and where the time goes.

Every variant goes through edgesmith's own pipeline (prune → export → build) from the
embedded default (examples.digits:make_model + build/digits/model.safetensors) and is timed
as the ort-cpu engine that ships, all engines side by side in one run (interleaved rounds,
warmed up, medians, 2 threads, spinning off), at batch 1 and 64. Top-1 is on test.npz (never
trained or calibrated on). Then onnxruntime's profiler gives each engine's time per op at
batch 64: what pruning removes and what it cannot.

    .venv/bin/python benchmarks/prune_digits.py [--sparsity 0.5 0.75 0.9] [--epochs 30]

Needs build/digits (make demo, or python examples/digits.py). Prints the ISA, the table and
the goal (≤ 0.50x at batch 64, top-1 within 0.5 point).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import goal, interleaved, isa, record  # noqa: E402

DIGITS = Path("build/digits")
OUT = Path("build/bench_prune_digits")
THREADS = 2
BATCHES = (1, 64)


def run_recipe(name: str, stages: list[dict]) -> list:
    from edgesmith.toolchain import pipeline
    from edgesmith.toolchain.core.recipe import recipe_from_dict

    source = {"model": "examples.digits:make_model", "weights": str(DIGITS / "model.safetensors")}
    recipe = recipe_from_dict(
        {"name": name, "out": str(OUT / name), "source": source, "stages": stages}
    )
    return pipeline.run(recipe, emit=lambda m: print(f"  {name}: {m}", file=sys.stderr)).stages


def variants(sparsities: list[float], epochs: int, round_to: int) -> dict[str, Path]:
    """name → engine directory, each built through the pipeline (cached on reruns)."""
    build = {"kind": "build", "options": {"threads": THREADS}}
    out = {"unpruned": run_recipe("unpruned", [{"kind": "export"}, build])[-1].out}
    for s in sparsities:
        prune = {
            "kind": "prune", "sparsity": s, "epochs": epochs, "round_to": round_to,
            "data": str(DIGITS / "train.npz"), "eval_data": str(DIGITS / "calib.npz"),
            "latency_batches": list(BATCHES),
        }  # fmt: skip
        stages = run_recipe(f"pruned-{s}", [prune, {"kind": "export"}, build])
        kept = json.loads((stages[0].out / "report.json").read_text())["layers"]
        name = f"pruned {s:.0%} (" + ", ".join(r["channels"] for r in kept) + ")"
        out[name] = stages[-1].out
    return out


def accuracy(runner) -> float:
    with np.load(DIGITS / "test.npz") as z:
        x, y = z["x"], z["labels"]
    pred = np.concatenate(
        [runner.infer({"x": x[i : i + 256]})["logits"].argmax(1) for i in range(0, len(x), 256)]
    )
    return float((pred == y).mean())


def op_profile(engine: Path, batch: int, runs: int = 300) -> dict[str, float]:
    """µs per op type per run, from onnxruntime's profiler, on the engine's own model."""
    import onnxruntime as ort

    from edgesmith.targets.base import read_engine_config

    cfg = read_engine_config(engine)
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.enable_profiling = True
    so.profile_file_prefix = str(OUT / "profile")
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(engine / cfg["model"]), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=cfg.get("disabled_optimizers", []))  # fmt: skip
    x = np.random.default_rng(0).random((batch, 1, 8, 8), dtype=np.float32)
    for _ in range(runs):
        sess.run(None, {"x": x})
    path = Path(sess.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / runs
    return dict(per_op.most_common())


def main() -> None:
    from edgesmith.toolchain.evaluate.engines import timed_runner

    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    engines = variants(args.sparsity, args.epochs, args.round_to)
    runners = {k: timed_runner(p, THREADS) for k, p in engines.items()}
    acc = {k: accuracy(r) for k, r in runners.items()}
    ms = {}
    for b in BATCHES:
        x = np.random.default_rng(0).random((b, 1, 8, 8), dtype=np.float32)
        fns = {k: (lambda r=r, x=x: r.infer({"x": x})) for k, r in runners.items()}
        ms[b] = interleaved(fns, args.rounds, warmup=20)
    print(f"ISA: {isa()}; {THREADS} threads, spinning off; medians of {args.rounds} interleaved "
          f"rounds; top-1 on {DIGITS / 'test.npz'}")  # fmt: skip
    print("| variant | top-1 | Δ points | " + " | ".join(f"b{b} ms | x" for b in BATCHES) + " |")
    print("|---" * (3 + 2 * len(BATCHES)) + "|")
    base = "unpruned"
    rows = []
    for name in engines:
        cells = [f"{ms[b][name]:.3f} | {ms[b][name] / ms[b][base]:.2f}" for b in BATCHES]
        delta = 100 * (acc[name] - acc[base])
        print(f"| {name} | {100 * acc[name]:.2f} | {delta:+.2f} | " + " | ".join(cells) + " |")
        rows.append({"name": name, "accuracy": acc[name],
                     **{f"ratio_b{b}": ms[b][name] / ms[b][base] for b in BATCHES}})  # fmt: skip
    print("\nµs per op type at batch 64 (onnxruntime profiler, per run):")
    for name, path in engines.items():
        prof = op_profile(path, 64)
        print(f"  {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in prof.items())
              + f"; total {sum(prof.values()):.0f}")  # fmt: skip
    (OUT / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("goal: <= 0.50x at batch 64, top-1 within 0.5 point of the unpruned model")
    figures = {
        "epochs": args.epochs,
        "rounds": args.rounds,
        "top1": acc,
        "latency_ms": ms,
        "x_unpruned": {b: {k: ms[b][k] / ms[b][base] for k in engines} for b in BATCHES},
    }
    # the goal holds for a variant that is at most 0.50x at batch 64 within 0.5 point
    fit = [k for k in engines if k != base and 100 * (acc[base] - acc[k]) <= 0.5]
    best = min((figures["x_unpruned"][64][k] for k in fit), default=float("inf"))
    record("prune_digits", figures, [
        goal("fastest variant within 0.5 point of top-1, latency x unpruned at batch 64",
             best, "<=", 0.5),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
