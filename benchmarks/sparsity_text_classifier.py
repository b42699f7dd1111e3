"""Weight sparsity on the fine-tuned text classifier, every method at its intended start:

- after the fine-tune (the fine-tuned MiniLM classifier as MODEL): magnitude and 2:4 with
  the default recovery (no --epochs or --lr: epochs from the data size scaled by the
  sparsity, the rate from a range test, early stopping);
- fine-pruning (Sanh et al.'s setting): the pretrained all-MiniLM-L6-v2 with a new head as
  MODEL, the fine-tuned classifier as --teacher, pruned while it learns the task: movement
  hard, movement soft and gradual magnitude, the same budget for each (--fine-epochs).

Every variant goes through edgesmith's own pipeline (prune → export → build); top-1 is its
ort-cpu engine's on test.jsonl (1588 sentences of modules never trained on; every one of the
9 classes present, counts in the record); the best epoch is chosen on calib.jsonl (all of
it: every class). Besides each: the recovery's wall time, the epochs run of those chosen,
the rate, the weights zero and the xz-compressed ONNX against the dense one.

    .venv/bin/python benchmarks/sparsity_text_classifier.py [--sparsity 0.8]
        [--fine-prune 0.9] [--fine-epochs 6] [--methods ...]

Needs build/text_classifier (make text-classifier's first step). Goals: magnitude at 80%
within 2 points with its default recovery; 2:4 within 1 point; fine-pruning at 90%: movement
>= magnitude, and within 3 points of the fine-tuned model.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import goal, isa, record, sparsity_figures  # noqa: E402
from benchmarks.prune_text_classifier import TC, THREADS, accuracy  # noqa: E402
from benchmarks.prune_text_classifier import run_recipe as tc_recipe  # noqa: E402

OUT = Path("build/bench_sparsity")
FINE = {
    "movement hard": {"method": "movement", "movement": "hard"},
    "movement soft": {"method": "movement", "movement": "soft"},
    "magnitude cubic": {"method": "magnitude", "schedule": "cubic"},
}


def variants(args) -> dict[str, tuple[Path, dict | None]]:
    """name → (engine directory, the prune report), each through the pipeline (cached)."""
    data = {"data": str(TC / "train.jsonl"), "eval_data": str(TC / "calib.jsonl"),
            "seq_len": 64, "latency_batches": [8], "latency_rounds": 3}  # fmt: skip
    build = {"kind": "build", "options": {"threads": THREADS}}

    def chain(name: str, prune: list[dict], source: Path = TC / "model"):
        stages = tc_recipe(name, [*prune, {"kind": "export"}, build], OUT, source)
        report = json.loads((stages[0].out / "report.json").read_text()) if prune else None
        return stages[-1].out, report

    out = {"fine-tuned (dense)": chain("unpruned", [])}
    wanted = set(args.methods or [])

    def want(label: str) -> bool:
        return not wanted or label in wanted

    for s in args.sparsity:  # movement after the fine-tune: the stage warns, see the guide
        if want("magnitude"):
            prune = {"kind": "prune", "sparsity": s, "method": "magnitude", **data}
            out[f"magnitude {s:.0%}, default recovery"] = chain(f"magnitude-{s}", [prune])
    if want("2:4"):
        out["2:4, default recovery"] = chain("two-four", [{"kind": "prune", "method": "2:4",
                                                           **data}])  # fmt: skip
    if args.fine_prune:
        from examples.text_classifier import write_initial_model

        start = write_initial_model(TC / "pretrained")
        for s in args.fine_prune:
            for label, m in FINE.items():
                if not want(label):
                    continue
                prune = {"kind": "prune", "sparsity": s, **m, **data, "teacher": str(TC / "model"),
                         "epochs": args.fine_epochs}  # fmt: skip
                name = f"fine-{label}-{s}-{args.fine_epochs}"
                out[f"{label} {s:.0%}, fine-pruned"] = chain(name, [prune], start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="*", default=[0.8])
    ap.add_argument("--fine-prune", type=float, nargs="*", default=[0.9])
    ap.add_argument("--fine-epochs", type=int, default=6)
    ap.add_argument("--methods", nargs="*", help="only these (magnitude, 2:4, movement hard...)")
    args = ap.parse_args()
    built = variants(args)
    base = "fine-tuned (dense)"
    acc = {k: accuracy(engine) for k, (engine, _) in built.items()}
    print(f"ISA: {isa()}; {THREADS} threads; fine-pruning: {args.fine_epochs} epochs each")
    print("| variant | weights zero | top-1 | Δ points | epochs run / chosen | lr | recovery "
          "min | xz × |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for name, (_, rep) in built.items():
        row = {"top1": acc[name], "delta_points": 100 * (acc[name] - acc[base])}
        rows[name] = row
        if rep is None:
            print(f"| {name} | 0% | {100 * row['top1']:.2f} | | | | | 1.00 |")
            continue
        row.update(sparsity_figures(rep))
        print(
            f"| {name} | {row['weight_sparsity']:.1%} | {100 * row['top1']:.2f} | "
            f"{row['delta_points']:+.2f} | {row['epochs_run']} / {row['epochs_chosen']} | "
            f"{row['lr']:.2g} | {row['recovery_seconds'] / 60:.1f} | {row['xz_ratio']:.2f} |"
        )
    goals = []
    if "magnitude 80%, default recovery" in rows:
        lost = -rows["magnitude 80%, default recovery"]["delta_points"]
        goals.append(goal("magnitude 80%, default recovery: points lost", lost, "<=", 2.0))
    if "2:4, default recovery" in rows:
        lost = -rows["2:4, default recovery"]["delta_points"]
        goals.append(goal("2:4, default recovery: points lost", lost, "<=", 1.0))
    for s in args.fine_prune:
        mov = [rows[k]["top1"] for k in rows if k.startswith("movement") and f"{s:.0%}, fine" in k]
        mag = rows.get(f"magnitude cubic {s:.0%}, fine-pruned")
        if mov and mag:
            goals.append(goal(f"fine-pruning {s:.0%}: movement minus magnitude, points",
                              100 * (max(mov) - mag["top1"]), ">=", 0.0))  # fmt: skip
        if mov:
            goals.append(goal(f"fine-pruning {s:.0%}: movement's points lost",
                              100 * (acc[base] - max(mov)), "<=", 3.0))  # fmt: skip
    for g in goals:
        print(f"goal: {g['goal']} {g['value']:.2f} {g['op']} {g['bound']}: "
              f"{'met' if g['met'] else 'MISSED'}")  # fmt: skip
    classes = {}
    for split in ("train", "calib", "test"):
        with (TC / f"{split}.jsonl").open() as f:
            counts = collections.Counter(json.loads(line)["label"] for line in f)
        classes[split] = dict(sorted(counts.items()))
    figures = {"threads": THREADS, "fine_epochs": args.fine_epochs, "classes": classes,
               "rows": rows}  # fmt: skip
    record("sparsity_text_classifier", figures, goals)


if __name__ == "__main__":
    main()
