"""Bad input: exit 2, one line naming the problem, no traceback, nothing left behind."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import tree_digest


def _one_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("edgesmith:")]
    assert lines, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_missing_file(cli, tmp_path):
    r = cli("build", tmp_path / "nope.onnx", "-o", tmp_path / "e")
    assert r.code == 2 and "model not found" in _one_line(r) and "nope.onnx" in r.stderr


def test_truncated_onnx(cli, digits, tmp_path):
    r = cli(
        "export",
        "examples.digits:make_model",
        "--weights",
        digits / "model.safetensors",
        "-o",
        tmp_path / "onnx",
    )
    assert r.code == 0, r.stderr
    data = (tmp_path / "onnx" / "model.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    r = cli("build", tmp_path / "cut.onnx", "-o", tmp_path / "e")
    assert r.code == 2 and "cut.onnx" in _one_line(r)
    assert "not an ONNX model or truncated" in r.stderr or "not a valid ONNX" in r.stderr
    assert not (tmp_path / "e").exists()


def test_non_onnx_file_given_as_onnx(cli, tmp_path):
    (tmp_path / "notes.onnx").write_text("these are not the weights you are looking for\n")
    r = cli("build", tmp_path / "notes.onnx", "-o", tmp_path / "e")
    assert r.code == 2 and "notes.onnx" in _one_line(r)


@pytest.mark.parametrize("name", ["model.pt", "model.bin", "model.pth"])
def test_pickle_checkpoint_refused(cli, tmp_path, name):
    (tmp_path / name).write_bytes(b"\x80\x04not really a pickle")
    r = cli("export", tmp_path / name, "-o", tmp_path / "onnx")
    assert r.code == 2
    line = _one_line(r)
    assert "pickle" in line and "safetensors" in line and ".pt2" in line


def test_pickle_weights_for_a_factory_refused(cli, tmp_path):
    (tmp_path / "w.pt").write_bytes(b"\x80\x04")
    r = cli("export", "tests.models:tiny_mlp", "--weights", tmp_path / "w.pt", "-o", tmp_path / "o")
    assert r.code == 2 and "pickle" in _one_line(r)


def test_weights_that_do_not_match_the_factory(cli, tiny, tmp_path):
    r = cli(
        "export",
        "examples.digits:make_model",
        "--weights",
        tiny / "tiny.safetensors",
        "-o",
        tmp_path / "o",
    )
    assert r.code == 2 and "does not match" in _one_line(r)


def test_unknown_factory(cli, tmp_path):
    r = cli("export", "tests.models:nothing_here", "-o", tmp_path / "o")
    assert r.code == 2 and "has no callable 'nothing_here'" in _one_line(r)


def test_unknown_target_lists_known(cli, export_tiny, tmp_path):
    r = export_tiny(tmp_path / "onnx")
    assert r.code == 0, r.stderr
    r = cli("build", tmp_path / "onnx", "--target", "trt", "-o", tmp_path / "e")
    assert r.code == 2
    line = _one_line(r)
    assert "unknown target 'trt'; available: ort-cpu, trt-gpu" in line


def test_output_equal_to_input_refused(cli, export_tiny, tmp_path):
    r = export_tiny(tmp_path / "onnx")
    assert r.code == 0
    before = tree_digest(tmp_path / "onnx")
    r = cli("build", tmp_path / "onnx", "-o", tmp_path / "onnx")
    assert r.code == 2 and "would overwrite the input" in _one_line(r)
    assert tree_digest(tmp_path / "onnx") == before


def test_bad_flag_values(cli, tiny, tmp_path):
    w = tiny / "tiny.safetensors"
    r = cli(
        "export", "tests.models:tiny_mlp", "--weights", w, "--input", "x:1xa", "-o", tmp_path / "o"
    )
    assert r.code == 2 and "DIMS must be integers" in _one_line(r)
    r = cli(
        "export",
        "tests.models:tiny_mlp",
        "--weights",
        w,
        "--input",
        "x:1x12",
        "--dynamic",
        "y:0",
        "-o",
        tmp_path / "o",
    )
    assert r.code == 2 and "no input named 'y'" in _one_line(r)
    r = cli("bench", tmp_path, "--batch", "one")
    assert r.code == 2


def test_debug_shows_traceback(cli, tmp_path):
    r = cli("--debug", "build", tmp_path / "nope.onnx", "-o", tmp_path / "e")
    assert r.code == 2 and "Traceback" in r.stderr


def test_interrupt_leaves_nothing(cli, export_tiny, tmp_path, monkeypatch):
    """Ctrl-C in the middle of a stage: exit 130, no output directory, no temp directory."""
    import edgesmith.toolchain.export.checks as export_checks

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_checks, "check_against_source", interrupted)
    r = export_tiny(tmp_path / "onnx")
    assert r.code == 128 + signal.SIGINT
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_output(cli, export_tiny, tiny, tmp_path, monkeypatch):
    """An existing output is replaced only by a complete new one."""
    r = export_tiny(tmp_path / "onnx")
    assert r.code == 0
    before = tree_digest(tmp_path / "onnx")
    r = cli(
        "export",
        "tests.models:tiny_mlp",
        "--weights",
        tiny / "tiny.safetensors",
        "--opset",
        "17",
        "--atol",
        "1e-15",
        "--rtol",
        "0",
        "-o",
        tmp_path / "onnx",
    )
    assert r.code == 1
    assert tree_digest(tmp_path / "onnx") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


def test_ctrl_c_inside_an_import_is_an_interruption_not_a_bug(capsys):
    """Ctrl-C landing in a lazily imported module surfaces as whatever the half-run code
    raised next, with the KeyboardInterrupt as its context: exit 130, not an internal error."""
    import typer

    from edgesmith.toolchain.cli._errors import INTERRUPTED, INTERRUPTED_LINE, guarded

    @guarded
    def work():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise TypeError("half-initialised module") from None

    @guarded
    def bug():
        raise TypeError("a real bug")

    with pytest.raises(typer.Exit) as e:
        work()
    assert e.value.exit_code == INTERRUPTED
    assert INTERRUPTED_LINE in capsys.readouterr().err
    with pytest.raises(typer.Exit) as e:
        bug()
    assert e.value.exit_code == 70


def test_version_and_debug_from_the_environment(cli, tmp_path, monkeypatch):
    from importlib import metadata

    r = cli("--version")
    assert r.code == 0 and r.stdout.strip() == f"edgesmith {metadata.version('edgesmith')}"
    monkeypatch.setenv("EDGESMITH_DEBUG", "1")
    r = cli("export", tmp_path / "missing.onnx", "-o", tmp_path / "out")
    assert r.code == 2 and "Traceback" in r.stderr
    monkeypatch.setenv("EDGESMITH_DEBUG", "0")
    r = cli("export", tmp_path / "missing.onnx", "-o", tmp_path / "out")
    assert r.code == 2 and "Traceback" not in r.stderr
