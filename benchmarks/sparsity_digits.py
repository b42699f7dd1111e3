"""Weight sparsity on the digits CNN with the defaults only: magnitude, movement (hard, soft)
and 2:4 side by side, every method's recovery chosen the same way (no --epochs, --lr or
schedule flags: epochs from the data size scaled by the sparsity, the rate from a range test,
early stopping; training/defaults.py).

Every variant goes through edgesmith's own pipeline (prune → export → build) from the
embedded default (examples.digits:make_model + build/digits/model.safetensors); top-1 is the
ort-cpu engine's on test.npz (30% of sklearn's digits, stratified: every class in
proportion, never trained or calibrated on). Besides each: the recovery's wall time, the
epochs it ran of those chosen, the rate the range test chose, the weights zero, and the
ONNX's xz-compressed size against the dense one (what zeros buy on ort-cpu, whose kernels are
dense).

    .venv/bin/python benchmarks/sparsity_digits.py [--sparsity 0.8 0.9]

Needs build/digits (make demo, or python examples/digits.py). Goals: magnitude at 80% within
2 points of the dense model; 2:4 within 1 point; movement >= magnitude at each sparsity.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import goal, isa, record, sparsity_figures  # noqa: E402
from benchmarks.prune_digits import DIGITS, THREADS, accuracy  # noqa: E402

OUT = Path("build/bench_sparsity_digits")
METHODS = {
    "magnitude": {"method": "magnitude"},
    "magnitude cubic": {"method": "magnitude", "schedule": "cubic"},
    "movement hard": {"method": "movement", "movement": "hard"},
    "movement soft": {"method": "movement", "movement": "soft"},
}


def run_recipe(name: str, stages: list[dict]) -> list:
    from edgesmith.toolchain import pipeline
    from edgesmith.toolchain.core.recipe import recipe_from_dict

    source = {"model": "examples.digits:make_model", "weights": str(DIGITS / "model.safetensors")}
    recipe = recipe_from_dict(
        {"name": name, "out": str(OUT / name), "source": source, "stages": stages}
    )
    return pipeline.run(recipe, emit=lambda m: print(f"  {name}: {m}", file=sys.stderr)).stages


def variants(sparsities: list[float]) -> dict[str, tuple[Path, dict | None]]:
    """name → (engine directory, the prune report), each through the pipeline (cached)."""
    build = {"kind": "build", "options": {"threads": THREADS}}
    data = {"data": str(DIGITS / "train.npz"), "eval_data": str(DIGITS / "calib.npz"),
            "latency_batches": [64], "latency_rounds": 5}  # fmt: skip
    out = {"dense": (run_recipe("dense", [{"kind": "export"}, build])[-1].out, None)}

    def chain(name: str, prune: dict) -> tuple[Path, dict]:
        stages = run_recipe(name, [{"kind": "prune", **prune, **data}, {"kind": "export"}, build])
        return stages[-1].out, json.loads((stages[0].out / "report.json").read_text())

    for s in sparsities:
        for label, m in METHODS.items():
            out[f"{label} {s:.0%}"] = chain(f"{label.replace(' ', '-')}-{s}", {**m, "sparsity": s})
    out["2:4"] = chain("two-four", {"method": "2:4"})
    return out


def main() -> None:
    from edgesmith.toolchain.evaluate.engines import timed_runner

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.8, 0.9])
    args = ap.parse_args()
    built = variants(args.sparsity)
    acc = {k: accuracy(timed_runner(engine, THREADS)) for k, (engine, _) in built.items()}
    print(f"ISA: {isa()}; defaults only (no --epochs, --lr or schedule flags)")
    print("| variant | weights zero | top-1 | Δ points | epochs run / chosen | lr (range test) "
          "| recovery s | xz × |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for name, (_, rep) in built.items():
        row = {"top1": acc[name], "delta_points": 100 * (acc[name] - acc["dense"])}
        if rep is not None:
            row.update(sparsity_figures(rep))
        rows[name] = row
        if rep is None:
            print(f"| {name} | 0% | {100 * row['top1']:.2f} | | | | | 1.00 |")
            continue
        print(
            f"| {name} | {row['weight_sparsity']:.1%} | {100 * row['top1']:.2f} | "
            f"{row['delta_points']:+.2f} | {row['epochs_run']} / {row['epochs_chosen']} | "
            f"{row['lr']:.2g} | {row['recovery_seconds']:.0f} | {row['xz_ratio']:.2f} |"
        )
    goals = [
        goal("magnitude 80%: points lost", -rows["magnitude 80%"]["delta_points"], "<=", 2.0),
        goal("2:4: points lost", -rows["2:4"]["delta_points"], "<=", 1.0),
    ]
    for s in args.sparsity:

        def best(*labels: str, s: float = s) -> float:
            return max(rows[f"{label} {s:.0%}"]["top1"] for label in labels)

        best_mag = best("magnitude", "magnitude cubic")
        best_mov = best("movement hard", "movement soft")
        goals.append(goal(f"movement minus magnitude at {s:.0%}, points",
                          100 * (best_mov - best_mag), ">=", 0.0))  # fmt: skip
    for g in goals:
        print(f"goal: {g['goal']} {g['value']:.2f} {g['op']} {g['bound']}: "
              f"{'met' if g['met'] else 'MISSED'}")  # fmt: skip
    record("sparsity_digits", {"threads": THREADS, "rows": rows}, goals)


if __name__ == "__main__":
    main()
