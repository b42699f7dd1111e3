"""Hostile input (issue 11): damaged archives and non-finite data exit 2 with one line naming
the file, no traceback, nothing written, the inputs unchanged."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, tree_digest


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """tests.models:tiny_mlp exported once (input x: [batch, 12] float32)."""
    import torch
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from tests.models import tiny_mlp
    from toolchain.cli.app import make_app

    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    save_file(tiny_mlp().state_dict(), str(root / "tiny.safetensors"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the factory resolves from the repository root
        r = CliRunner().invoke(make_app(), [
            "export", "tests.models:tiny_mlp", "--weights", str(root / "tiny.safetensors"),
            "-o", str(root / "onnx"),
        ])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    return root / "onnx"


def _good_npz() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x=rng.standard_normal((8, 12)).astype(np.float32), labels=np.arange(8) % 4)
    return buf.getvalue()


def _zip_with(name: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, payload)
    return buf.getvalue()


class _Boom:
    def __reduce__(self):  # would create a file if it were ever unpickled
        return (Path("/tmp/edgesmith-hostile-ran").touch, ())


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


GOOD = _good_npz()
NPZ_CASES = {
    "empty": (b"", "not a .npz archive"),
    "text": (b"x,y\n1,2\n", "not a .npz archive"),
    "truncated": (GOOD[: len(GOOD) // 2], "not a .npz archive"),
    "bit-flipped": (_flipped(GOOD, 80), "not a readable .npz"),
    "a pickle": (pickle.dumps(_Boom()), "not a .npz archive"),
    "a pickle inside": (_zip_with("x.npy", pickle.dumps(_Boom())), "not a readable .npz"),
    "object array": (None, "not a readable .npz"),
    "a .npy named .npz": (None, "not a .npz archive"),
}


def _npz_bytes(case: str) -> bytes:
    data, _ = NPZ_CASES[case]
    if data is not None:
        return data
    buf = io.BytesIO()
    if case == "object array":
        np.savez(buf, x=np.array([{"a": 1}] * 8, dtype=object))
    else:
        np.save(buf, np.zeros((8, 12), np.float32))
    return buf.getvalue()


def _check(r, path: Path, message: str, out: Path) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("edgesmith:")]
    assert r.code == 2, r.stderr
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert path.name in lines[0] and message in lines[0], lines[0]
    assert not out.exists()
    assert not Path("/tmp/edgesmith-hostile-ran").exists()


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_a_damaged_npz_is_bad_input(cli, tiny_onnx, tmp_path, case):
    data = tmp_path / "data.npz"
    data.write_bytes(_npz_bytes(case))
    before = tree_digest(tmp_path)
    out = tmp_path / "report"
    r = cli("validate", tiny_onnx, "--reference", tiny_onnx, "--data", data, "-o", out)
    _check(r, data, NPZ_CASES[case][1], out)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("command", ["validate", "quantize"])
def test_non_finite_data_is_refused_before_anything_runs(cli, tiny_onnx, tmp_path, value,
                                                         command):  # fmt: skip
    x = np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32)
    x[5, 3] = value
    data = tmp_path / "data.npz"
    np.savez(data, x=x, labels=np.arange(8) % 4)
    out = tmp_path / "out"
    if command == "validate":
        r = cli("validate", tiny_onnx, "--reference", tiny_onnx, "--data", data, "-o", out)
    else:
        r = cli("quantize", tiny_onnx, "--calibration", data, "-o", out)
    _check(r, data, "holds NaN or Inf (first at sample 5)", out)


def _pt2_bytes(case: str) -> bytes:
    import torch

    class Double(torch.nn.Module):
        def forward(self, x):
            return x * 2

    buf = io.BytesIO()
    torch.export.save(torch.export.export(Double(), (torch.ones(2, 3),)), buf)
    good = buf.getvalue()
    return {
        "garbage": b"\x00" * 64,
        "truncated": good[: len(good) // 2],
        "zip of pickles": _zip_with("archive/data.pkl", pickle.dumps(_Boom())),
    }[case]


@pytest.mark.parametrize("case", ["garbage", "truncated", "zip of pickles"])
def test_a_pt2_that_torch_did_not_write_is_bad_input(cli, tmp_path, case):
    src = tmp_path / "model.pt2"
    src.write_bytes(_pt2_bytes(case))
    out = tmp_path / "onnx"
    _check(cli("export", src, "-o", out), src, "not a torch.export program", out)


def test_a_crafted_pt2_prints_no_traceback_from_torch(tmp_path):
    """torch.export.load logs its legacy reader's traceback (outside the CLI's streams, so in a
    process of its own): the archive is refused before torch reads it."""
    import subprocess
    import sys

    src = tmp_path / "model.pt2"
    src.write_bytes(_pt2_bytes("zip of pickles"))
    r = subprocess.run(
        [sys.executable, "-c", "from toolchain.cli.app import main; main()",
         "export", str(src), "-o", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists() and not Path("/tmp/edgesmith-hostile-ran").exists()


@pytest.fixture(scope="module")
def tiny_engine(tiny_onnx, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from toolchain.cli.app import make_app

    out = tmp_path_factory.mktemp("engine") / "engine"
    r = CliRunner().invoke(make_app(), ["build", str(tiny_onnx), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    return out


def _edit_weights(engine: Path) -> str:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(engine / "model.onnx"))
    init = m.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(m, str(engine / "model.onnx"))
    return "model.onnx: was changed"


def _swap_manifest(engine: Path) -> str:
    """The manifest of another engine (the same model built with other options)."""
    import json

    m = json.loads((engine / "manifest.json").read_text())
    m["files"] = {k: "0" * 64 for k in m["files"]}
    (engine / "manifest.json").write_text(json.dumps(m))
    return "was changed"


EDITS = {
    "edited model": _edit_weights,
    "engine.json removed": lambda e: (e / "engine.json").unlink() or "engine.json: is missing",
    "a file added": lambda e: (e / "extra.onnx").write_bytes(b"x") and "extra.onnx: was added",
    "another engine's manifest": _swap_manifest,
}


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("command", ["validate", "bench", "inspect", "quantize"])
def test_an_engine_edited_after_its_manifest_is_refused(cli, tiny_onnx, tiny_engine, tmp_path,
                                                        edit, command):  # fmt: skip
    import shutil

    engine = shutil.copytree(tiny_engine, tmp_path / "engine")
    assert cli("inspect", engine).code == 0
    message = EDITS[edit](engine)
    data = tmp_path / "data.npz"
    data.write_bytes(GOOD)
    out = tmp_path / "out"
    args = {
        "validate": ("validate", engine, "--reference", tiny_onnx, "--data", data, "-o", out),
        "bench": ("bench", engine, "-o", out),
        "inspect": ("inspect", engine),
        "quantize": ("quantize", engine, "--calibration", data, "-o", out),
    }[command]
    r = cli(*args)
    _check(r, engine, message, out)
    assert "since manifest.json was written" in r.stderr


def test_inspect_gives_the_integrity_verdict(cli, tiny_engine):
    r = cli("inspect", tiny_engine)
    assert r.code == 0 and "files match manifest.json" in r.stdout, r.stdout


def test_an_edited_stage_output_is_made_again_not_reused(cli, tiny, tmp_path):
    """A recipe's cached stage whose files were edited runs again (the edit does not ship)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "r"\nout = "{tmp_path / "run"}"\n[source]\nmodel = "tests.models:tiny_mlp"\n'
        f'weights = "{tiny / "tiny.safetensors"}"\n[[stages]]\nkind = "export"\n'
        '[[stages]]\nkind = "build"\n'
    )
    assert cli("run", recipe).code == 0
    engine = next((tmp_path / "run").glob("1-*"))
    original = (engine / "model.onnx").read_bytes()
    _edit_weights(engine)
    r = cli("run", recipe)
    assert r.code == 0, r.stderr
    assert "[1] build: running" in r.stderr + r.stdout
    assert (engine / "model.onnx").read_bytes() == original


@pytest.mark.parametrize("name", ["model.onnx", "engine.plan", "weights.safetensors"])
def test_an_output_named_like_a_file_is_refused(cli, tiny, tmp_path, name):
    """Every output is a directory: `-o model.onnx` would make a directory of that name."""
    out = tmp_path / name
    r = cli("export", "tests.models:tiny_mlp", "--weights", tiny / "tiny.safetensors", "-o", out)
    _check(r, out, "edgesmith writes a directory", out)
    assert f"-o {tmp_path / Path(name).stem}" in r.stderr
    assert list(tmp_path.iterdir()) == []
