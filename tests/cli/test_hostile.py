"""Hostile input (issue 11): damaged archives and non-finite data exit 2 with one line naming
the file, no traceback, nothing written, the inputs unchanged."""

from __future__ import annotations

import io
import os
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

    from edgesmith.toolchain.cli.app import make_app
    from tests.models import tiny_mlp

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
        [sys.executable, "-c", "from edgesmith.toolchain.cli.app import main; main()",
         "export", str(src), "-o", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists() and not Path("/tmp/edgesmith-hostile-ran").exists()


@pytest.fixture(scope="module")
def tiny_engine(tiny_onnx, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from edgesmith.toolchain.cli.app import make_app

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


# --- the suite: every kind of input edgesmith reads, each case under the same invariants ---
# A case writes its hostile input under `inp` (a folder checked byte for byte afterwards) and
# returns (the command's arguments, the file or flag the one-line message must name).


def _onnx_bytes(tiny_onnx: Path) -> bytes:
    return (tiny_onnx / "model.onnx").read_bytes()


def _external(tiny_onnx: Path, inp: Path, location: str) -> Path:
    """The tiny model with its weights in external data at `location` (relative to it)."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    m = onnx.load(str(tiny_onnx / "model.onnx"))
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="w.bin",
                                   size_threshold=0)  # fmt: skip
    onnx.save(m, str(inp / "model.onnx"))  # writes w.bin beside it
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, str(inp / "model.onnx"))
    return inp / "model.onnx"


def _invalid_graph(inp: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["nowhere"], ["y"])  # reads a tensor nothing makes
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    path = inp / "model.onnx"
    onnx.save(helper.make_model(g), str(path))
    return path


def _onnx_case(kind: str):
    def make(ctx, inp):
        path = inp / "model.onnx"
        raw = _onnx_bytes(ctx["onnx"])
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated":
            path.write_bytes(raw[: len(raw) // 3])
        elif kind == "bit-flipped":
            path.write_bytes(bytes(b ^ 0xFF for b in raw[:32]) + raw[32:])
        elif kind == "invalid graph":
            _invalid_graph(inp)
        elif kind == "external data missing":
            _external(ctx["onnx"], inp, "w.bin")
            (inp / "w.bin").unlink()
        elif kind == "external data too short":
            _external(ctx["onnx"], inp, "w.bin")
            (inp / "w.bin").write_bytes((inp / "w.bin").read_bytes()[:10])
        elif kind == "external data outside the folder":
            _external(ctx["onnx"], inp, "../secret.bin")
        elif kind == "external data through a symlink":
            _external(ctx["onnx"], inp, "link.bin")
            (inp / "link.bin").symlink_to("/etc/hostname")
        return ["build", path], path

    return make


def _weights_case(kind: str):
    def make(ctx, inp):
        import torch
        from safetensors.torch import save_file

        from tests.models import tiny_mlp

        state = tiny_mlp().state_dict()
        path = inp / ("w.safetensors" if kind != "pickle .ckpt" else "w.ckpt")
        if kind.startswith("pickle"):
            path.write_bytes(pickle.dumps(_Boom()))
        elif kind == "wrong shapes":
            state["net.0.weight"] = torch.zeros(16, 13)
            save_file(state, str(path))
        elif kind == "wrong dtypes":
            save_file({k: v.to(torch.int32) for k, v in state.items()}, str(path))
        elif kind == "a header that lies about its length":
            save_file(state, str(path))
            raw = path.read_bytes()
            path.write_bytes((1 << 40).to_bytes(8, "little") + raw[8:])
        elif kind == "a header that is not JSON":
            path.write_bytes((16).to_bytes(8, "little") + b"{not json at all" + b"\0" * 64)
        return ["export", "tests.models:tiny_mlp", "--weights", path], path

    return make


def _data_case(kind: str):
    def make(ctx, inp):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, 12)).astype(np.float32)
        path = inp / "data.npz"
        labels = np.arange(8) % 4
        extra: list = []
        if kind == "no arrays":
            np.savez(path)
        elif kind == "no samples":
            np.savez(path, x=x[:0])
        elif kind == "mismatched counts":
            np.savez(path, x=x, labels=labels[:5])
        elif kind == "labels out of range":
            np.savez(path, x=x, labels=labels + 6)
        elif kind == "negative labels":
            np.savez(path, x=x, labels=labels - 2)
        elif kind == "float labels":
            np.savez(path, x=x, labels=labels.astype(np.float32))
        elif kind == "wrong dtype":
            np.savez(path, x=x.astype(np.float64))
        elif kind == "wrong rank":
            np.savez(path, x=x[:, None, :])
        elif kind == "wrong width":
            np.savez(path, x=x[:, :7])
        elif kind == "text in another encoding":
            path = inp / "data.txt"
            path.write_bytes("Grüße aus Köln\nnaïve café\n".encode("utf-16"))
            extra = ["--tokenizer", ctx["minilm"]]
        elif kind == "text of blank lines":
            path = inp / "data.txt"
            path.write_text("\n  \n\n")
            extra = ["--tokenizer", ctx["minilm"]]
        elif kind == "jsonl without text":
            path = inp / "data.jsonl"
            path.write_text('{"label": 1}\n')
            extra = ["--tokenizer", ctx["minilm"]]
        args = ["validate", ctx["onnx"], "--reference", ctx["onnx"], "--data", path, *extra]
        return args, path

    return make


def _recipe_case(kind: str):
    def make(ctx, inp):
        path = inp / "r.toml"
        src = f'[source]\nmodel = "{ctx["onnx"] / "model.onnx"}"\n'
        head = 'name = "r"\nout = "OUT"\n'
        stage = "[[stages]]\nkind = "
        body = {
            "syntax": 'name = "r"\n[[stages]\nkind = "build"\n',
            "unknown field": f'{head}{src}{stage}"build"\nspeed = 3\n',
            "wrong type": f'{head}{src}{stage}"build"\nthreads = "two"\n',
            "unknown stage kind": f'{head}{src}{stage}"shrink"\n',
            "a source that does not exist": f'{head}[source]\nmodel = "no.onnx"\n{stage}"build"\n',
            "data that does not exist": f'{head}{src}{stage}"validate"\ndata = "nope.npz"\n',
        }[kind]  # fmt: skip
        path.write_text(body.replace("OUT", str(ctx["out"])))
        return ["run", path], path

    return make


def _flag_case(kind: str):
    def make(ctx, inp):
        data = inp / "data.npz"
        data.write_bytes(GOOD)
        onnx_, gate = ctx["onnx"], ["validate", ctx["onnx"], "--reference", ctx["onnx"]]
        args = {
            "a negative budget": [*gate, "--data", data, "--max-drop", "-0.1"],
            "a zero batch size": [*gate, "--data", data, "--batch-size", "0"],
            "a negative batch size": [*gate, "--data", data, "--batch-size", "-4"],
            "zero threads": ["build", onnx_, "--threads", "0"],
            "negative threads": ["build", onnx_, "--threads", "-2"],
            "more samples than the data": ["quantize", onnx_, "--calibration", data,
                                           "--limit", "1000"],
            "a zero-iteration bench": ["bench", onnx_, "--iterations", "0"],
            "a negative sparsity": ["prune", "tests.models:tiny_mlp", "--weights",
                                    ctx["weights"], "--data", data, "--sparsity", "-0.5"],
        }[kind]  # fmt: skip
        flag = {
            "a negative budget": "max-drop",
            "a zero batch size": "batch-size",
            "a negative batch size": "batch-size",
            "zero threads": "threads",
            "negative threads": "threads",
            "more samples than the data": "limit",
            "a zero-iteration bench": "iterations",
            "a negative sparsity": "sparsity",
        }[kind]
        return args, Path(flag)  # fmt: skip

    return make


SUITE = {
    **{f"onnx: {k}": _onnx_case(k) for k in (
        "empty", "truncated", "bit-flipped", "invalid graph", "external data missing",
        "external data too short", "external data outside the folder",
        "external data through a symlink",
    )},
    **{f"weights: {k}": _weights_case(k) for k in (
        "pickle .safetensors", "pickle .ckpt", "wrong shapes", "wrong dtypes",
        "a header that lies about its length", "a header that is not JSON",
    )},
    **{f"data: {k}": _data_case(k) for k in (
        "no arrays", "no samples", "mismatched counts", "labels out of range",
        "negative labels", "float labels", "wrong dtype", "wrong rank", "wrong width",
        "text in another encoding", "text of blank lines", "jsonl without text",
    )},
    **{f"recipe: {k}": _recipe_case(k) for k in (
        "syntax", "unknown field", "wrong type", "unknown stage kind",
        "a source that does not exist", "data that does not exist",
    )},
    **{f"flag: {k}": _flag_case(k) for k in (
        "a negative budget", "a zero batch size", "a negative batch size", "zero threads",
        "negative threads", "more samples than the data", "a zero-iteration bench",
        "a negative sparsity",
    )},
}  # fmt: skip


@pytest.mark.parametrize("case", list(SUITE))
def test_hostile_input(cli, tiny_onnx, tiny, minilm, tmp_path, case):
    """Exit 2; one line naming the file (or the flag) and no traceback; no output written;
    every input byte-identical afterwards; nothing from the input executed."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    ctx = {"onnx": tiny_onnx, "minilm": minilm, "out": out, "weights": tiny / "tiny.safetensors"}
    args, named = SUITE[case](ctx, inp)
    before = tree_digest(inp), tree_digest(tiny_onnx)
    extra = [] if args[0] == "run" else ["-o", out]
    r = cli(*args, *extra)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("edgesmith:")]
    assert r.code == 2, (r.code, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-2000:]
    assert named.name in lines[0], lines[0]  # the file, or the flag
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert (tree_digest(inp), tree_digest(tiny_onnx)) == before
    assert not Path("/tmp/edgesmith-hostile-ran").exists()


# --- fuzzing: mutated bytes of a valid ONNX model and a valid .npz -------------------------


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for at, xor in edits:
        b[at % len(b)] ^= xor
    return bytes(b[:cut] if cut is not None else b)


def _fuzz_invariants(r, out: Path, inputs: Path, before) -> None:
    """Either it worked (a whole output), or exit 2 with one line and nothing written; never
    an internal error, a traceback or a changed input."""
    assert r.code in (0, 2), (r.code, r.stderr[-1500:])
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-1500:]
    if r.code == 0:
        assert (out / "manifest.json").is_file()
    else:
        assert not out.exists()
        assert len([ln for ln in r.stderr.splitlines() if ln.startswith("edgesmith:")]) == 1
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]
    assert tree_digest(inputs) == before


# make test: 30 fixed examples each; EDGESMITH_FUZZ_EXAMPLES=N: N random ones
FUZZ_EXAMPLES = int(os.environ.get("EDGESMITH_FUZZ_EXAMPLES", "30"))
FUZZ_FIXED = "EDGESMITH_FUZZ_EXAMPLES" not in os.environ


def _fuzz(kind: str):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), max_size=6)
    cut = st.one_of(st.none(), st.integers(0, 4096))

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=FUZZ_FIXED,
              suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(edits=edits, cut=cut)
    def check(cli, tiny_onnx, tmp_path_factory, edits, cut):
        d = tmp_path_factory.mktemp("fuzz")
        inputs = d / "in"
        inputs.mkdir()
        out = d / "out"
        if kind == "onnx":
            src = inputs / "model.onnx"
            src.write_bytes(_mutate(_onnx_bytes(tiny_onnx), edits, cut))
            args = ("build", src, "-o", out)
        else:
            src = inputs / "data.npz"
            src.write_bytes(_mutate(GOOD, edits, cut))
            args = ("validate", tiny_onnx, "--reference", tiny_onnx, "--data", src, "-o", out)
        before = tree_digest(inputs)
        _fuzz_invariants(cli(*args), out, inputs, before)

    return check


@pytest.mark.parametrize("kind", ["onnx", "npz"])
def test_fuzzed_bytes_never_crash_or_leave_partial_output(cli, tiny_onnx, tmp_path_factory, kind):
    _fuzz(kind)(cli, tiny_onnx, tmp_path_factory)
