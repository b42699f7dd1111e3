"""Why attention's Softmax costs as much in the int8 engine as in fp32, and most at padding.

onnxruntime's CPU Softmax on the attention scores of all-MiniLM-L6-v2 at batch 8 (shape
[8, 12, 128, 128], 2 threads), with half of each row masked the way the exported BERT graph
masks padding (finfo(float32).min added), and with other masked values: exp of an input more
than ~87 below the row's maximum (a denormal or underflowing result) takes a slow path; then
with onnxruntime's denormal-as-zero session setting at 1-3 threads.

    .venv/bin/python benchmarks/softmax_mask.py [--runs 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from benchmarks._common import isa, record

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    shape = [8, 12, 128, 128]
    node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
    graph = helper.make_graph(
        [node], "softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    print(f"ISA: {isa()}; onnxruntime {ort.__version__}; Softmax {shape}, 2 threads")
    rng = np.random.default_rng(0)
    cases = [
        ("no mask", None),
        ("half masked, -20", -20.0),
        ("half masked, -80", -80.0),
        ("half masked, -88", -88.0),
        ("half masked, -1e4", -1e4),
        ("half masked, finfo.min (the exported mask)", float(np.finfo(np.float32).min)),
    ]
    figures = {"onnxruntime": ort.__version__, "shape": shape, "threads": 2, "runs": args.runs,
               "softmax_ms": {}, "masked_graph_ms": {}, "denormal_as_zero_ms": {}}  # fmt: skip
    for label, value in cases:  # fmt: skip
        x = rng.standard_normal(shape).astype(np.float32)
        if value is not None:
            x[..., 64:] = value
        for _ in range(3):
            s.run(None, {"x": x})
        t = time.perf_counter()
        for _ in range(args.runs):
            s.run(None, {"x": x})
        ms = (time.perf_counter() - t) / args.runs * 1e3
        print(f"  {label:<44} {ms:7.3f} ms")
        figures["softmax_ms"][label] = ms
    # the ort-cpu engine's rewrite (targets/ort_cpu.py: clamp_masked_softmax) on a masked graph
    from onnx import numpy_helper

    from edgesmith.targets.ort_cpu import clamp_masked_softmax

    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, [8, 1, 1, 128])
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "low"),
             numpy_helper.from_array(np.array(0.0, np.float32), "keep")]  # fmt: skip
    nodes = [helper.make_node("Equal", ["mask", "zero"], ["pad"]),
             helper.make_node("Where", ["pad", "low", "keep"], ["additive"]),
             helper.make_node("Add", ["x", "additive"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["y"], axis=-1)]  # fmt: skip
    g = helper.make_graph(nodes, "masked", [graph.input[0], mask], [graph.output[0]], inits)
    masked = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    clamped = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    assert clamp_masked_softmax(clamped) == 1
    feeds = {
        "x": rng.standard_normal(shape).astype(np.float32),
        "mask": (np.arange(128) < 64).astype(np.int64).reshape(1, 1, 1, 128).repeat(8, 0),
    }
    for label, m in (("masked graph, half the keys padding", masked),
                     ("the same, clamped (ort-cpu engine rewrite)", clamped)):  # fmt: skip
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(3):
            sess.run(None, feeds)
        t = time.perf_counter()
        for _ in range(args.runs):
            sess.run(None, feeds)
        ms = (time.perf_counter() - t) / args.runs * 1e3
        print(f"  {label:<44} {ms:7.3f} ms")
        figures["masked_graph_ms"][label] = ms
    # flush-to-zero: onnxruntime sets it on its pool threads only, not on the calling thread,
    # which runs its share of the work (so at 1 or 2 threads it cannot help)
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., 64:] = float(np.finfo(np.float32).min)
    for threads in (1, 2, 3):
        for daz in ("0", "1"):
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.add_session_config_entry("session.set_denormal_as_zero", daz)
            d = ort.InferenceSession(model.SerializeToString(), so,
                                     providers=["CPUExecutionProvider"])  # fmt: skip
            for _ in range(3):
                d.run(None, {"x": x})
            t = time.perf_counter()
            for _ in range(args.runs):
                d.run(None, {"x": x})
            ms = (time.perf_counter() - t) / args.runs * 1e3
            print(
                f"  finfo.min mask, {threads} thread(s), set_denormal_as_zero={daz}: {ms:7.3f} ms"
            )
            figures["denormal_as_zero_ms"].setdefault(threads, {})[f"daz {daz}"] = ms
    record("softmax_mask", figures, [])


if __name__ == "__main__":
    main()
