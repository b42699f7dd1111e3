"""QDQ int8 models through onnxruntime's quantizer, with ranges we computed ourselves.

onnxruntime.quantization.quantize_static calibrates with its own calibrators unless it is given
a calibration cache (`calibration_cache_path`, a JSON of per-tensor ranges). We write our
streaming ranges (calibration/statistics.py) in that format and let its QDQ quantizer place the
Q/DQ nodes, quantize weights per channel and pick scales: onnxruntime never runs the model.

Which nodes are quantized: quantize/plan.py; the rewrites before it (outlier channels,
smoothing, private copies for quantized readers): quantize/rewrites.py.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.presets import Preset
from edgesmith.toolchain.quantize.plan import Plan
from edgesmith.toolchain.quantize.rewrites import isolate_quantized_inputs

TWO_GB = 2**31


class _FromOnnxruntime(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname


@contextlib.contextmanager
def quiet_ort_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger at WARNING; keep our output ours.

    Only the root logger's records from onnxruntime's files are dropped, and only while the
    quantizer runs: no process-wide logging switch."""
    quiet = _FromOnnxruntime()
    logging.root.addFilter(quiet)
    try:
        yield
    finally:
        logging.root.removeFilter(quiet)


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Save, with weights in one external file beside it when the model is over 2 GB."""
    big = model.ByteSize() > TWO_GB - (1 << 26)
    if big:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, str(path))
    return path


def is_large(path: Path) -> bool:
    proto = onnx.load(str(path), load_external_data=False)
    return (
        any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer)
        and sum(p.stat().st_size for p in Path(path).parent.glob(Path(path).name + "*")) > TWO_GB
    )


# ---------------------------------------------------------------------------------------------
# Quantizing


def extra_options(preset: Preset) -> dict:
    return {
        "ActivationSymmetric": preset.activation_symmetric,
        "WeightSymmetric": preset.weight_symmetric,
        "QDQKeepRemovableActivations": preset.keep_removable_activations,
        "AddQDQPairToWeight": preset.add_qdq_pair_to_weight,
        "DedicatedQDQPair": preset.dedicated_qdq_pair,
        "QuantizeBias": preset.quantize_bias,
        "OpTypesToExcludeOutputQuantization": list(preset.float_outputs),
        # a Gemm/MatMul weight [K, N] has its output channels on axis 1
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
    }


def quantize_static_qdq(
    model_path: Path,
    out_path: Path,
    ranges: dict[str, tuple[float, float]],
    preset: Preset,
    plan: Plan,
) -> Path:
    """Write the QDQ model of `model_path` to `out_path` using `ranges` (no calibration run).

    The plan's quantized readers of a tensor that float readers share get their own copy first
    (isolate_quantized_inputs), for every plan: a node the fallback loop puts back to float
    then reads float, not its neighbours' rounded input."""
    import inspect

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise InvalidInput(
            f"onnxruntime {onnxruntime.__version__} cannot take precomputed ranges "
            "(quantize_static has no calibration_cache_path); install onnxruntime >= 1.22"
        )
    options = extra_options(preset)
    model = onnx.load(str(model_path))
    copies = isolate_quantized_inputs(model, plan.quantized(model))
    ranges = {**ranges, **{c: ranges[t] for t, c in copies.items() if t in ranges}}
    data = {
        k: (np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))) for k, (lo, hi) in ranges.items()
    }
    with tempfile.TemporaryDirectory(prefix="edgesmith-q-", dir=Path(out_path).parent) as tmp:
        model_path = save_model(model, Path(tmp) / "isolated.onnx")
        del model
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        with quiet_ort_quantizer():
            quantize_static(
                str(model_path),
                str(out_path),
                calibration_data_reader=None,
                calibration_cache_path=str(cache),
                calibrate_method=CalibrationMethod.MinMax,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(plan.op_types),
                nodes_to_exclude=sorted(plan.excluded),
                per_channel=preset.per_channel,
                reduce_range=preset.reduce_range,
                activation_type=_qtype(preset.activation_type),
                weight_type=_qtype(preset.weight_type),
                use_external_data_format=is_large(model_path),
                extra_options=options,
            )
    return with_int8_gathers(out_path, preset, plan)


def with_int8_gathers(path: Path, preset: Preset, plan: Plan) -> Path:
    """The preset's int8 embedding tables (quantize/gather.py), in the model at `path`; a
    Gather the plan keeps in float (--exclude, the fallback loop) keeps its table."""
    from edgesmith.toolchain.quantize.gather import quantize_gathers

    if not preset.gather_int8:
        return path
    model = onnx.load(str(path))
    if quantize_gathers(model, exclude=plan.excluded):
        for p in Path(path).parent.glob(Path(path).name + ".data"):
            p.unlink()  # save_model writes the data file again if it is still needed
        save_model(model, Path(path))
    return path


def quantize_dynamic_model(model_path: Path, out_path: Path, preset: Preset, plan: Plan) -> Path:
    """Dynamic quantization (Optimum's baseline): int8 weights, activations quantized per call
    from their own min/max. Only weighted MatMul/Gemm/Conv/Attention-style ops apply."""
    from onnxruntime.quantization import quantize_dynamic

    with quiet_ort_quantizer():
        quantize_dynamic(
            str(model_path),
            str(out_path),
            op_types_to_quantize=[o for o in plan.op_types if o in ("MatMul", "Gemm", "Conv")],
            nodes_to_exclude=sorted(plan.excluded),
            per_channel=preset.per_channel,
            reduce_range=preset.reduce_range,
            weight_type=_qtype("int8"),
            use_external_data_format=is_large(model_path),
            extra_options={"MatMulConstBOnly": True},
        )
    return with_int8_gathers(out_path, preset, plan)


INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QAttention")


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that read a DequantizeLinear output (QDQ), or integer ops (dynamic quantization)."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in INTEGER_OPS
        or (n.op_type not in ("QuantizeLinear", "DequantizeLinear") and set(n.input) & dq_out)
    ]
