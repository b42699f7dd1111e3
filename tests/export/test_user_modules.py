"""Plain PyTorch modules, as users bring them: no spec, outputs named by their structure."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from tests import user_modules
from tests.conftest import tree_digest


def _weights(tmp_path, factory: str):
    torch.manual_seed(0)
    path = tmp_path / f"{factory}.safetensors"
    save_file(getattr(user_modules, factory)().state_dict(), str(path))
    return path


def _export(cli, tmp_path, factory: str, *extra: str):
    out = tmp_path / f"onnx_{factory}"
    w = _weights(tmp_path, factory)
    r = cli("export", f"tests.user_modules:{factory}", "--weights", w,
            "--input", "x:1x12", "--dynamic", "x:0", "-o", out, *extra)  # fmt: skip
    return r, out


@pytest.mark.parametrize(
    "factory, names",
    [
        ("one", ["output"]),
        ("two", ["output_0", "output_1"]),
        ("keyed", ["scores", "embedding"]),
        ("named", ["logits", "hidden"]),
        ("record", ["logits"]),
    ],
)
def test_outputs_are_named_by_their_structure(cli, tmp_path, factory, names):
    r, out = _export(cli, tmp_path, factory)
    assert r.code == 0, r.stderr
    model = onnx.load(str(out / "model.onnx"))
    assert [o.name for o in model.graph.output] == names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["info"]["outputs"] == names  # recorded for later stages
    assert [c["name"] for c in manifest["metrics"]["check"]] == names
    # the initializers keep the module's own parameter names
    assert {i.name for i in model.graph.initializer} >= {"a.weight", "fc.weight"} & {
        n for n, _ in getattr(user_modules, factory)().named_parameters()
    }


def test_output_names_given_override_and_a_wrong_count_is_refused(cli, tmp_path):
    r, out = _export(cli, tmp_path, "keyed", "--output-name", "p", "--output-name", "q")
    assert r.code == 0, r.stderr
    assert [o.name for o in onnx.load(str(out / "model.onnx")).graph.output] == ["p", "q"]
    r, out = _export(cli, tmp_path, "one", "--output-name", "a", "--output-name", "b")
    assert r.code == 2
    assert "returns 1 outputs (output) but 2 output names were given" in r.stderr
    assert not out.exists()


def test_mixed_dtypes_by_keyword_and_no_weights(cli, tmp_path):
    """int64 ids, a bool mask, float features, passed by name; the factory's own weights."""
    out = tmp_path / "onnx"
    args = ["--input", "ids:1x7:int64", "--input", "mask:1x7:bool", "--input", "feats:1x4",
            "--dynamic", "ids:0,1", "--dynamic", "mask:0,1", "--dynamic", "feats:0"]  # fmt: skip
    r = cli("export", "tests.user_modules:mixed", *args, "-o", out)
    assert r.code == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["info"]["weights"] == "factory"
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"))
    assert [i.name for i in sess.get_inputs()] == ["ids", "mask", "feats"]
    rng = np.random.default_rng(0)
    feeds = {
        "ids": rng.integers(0, 50, (3, 5)),
        "mask": rng.random((3, 5)) > 0.3,
        "feats": rng.standard_normal((3, 4)).astype(np.float32),
    }
    (got,) = sess.run(None, feeds)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # what the export stage builds a weightless factory with
        module = user_modules.mixed().eval()
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    want = module(**t)["logits"].detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    again = cli("export", "tests.user_modules:mixed", *args, "-o", out)
    assert again.code == 0 and "cached" in again.stderr  # the same module: the same key


def test_a_plain_module_goes_through_every_stage(cli, tmp_path):
    """export → quantize → build → validate, a dict-output module with no spec."""
    w = _weights(tmp_path, "keyed")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((64, 12)).astype(np.float32))
    inputs = [w, tmp_path / "data.npz"]
    before = [tree_digest(p) for p in inputs]
    src = ["tests.user_modules:keyed", "--weights", w, "--input", "x:1x12", "--dynamic", "x:0"]
    assert cli("export", *src, "-o", tmp_path / "onnx").code == 0
    r = cli("quantize", tmp_path / "onnx", "-o", tmp_path / "int8", "--calibration",
            tmp_path / "data.npz", "--latency-batches", "off")  # fmt: skip
    assert r.code == 0, r.stderr
    r = cli("build", tmp_path / "int8", "-t", "ort-cpu", "-o", tmp_path / "engine")
    assert r.code == 0, r.stderr
    r = cli("validate", tmp_path / "engine", "--reference", "tests.user_modules:keyed",
            "--reference-weights", w, "--data", tmp_path / "data.npz", "--metric", "cosine",
            "-o", tmp_path / "report")  # fmt: skip
    assert r.code == 0, r.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {c["output"] for c in report["checks"]} == {"scores", "embedding"}
    assert [tree_digest(p) for p in inputs] == before  # the inputs are never modified


def test_a_forward_that_fails_on_the_declared_inputs_exits_2(cli, tmp_path):
    r, out = _export(cli, tmp_path, "one")
    assert r.code == 0
    w = _weights(tmp_path, "one")
    r = cli("export", "tests.user_modules:one", "--weights", w, "--input", "x:1x5",
            "-o", tmp_path / "bad")  # fmt: skip
    assert r.code == 2 and "fails on inputs" in r.stderr and "--input" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_data_dependent_control_flow_exits_2_in_one_line(cli, tmp_path):
    out = tmp_path / "onnx"
    r = cli("export", "tests.user_modules:branchy", "--input", "x:1x12", "-o", out)
    assert r.code == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("edgesmith: error: torch.onnx export failed")
        and "Traceback" not in r.stderr
    )
    assert not out.exists()


def test_gelu_is_written_the_way_onnxruntime_fuses_it(cli, tmp_path):
    """torch writes x * (0.5 * (1 + erf(x/√2))); reordered to (x * (1 + erf(x/√2))) * 0.5 the
    engine fuses it into one kernel, with the same bits out (×0.5 is exact)."""
    import onnxruntime as ort

    from edgesmith.toolchain.core.onnx_model import gelu_as_onnxruntime_fuses

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(12, 64), torch.nn.Linear(64, 4)

        def forward(self, x):
            return self.b(torch.nn.functional.gelu(self.a(x)))

    torch.manual_seed(0)
    raw = tmp_path / "raw.onnx"
    torch.onnx.export(Mlp().eval(), (torch.randn(2, 12),), str(raw), dynamo=True, opset_version=18)
    model = onnx.load(str(raw))
    assert gelu_as_onnxruntime_fuses(model) == 1
    onnx.save(model, str(tmp_path / "fused.onnx"))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32) * 4
    outs = [
        ort.InferenceSession(str(p), opts).run(None, {model.graph.input[0].name: x})[0]
        for p in (raw, tmp_path / "fused.onnx")
    ]
    assert np.array_equal(outs[0], outs[1])
    # through the command line: the ort-cpu engine holds a fused GELU, no Erf
    r = cli("build", tmp_path / "fused.onnx", "-o", tmp_path / "engine")
    assert r.code == 0, r.stderr
    ops = {n.op_type for n in onnx.load(str(tmp_path / "engine" / "model.onnx")).graph.node}
    assert "Erf" not in ops and ops & {"Gelu", "BiasGelu", "FastGelu"}


MODULE = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, 4)

    def forward(self, x):
        return torch.relu(self.fc(x))


def make():
    torch.manual_seed(0)
    return Net()
"""


def test_an_export_is_the_same_bytes_wherever_it_is_made(cli, tmp_path, monkeypatch):
    """torch's exporter writes each node's stack trace (the machine's paths, the user's source
    lines) into the model; the export leaves them out, so one module gives one model."""
    models = []
    for where in ("checkout-a", "elsewhere/checkout-b"):
        src = tmp_path / where
        src.mkdir(parents=True)
        (src / "usermod_paths.py").write_text(MODULE)
        monkeypatch.chdir(src)
        out = tmp_path / f"onnx-{where.replace('/', '-')}"
        r = cli("export", "usermod_paths:make", "--input", "x:1x12", "--dynamic", "x:0", "-o", out)
        assert r.code == 0, r.stderr
        data = (out / "model.onnx").read_bytes()
        assert str(tmp_path).encode() not in data and b"usermod_paths.py" not in data
        models.append(data)
        monkeypatch.delitem(__import__("sys").modules, "usermod_paths", raising=False)
    assert models[0] == models[1]
