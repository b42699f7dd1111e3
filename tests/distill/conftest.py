"""Fixtures of the distillation tests: the digits teacher, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """examples/digits.py's teacher and splits (15 epochs: ~98% on the held-out split)."""
    import torch

    from examples import digits

    out = tmp_path_factory.mktemp("digits-teacher")
    before = torch.get_num_threads()
    # digits.main asks for 2 threads; on a shared 2-core box one is several times faster.
    set_threads, torch.set_num_threads = torch.set_num_threads, lambda _n: None
    set_threads(1)
    try:
        digits.main(["--out", str(out), "--epochs", "15"])
    finally:
        torch.set_num_threads = set_threads
        set_threads(before)
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these models are tiny, and 2-core CI boxes are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
