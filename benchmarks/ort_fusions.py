"""Why our onnxruntime CPU sessions disable SkipLayerNormFusion (targets/ort_cpu.py).

onnxruntime fuses Add(x, skip) → LayerNormalization into its SkipLayerNormalization contrib op.
On CPU that kernel is slower than the two ops it replaces. This times both graphs side by side
(2 threads, interleaved rounds, medians) at the shapes of a small BERT encoder.

    .venv/bin/python benchmarks/ort_fusions.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import interleaved, record  # noqa: E402

SHAPES = ((1, 16, 384), (1, 128, 384), (8, 128, 384), (8, 128, 768))


def graph(shape: tuple[int, ...], fused: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    c = shape[-1]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in "ab"]
    inits = [
        numpy_helper.from_array(np.linspace(0.5, 1.5, c, dtype=np.float32), "gamma"),
        numpy_helper.from_array(np.linspace(-0.1, 0.1, c, dtype=np.float32), "beta"),
    ]
    if fused:
        nodes = [
            helper.make_node(
                "SkipLayerNormalization",
                ["a", "b", "gamma", "beta"],
                ["y"],
                domain="com.microsoft",
                epsilon=1e-12,
            )
        ]
    else:
        nodes = [
            helper.make_node("Add", ["a", "b"], ["s"]),
            helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], epsilon=1e-12),
        ]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))]
    g = helper.make_graph(nodes, "g", inputs, out, inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(g, opset_imports=opsets).SerializeToString()


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    print(f"onnxruntime {ort.__version__}, 2 threads, medians of {args.rounds} interleaved rounds")
    print(f"{'shape':<16} {'SkipLayerNorm ms':>17} {'Add + LayerNorm ms':>19} {'ratio':>6}")
    rng = np.random.default_rng(0)
    figures = {"onnxruntime": ort.__version__, "threads": 2, "rounds": args.rounds, "shapes": {}}
    for shape in SHAPES:
        feeds = {n: rng.standard_normal(shape).astype(np.float32) for n in "ab"}
        sessions = {
            fused: ort.InferenceSession(
                graph(shape, fused),
                so,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=["SkipLayerNormFusion"],
            )
            for fused in (True, False)
        }
        a, b = (sessions[f].run(None, feeds)[0] for f in (True, False))
        assert np.abs(a - b).max() < 1e-4, "the two graphs must compute the same"
        t = interleaved(
            {f: (lambda s=s, feeds=feeds: s.run(None, feeds)) for f, s in sessions.items()},
            args.rounds,
            warmup=10,
        )
        name = "x".join(map(str, shape))
        print(f"{name:<16} {t[True]:17.4f} {t[False]:19.4f} {t[True] / t[False]:6.2f}")
        figures["shapes"][name] = {"skiplayernorm_ms": t[True], "add_layernorm_ms": t[False],
                                   "ratio": t[True] / t[False]}  # fmt: skip
    record("ort_fusions", figures, [])


if __name__ == "__main__":
    main()
