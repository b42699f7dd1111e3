"""Presets: chosen from the instruction set, and each one's Q/DQ does what its reason says."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.presets import detect_isa
from edgesmith.toolchain.quantize import qdq
from edgesmith.toolchain.quantize.plan import make_plan
from edgesmith.toolchain.quantize.presets import preset as named_preset
from edgesmith.toolchain.quantize.presets import resolve_preset

CPUINFO = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\n"
    "flags\t\t: fpu sse4_1 sse4_2 {flags}\n\nprocessor\t: 1\n"
)


def isa_from(tmp_path, flags: str, machine: str = "x86_64"):
    p = tmp_path / "cpuinfo"
    p.write_text(CPUINFO.format(flags=flags))
    return detect_isa(p, machine)


@pytest.mark.parametrize(
    ("flags", "machine", "expected"),
    [
        ("avx avx2 fma", "x86_64", "ort-cpu-avx2"),
        (
            "avx avx2 avx512f avx512bw",
            "x86_64",
            "ort-cpu-avx2",
        ),  # AVX-512 without VNNI saturates too
        ("avx avx2 avx512f avx512_vnni", "x86_64", "ort-cpu-vnni"),
        ("avx avx2 avx_vnni", "x86_64", "ort-cpu-vnni"),
        ("avx2 avx512_vnni amx_tile amx_int8", "x86_64", "ort-cpu-vnni"),
        ("fp asimd asimddp i8mm", "aarch64", "ort-cpu-arm64"),
    ],
)
def test_cpu_preset_follows_the_instruction_set(tmp_path, flags, machine, expected):
    preset = resolve_preset("ort-cpu", isa=isa_from(tmp_path, flags, machine))
    assert preset.name == expected
    assert preset.isa["chosen_by"].startswith("detected")
    assert preset.why


def test_amx_is_named_in_the_reason(tmp_path):
    preset = resolve_preset("ort-cpu", isa=isa_from(tmp_path, "avx2 avx512_vnni amx_int8"))
    assert "AMX" in preset.isa["chosen_by"]


def test_this_machine_gets_a_preset_from_its_own_flags():
    isa = detect_isa()
    preset = resolve_preset("ort-cpu")
    flags = set(isa.flags)
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags:
        assert preset.name == "ort-cpu-vnni"
    elif isa.arch == "arm64":
        assert preset.name == "ort-cpu-arm64"
    else:
        assert preset.name == "ort-cpu-avx2"


def test_named_preset_and_errors():
    assert resolve_preset("ort-cpu", "ort-cpu-avx2").reduce_range
    with pytest.raises(InvalidInput, match="available: ort-cpu-vnni"):
        resolve_preset("ort-cpu", "fast")
    with pytest.raises(InvalidInput, match="is for target trt-gpu"):
        resolve_preset("ort-cpu", "trt-gpu")
    with pytest.raises(InvalidInput, match="unknown target 'npu'"):
        resolve_preset("npu")


def _quantize(model_path, tmp_path, preset, data):
    from edgesmith.calibration.sources import Dataset
    from edgesmith.calibration.statistics import MethodSpec, Request, activation_tensors, calibrate

    proto = onnx.load(str(model_path))
    plan = make_plan(proto, preset)
    tensors = activation_tensors(proto, plan.op_types)
    calib = calibrate(model_path, Dataset({"x": data}), MethodSpec("minmax"), Request(tensors))
    out = tmp_path / f"{preset.name}.onnx"
    qdq.quantize_static_qdq(model_path, out, calib.ranges, preset, plan)
    return onnx.load(str(out))


def _int8_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [
        inits[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].dtype == np.int8
    ]


def vpmaddubsw(a_u8: np.ndarray, w_s8: np.ndarray) -> np.ndarray:
    """AVX2's u8·s8 dot product: adjacent pairs summed into a saturating int16, then int32."""
    p = a_u8.astype(np.int32) * w_s8.astype(np.int32)
    pairs = np.clip(p[..., 0::2] + p[..., 1::2], -32768, 32767)
    return pairs.sum(-1)


def test_avx2_preset_keeps_every_u8s8_pair_within_int16(conv_net, tmp_path):
    x = np.load(conv_net["calib"])["x"]
    avx2 = _quantize(conv_net["model"], tmp_path, named_preset("ort-cpu-avx2"), x)
    vnni = _quantize(conv_net["model"], tmp_path, named_preset("ort-cpu-vnni"), x)
    w_avx2 = np.concatenate([w.ravel() for w in _int8_weights(avx2)])
    w_vnni = np.concatenate([w.ravel() for w in _int8_weights(vnni)])
    assert np.abs(w_avx2).max() <= 64  # 7-bit weights: onnxruntime's reduce_range is [-64, 64]
    assert np.abs(w_vnni).max() == 127  # full range where nothing saturates
    # Worst case for each: activations at 255 meeting the two largest weights of one sign.
    worst = np.full(2, 255)
    assert vpmaddubsw(worst, np.array([64, 64])) == 2 * 255 * 64  # exact: no saturation
    assert vpmaddubsw(worst, np.array([127, 127])) == 32767 < 2 * 255 * 127  # saturates
    # And on this model's own weights, every pair the avx2 preset makes is exact.
    pairs = w_avx2[: len(w_avx2) // 2 * 2].reshape(-1, 2)
    a = np.full(pairs.shape, 255, dtype=np.int32)
    assert (vpmaddubsw(a, pairs) == (a * pairs.astype(np.int32)).sum(-1)).all()


def test_arm64_preset_uses_symmetric_int8_activations(conv_net, tmp_path):
    x = np.load(conv_net["calib"])["x"]
    model = _quantize(conv_net["model"], tmp_path, named_preset("ort-cpu-arm64"), x)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.int8 and (z == 0).all() for z in zps)
