"""Channel pruning of PyTorch factory models: the dependency groups, exactness, reloading,
the command on the digits CNN, and bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.models.channels import apply_groups, channel_groups, record
from tests.conftest import tree_digest
from tests.models import residual_cnn


def _net():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return residual_cnn().eval()


def _groups(net):
    return channel_groups(net, (torch.zeros(2, 3, 8, 8),))


def test_groups_follow_residuals_norms_depthwise_and_flatten():
    by = {g.name(): g for g in _groups(_net())}
    res = by["stem+c2"]  # the residual Add joins the stem's and the block's channels
    assert res.prunable and res.size == 16
    assert sorted(res.norms) == ["bn0", "bn2"] and res.depthwise == ["dw"]
    assert sorted(res.consumers) == [("c1", 1), ("hidden", 1)]
    assert by["c1"].norms == ["bn1"] and by["c1"].consumers == [("c2", 1)]
    assert by["hidden"].consumers == [("head", 1)]
    assert by["head"].blocked == "a model output"
    assert by[""].blocked == "the model's input"  # the 3 input channels


def test_an_unknown_op_leaves_its_channels_whole():
    class Concat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(1, 4, 1), torch.nn.Conv2d(1, 4, 1)
            self.c = torch.nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    by = {g.name(): g for g in channel_groups(Concat(), (torch.zeros(1, 1, 4, 4),))}
    assert by["a"].blocked == by["b"].blocked == "read by cat"


def test_pruned_channels_compute_what_the_model_computed_without_them():
    """Removing channels == keeping them but zeroing every input column that reads them (the
    only way they reach the output), through BatchNorm, the residual Add, the depthwise conv
    and the flatten into the Linear."""
    net, x = _net(), torch.randn(4, 3, 8, 8)
    groups = [g for g in _groups(net) if g.prunable]
    keep = [[0, 3, 5, 6, 9, 12, 13, 15], list(range(0, 24, 2)), list(range(8))]
    masked = _net()
    mods = dict(masked.named_modules())
    with torch.no_grad():
        for grp, kept in zip(groups, keep, strict=True):
            drop = [c for c in range(grp.size) if c not in kept]
            for name, _k in grp.consumers:
                mods[name].weight[:, drop] = 0
        expected = masked(x)
    pruned = _net()
    apply_groups(pruned, groups, keep)
    with torch.no_grad():
        got = pruned(x)
    assert pruned.c1.weight.shape == (12, 8, 3, 3) and pruned.dw.groups == 8
    assert pruned.hidden.weight.shape == (8, 8) and pruned.bn0.running_mean.shape == (8,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert sorted(record(groups, keep)["modules"]) == sorted(
        ["stem", "c2", "bn0", "bn2", "dw", "c1", "hidden", "bn1", "head"]
    )


def test_pruned_weights_reload_through_their_factory(tmp_path):
    """The safetensors file records what was resized; the factory's fresh module takes those
    shapes and loads strictly. A record that names something else is refused."""
    from safetensors.torch import save_file

    from edgesmith.toolchain.models.channels import metadata
    from edgesmith.toolchain.models.source import SourceSpec
    from edgesmith.toolchain.models.torch import load_torch

    net = _net()
    groups = [g for g in _groups(net) if g.prunable]
    keep = [list(range(8)), list(range(16)), list(range(16))]
    apply_groups(net, groups, keep)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path), metadata=metadata(record(groups, keep)))
    tm = load_torch(SourceSpec("tests.models:residual_cnn", weights=str(path)))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(tm.module(x), net(x))
    save_file(state, str(path))  # no record: the factory's shapes, which do not match
    with pytest.raises(InvalidInput, match="does not match 'tests.models:residual_cnn'"):
        load_torch(SourceSpec("tests.models:residual_cnn", weights=str(path)))
    lying = {"edgesmith_pruning": json.dumps({"method": "channels", "modules": ["pool"]})}
    save_file(state, str(path), metadata=lying)
    with pytest.raises(InvalidInput, match="names 'pool', which is AdaptiveAvgPool2d"):
        load_torch(SourceSpec("tests.models:residual_cnn", weights=str(path)))
    save_file(state, str(path), metadata={"edgesmith_pruning": "{not json"})
    with pytest.raises(InvalidInput, match="is not a list of module names"):
        load_torch(SourceSpec("tests.models:residual_cnn", weights=str(path)))


def _prune(cli, digits, out, *flags):
    return cli(
        "prune", "examples.digits:make_model", "--weights", digits / "model.safetensors",
        "-o", out, "--data", digits / "train.npz", "--eval-data", digits / "calib.npz",
        "--latency-batches", "1", "--latency-batches", "64", "--latency-rounds", "3", *flags,
    )  # fmt: skip


def test_channel_pruning_the_digits_cnn_shrinks_its_graph_and_recovers(cli, digits, tmp_path):
    before = tree_digest(digits)
    out = tmp_path / "pruned"
    r = _prune(cli, digits, out, "--sparsity", "0.5", "--epochs", "8")
    assert r.code == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "torch" and report["importance"] == "taylor"
    assert [row["channels"] for row in report["layers"]] == ["8/16", "16/32", "32/64"]
    assert set(report["latency_ratio"]) == {"1", "64"}
    acc = report["accuracy"]
    assert acc["after_recovery"] > acc["after_pruning"]
    assert acc["after_recovery"] >= acc["before_pruning"] - 0.05
    assert tree_digest(digits) == before  # the input is never modified
    manifest = json.loads((out / "manifest.json").read_text())
    info = manifest["artifact"]["info"]
    assert info["factory"] == "examples.digits:make_model"
    assert info["structure"]["channels"] == {"features.0": 8, "features.2": 16, "head.1": 32}
    # export takes the pruned output with no flags, checks it against the pruned module, and
    # the ONNX holds the smaller shapes
    r = cli("export", out, "-o", tmp_path / "onnx")
    assert r.code == 0, r.stderr
    model = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    assert shapes["features.0.weight"] == (8, 1, 3, 3)
    assert shapes["features.2.weight"] == (16, 8, 3, 3)
    assert shapes["head.1.weight"] == (32, 16 * 16) and shapes["head.3.weight"] == (10, 32)


def test_the_digits_latency_search_records_every_point(cli, digits, tmp_path):
    """An unreachable target on the real engine: exit 1, every point tried in the report."""
    out = tmp_path / "p"
    r = _prune(cli, digits, out, "--target-latency", "0.05", "--epochs", "0")
    assert r.code == 1, r.stderr
    assert "no amount of pruning reaches 0.05x" in r.stderr
    search = json.loads((out / "report.json").read_text())["latency_search"]
    assert search["batch"] == 64 and search["tried"][0]["fraction"] == 0.9


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--heads", "0.5"], "--heads/--ffn prune a transformer encoder"),
        (["--sparsity", "0.5", "--round-to", "0"], "--round-to: Input should be greater"),
    ],
)
def test_bad_channel_flags_exit_2_and_write_nothing(cli, digits, tmp_path, flags, message):
    out = tmp_path / "p"
    r = _prune(cli, digits, out, *flags)
    assert r.code == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()[-1]) < 300
    assert not out.exists()


def test_a_model_with_nothing_prunable_exits_2(cli, tmp_path):
    """Both Linears of tests.models:two_inputs write the model's outputs: nothing to remove."""
    from safetensors.torch import save_file

    from tests.models import two_inputs

    save_file(two_inputs().state_dict(), str(tmp_path / "w.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((8, 6), np.float32),
             y=rng.standard_normal((8, 4), np.float32))  # fmt: skip
    r = cli(
        "prune", "tests.models:two_inputs", "--weights", tmp_path / "w.safetensors",
        "--data", tmp_path / "d.npz", "--output", "sum", "--sparsity", "0.5", "-o", tmp_path / "p",
    )  # fmt: skip
    assert r.code == 2, r.stderr
    assert "nothing prunable" in r.stderr
    assert not (tmp_path / "p").exists()


def test_a_program_or_an_onnx_file_is_refused(cli, tiny, tmp_path, export_tiny):
    assert export_tiny(tmp_path / "onnx").code == 0
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 12), np.float32))
    r = cli("prune", tmp_path / "onnx", "--data", tmp_path / "d.npz", "--sparsity", "0.5",
            "-o", tmp_path / "p")  # fmt: skip
    assert r.code == 2 and "got onnx" in r.stderr and "put prune before export" in r.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_prune_under_torchrun_recovers_in_step(digits, tmp_path):
    """Two processes: rank 0 chooses the plan and shares it, both train the pruned model in
    step (DistributedDataParallel), and the weights end the same on both."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import REPO

    edgesmith = Path(sys.executable).parent / "edgesmith"
    out = tmp_path / "double"
    args = [
        "prune", "examples.digits:make_model", "--weights", str(digits / "model.safetensors"),
        "-o", str(out), "--data", str(digits / "train.npz"),
        "--eval-data", str(digits / "calib.npz"), "--sparsity", "0.5", "--epochs", "3",
        "--latency-batches", "1", "--latency-rounds", "3",
    ]  # fmt: skip
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "--no-python", str(edgesmith), *args],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "distributed: 2 processes (gloo)" in p.stderr
    report = json.loads((out / "report.json").read_text())
    rec = report["recovery"]
    assert rec["world_size"] == 2 and rec["rank_digests"][0] == rec["rank_digests"][1]
    assert [row["channels"] for row in report["layers"]] == ["8/16", "16/32", "32/64"]
    assert report["accuracy"]["after_recovery"] > report["accuracy"]["after_pruning"]
