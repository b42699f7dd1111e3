"""Concurrent runs (issue 11): two edgesmith processes on one recipe, as `make -j` starts them,
both end with a whole output; neither writes a stage directory the other is writing."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgesmith.toolchain.core.artifact import integrity_problems
from tests.conftest import REPO

CLI = [sys.executable, "-c", "from edgesmith.toolchain.cli.app import main; main()"]


def test_two_runs_of_one_recipe_at_once(tiny, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "r"\nout = "{tmp_path / "run"}"\n[source]\nmodel = "tests.models:tiny_mlp"\n'
        f'weights = "{tiny / "tiny.safetensors"}"\n[[stages]]\nkind = "export"\n'
        '[[stages]]\nkind = "build"\n'
    )
    procs = [
        subprocess.Popen(
            [*CLI, "run", str(recipe)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    logs = "\n".join(err for _, err in results)
    # each stage was made once; the other process found it made (or waited for it)
    assert logs.count("[0] export: running") == 1 and logs.count("[1] build: running") == 1
    assert logs.count("cached, nothing to do") == 2
    for stage in sorted((tmp_path / "run").iterdir()):
        if stage.name.startswith("."):
            continue
        manifest = json.loads((stage / "manifest.json").read_text())
        assert integrity_problems(stage, manifest) == []
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]


# --- a machine that refuses to write: full disk, read-only folder -----------------------


def _export(cli, tiny, out):
    return cli("export", "tests.models:tiny_mlp", "--weights", tiny / "tiny.safetensors", "-o", out)


def _refused(r, out) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("edgesmith:")]
    assert r.code == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_a_write_the_machine_refuses_is_one_line_and_nothing_left(cli, tiny, tmp_path,
                                                                  monkeypatch, err):  # fmt: skip
    """An injected writer: the manifest's write fails as a full disk or a read-only file
    system would make it fail, half-way through the stage's output."""
    import edgesmith.toolchain.core.artifact as artifact

    def refuse(path, obj):
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(artifact, "write_json", refuse)
    r = _export(cli, tiny, tmp_path / "onnx")
    _refused(r, tmp_path / "onnx")
    assert os.strerror(err) in r.stderr


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the injected cases run")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.mark.parametrize("options", ["size=4k", "ro"])
def test_a_real_full_or_read_only_file_system(cli, tiny, tmp_path, options):
    """A 4 KiB tmpfs fills up during the export; a read-only one refuses the first write."""
    with _tmpfs(tmp_path / "fs", options) as fs:
        r = _export(cli, tiny, fs / "onnx")
        _refused(r, fs / "onnx")


# --- interruptions: kill -9 and Ctrl-C at random points of long work -------------------


@pytest.fixture(scope="module")
def digits_onnx(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int") / "onnx"
    r = subprocess.run([*CLI, "export", "examples.digits:make_model", "--weights",
                        str(digits / "model.safetensors"), "-o", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def _operation(name: str, digits: Path, onnx: Path) -> list[str]:
    data = {k: str(digits / f"{k}.npz") for k in ("train", "calib", "test")}
    return {
        "export": ["export", "examples.digits:make_model", "--weights",
                   str(digits / "model.safetensors")],
        "calibration": ["quantize", str(onnx), "--calibration", data["calib"]],
        "fallback loop": ["quantize", str(onnx), "--calibration", data["calib"], "--eval",
                          data["test"], "--metric", "accuracy", "--max-drop", "0"],
        "distillation epoch": ["distill", "--teacher", "examples.digits:make_model",
                               "--weights", str(digits / "model.safetensors"), "--student",
                               "examples.digits_student:make_student", "--data", data["train"],
                               "--epochs", "40", "--threads", "1"],
        "engine build": ["build", str(onnx)],
    }[name]  # fmt: skip


def _interrupt(args: list[str], sig: int | None, delay: float) -> tuple[int, str, float]:
    """Start `edgesmith ARGS`, wait until its stage is running, then `delay` s more, send
    `sig` (None: let it finish); returns the exit code, stderr and the seconds it ran from
    the stage's start."""
    import select
    import time

    p = subprocess.Popen([*CLI, *args], cwd=REPO, stderr=subprocess.PIPE, text=True,
                         stdout=subprocess.DEVNULL)  # fmt: skip
    err, deadline = "", time.monotonic() + 300
    while "running →" not in err and p.poll() is None and time.monotonic() < deadline:
        if select.select([p.stderr], [], [], 1.0)[0]:
            err += p.stderr.readline()
    started = time.monotonic()
    if sig is not None:
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(sig)
    err += p.stderr.read()
    code = p.wait(timeout=300)
    return code, err, time.monotonic() - started


DURATIONS: dict[str, float] = {}  # operation → seconds of an uninterrupted stage


def _duration(operation: str, args: list[str], tmp: Path) -> float:
    if operation not in DURATIONS:
        code, err, seconds = _interrupt([*args[:-1], str(tmp / "whole")], None, 0)
        assert code in (0, 1), err[-1500:]
        DURATIONS[operation] = seconds
    return DURATIONS[operation]


OPERATIONS = ["export", "calibration", "fallback loop", "distillation epoch", "engine build"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "sigint"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_an_interrupted_run_leaves_nothing_partial_and_reruns(digits, digits_onnx, tmp_path,
                                                              operation, sig):  # fmt: skip
    import random

    out = tmp_path / "out"
    args = [*_operation(operation, digits, digits_onnx), "-o", str(out)]
    # a seeded random point of the stage's own duration
    delay = random.Random(f"{operation}-{sig}").uniform(0.05, 0.8) * _duration(
        operation, args, tmp_path
    )
    code, err, _ = _interrupt(args, sig, delay)
    if code == 0 or out.exists():  # it finished (or renamed its output) before the signal
        assert code in (0, -signal.SIGKILL, 130), (code, err[-1500:])
        assert integrity_problems(out, json.loads((out / "manifest.json").read_text())) == []
    elif sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, (code, err[-1500:])
    else:
        lines = [ln for ln in err.splitlines() if ln.startswith("edgesmith:")]
        assert code == 130 and lines == ["edgesmith: interrupted; no partial output was left"], (
            code, err[-1500:])  # fmt: skip
        assert "Traceback" not in err and not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    rerun = args + (["--resume"] if operation == "distillation epoch" else [])
    r = subprocess.run([*CLI, *rerun], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr[-1500:]  # 1: a gate
    assert integrity_problems(out, json.loads((out / "manifest.json").read_text())) == []
    # what the killed process left beside the output is gone after the rerun
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
