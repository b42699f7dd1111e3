"""Fixtures of the quantization tests: tiny ONNX models and data, the digits CNN as ONNX.

The quantize tests check what the quantizer writes, so `edgesmith quantize` runs here with the
latency check off (it times engines on this machine, and on a busy 2-core host a tiny model's
int8 may or may not pay); tests/quantize/test_latency.py tests the check itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.quantize import models


@pytest.fixture(scope="session")
def outlier_mlp(tmp_path_factory) -> dict[str, Path]:
    """The MLP whose second MatMul cannot be int8 (tests/quantize/models.py), calib + eval data."""
    d = tmp_path_factory.mktemp("outlier_mlp")
    model = models.outlier_mlp(d / "model.onnx")
    np.savez(d / "calib.npz", x=models.outlier_data(64, seed=1))
    np.savez(d / "eval.npz", x=models.outlier_data(256, seed=2))
    return {"model": model, "calib": d / "calib.npz", "eval": d / "eval.npz", "dir": d}


@pytest.fixture(scope="session")
def conv_net(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("conv_net")
    model = models.conv_net(d / "model.onnx")
    x = np.random.default_rng(3).standard_normal((48, 3, 8, 8)).astype(np.float32)
    np.savez(d / "calib.npz", x=x[:32])
    np.savez(d / "eval.npz", x=x[32:])
    return {"model": model, "calib": d / "calib.npz", "eval": d / "eval.npz", "dir": d}


@pytest.fixture(scope="session")
def digits_onnx(digits, tmp_path_factory) -> Path:
    """The digits CNN (trained once per session by tests/conftest.py) exported to ONNX."""
    from edgesmith.toolchain.models.source import SourceSpec
    from edgesmith.toolchain.models.torch import load_torch, onnx_from_torch

    out = tmp_path_factory.mktemp("digits_onnx") / "model.onnx"
    model = load_torch(
        SourceSpec(model="examples.digits:make_model", weights=str(digits / "model.safetensors"))
    )
    return onnx_from_torch(model, out, opset=18)


@pytest.fixture
def cli(cli):
    """`edgesmith quantize` with --latency-batches off unless the test names it."""

    def invoke(*args):
        if args and args[0] == "quantize" and "--latency-batches" not in map(str, args):
            args = (*args, "--latency-batches", "off")
        return cli(*args)

    return invoke
