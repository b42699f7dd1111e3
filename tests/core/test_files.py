"""atomic_dir after a kill -9: what the dead process left is cleared or put back."""

from __future__ import annotations

import os

from edgesmith.toolchain.core.files import atomic_dir

DEAD = 2**22 + 12345  # above the kernel's default pid_max: no process has it


def test_a_dead_process_temp_dir_is_removed_and_a_moved_aside_output_put_back(tmp_path):
    out = tmp_path / "engine"
    stale_tmp = tmp_path / f".engine.tmp-{DEAD}-abc"
    stale_tmp.mkdir()
    (stale_tmp / "half.onnx").write_bytes(b"half")
    old = tmp_path / f".engine.old-{DEAD}"
    old.mkdir()
    (old / "model.onnx").write_bytes(b"whole")  # the previous output, moved aside, then killed
    live_tmp = tmp_path / f".engine.tmp-{os.getppid()}-xyz"  # a live process's: left alone
    live_tmp.mkdir()

    class Stop(Exception):
        pass

    try:
        with atomic_dir(out):
            assert (out / "model.onnx").read_bytes() == b"whole"  # put back before the work
            raise Stop
    except Stop:
        pass
    assert (out / "model.onnx").read_bytes() == b"whole"  # a failed run keeps it
    assert not stale_tmp.exists() and not old.exists() and live_tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["engine", live_tmp.name])
