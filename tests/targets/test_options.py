"""Build options are declared by each target (OPTIONS: targets/base.py Option), checked in one
place before a build does any work, and listed by `edgesmith targets --options NAME`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesmith.targets.base import Option, check_options, option_values
from edgesmith.targets.ort_cpu import OrtCpu
from edgesmith.targets.ort_gpu import OrtGpu
from edgesmith.targets.tensorrt_gpu import TrtGpu
from edgesmith.toolchain.core.errors import InvalidInput
from tests.targets import trt_models

TARGETS = (OrtCpu, TrtGpu, OrtGpu)


@pytest.fixture
def model(tmp_path) -> Path:
    return trt_models.conv_net(tmp_path / "m.onnx")


def test_each_target_declares_its_options_once_with_help():
    for target in TARGETS:
        names = [o.name for o in target.OPTIONS]
        assert names and len(names) == len(set(names)), target.name
        for o in target.OPTIONS:
            assert isinstance(o, Option)
            assert len(o.help.split()) >= 4, (target.name, o.name)  # says what, not the name
            assert option_values(target, {})[o.name] == o.default


def test_checked_values_are_filled_in_and_check_again_unchanged():
    values = option_values(OrtCpu, {"threads": 2})
    assert values == {
        "opt_level": "extended", "ort_format": False, "attention": "auto", "threads": 2
    }
    assert option_values(OrtCpu, values) == values  # the stage checks, then the target again
    given = {"provider": "tensorrt", "max_batch": 4, "fp32_layers": "a, b"}
    assert option_values(OrtGpu, option_values(OrtGpu, given)) == option_values(OrtGpu, given)


@pytest.mark.parametrize(
    "value, ok",
    [("a", True), (["a", "b"], True), (("a",), True), (3, False), (["a", 3], False),
     (None, False)],
)  # fmt: skip
def test_types_and_unions(value, ok):
    opt = Option("names", str | list[str], (), "names of things, listed or comma-separated")
    if ok:
        assert check_options("t", (opt,), {"names": value}) == {"names": value}
    else:
        with pytest.raises(InvalidInput, match=r"t option names: expected str \| list\[str\]"):
            check_options("t", (opt,), {"names": value})


def test_bool_is_not_an_int_and_int_is_not_a_bool():
    n = Option("n", int, None, "how many of something", minimum=1)
    flag = Option("flag", bool, False, "whether to do something")
    with pytest.raises(InvalidInput, match="n: expected int >= 1, got True"):
        check_options("t", (n, flag), {"n": True})
    with pytest.raises(InvalidInput, match="flag: expected bool, got 1"):
        check_options("t", (n, flag), {"flag": 1})
    assert check_options("t", (n, flag), {"n": 3}) == {"n": 3, "flag": False}


def test_unknown_key_names_the_key_the_target_and_what_it_takes():
    with pytest.raises(InvalidInput) as e:
        option_values(OrtCpu, {"opt_levle": "basic"})
    assert str(e.value) == (
        "unknown ort-cpu option 'opt_levle' (did you mean 'opt_level'?); "
        "ort-cpu takes opt_level, ort_format, attention, threads"
    )


def _one_line(stderr: str) -> str:
    """The error: one line, no traceback (beside the stage's progress line, if any)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("edgesmith:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_unknown_key_through_the_cli_exits_2_in_one_line(cli, model, tmp_path):
    r = cli("build", model, "-t", "ort-cpu", "--option", "opt_levle=basic", "-o", tmp_path / "e")
    assert r.code == 2
    line = _one_line(r.stderr)
    assert "'opt_levle' (did you mean 'opt_level'?)" in line
    assert "ort-cpu takes opt_level, ort_format, attention, threads" in line
    assert not (tmp_path / "e").exists()


def test_options_are_checked_before_the_target_is_asked_if_it_can_build(cli, model, tmp_path):
    """A GPU target's option typo is exit 2 on a machine without the GPU, not exit 3."""
    r = cli("build", model, "-t", "trt-gpu", "--option", "fp61=true", "-o", tmp_path / "e")
    assert r.code == 2
    assert "unknown trt-gpu option 'fp61' (did you mean 'fp16'?)" in _one_line(r.stderr)


@pytest.mark.parametrize(
    "target, option, words",
    [
        ("ort-cpu", "threads=two", "ort-cpu option threads: expected int >= 1, got 'two'"),
        ("ort-cpu", "ort_format=1", "ort-cpu option ort_format: expected bool, got 1"),
        ("ort-cpu", "opt_level=max", "opt_level: expected one of disable, basic, extended, all"),
        ("trt-gpu", "max_batch=[4]", "trt-gpu option max_batch: expected int >= 1, got [4]"),
        ("ort-gpu", "device_id=-1", "ort-gpu option device_id: expected int >= 0, got -1"),
    ],
)
def test_wrong_type_through_the_cli_exits_2_in_one_line(cli, model, tmp_path, target, option,
                                                         words):  # fmt: skip
    r = cli("build", model, "-t", target, "--option", option, "-o", tmp_path / "e")
    assert r.code == 2 and words in _one_line(r.stderr)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_targets_options_prints_every_declared_key(cli, target):
    r = cli("targets", "--options", target.name)
    assert r.code == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["key", "type", "default", "help"]
    by_key = {row.split()[0]: row for row in rows}
    assert list(by_key) == [o.name for o in target.OPTIONS]
    for o in target.OPTIONS:
        row = by_key[o.name]
        assert o.type_label() in row and o.default_label() in row and row.endswith(o.help)


def test_targets_options_of_an_unknown_target_exits_2(cli):
    r = cli("targets", "--options", "trt-cpu")
    assert r.code == 2
    assert "unknown target 'trt-cpu'; available: ort-cpu, trt-gpu, ort-gpu" in _one_line(r.stderr)


def test_targets_without_the_flag_lists_the_targets(cli):
    r = cli("targets")
    assert r.code == 0 and [line.split()[0] for line in r.stdout.splitlines()] == [
        "ort-cpu", "trt-gpu", "ort-gpu"
    ]  # fmt: skip


def test_a_toy_targets_declared_option_reaches_its_build(cli, model, tmp_path, monkeypatch):
    import numpy as np

    from edgesmith.toolchain.core import registry
    from edgesmith.toolchain.core.artifact import Format, ModelArtifact
    from tests.targets.toy_target import Toy

    monkeypatch.setitem(registry.TARGETS, "toy", "tests.targets.toy_target:Toy")
    r = cli("targets", "--options", "toy")
    assert r.code == 0 and r.stdout.splitlines()[1].split()[:2] == ["level", "str"]
    r = cli("build", model, "-t", "toy", "--option", "level=basic", "-o", tmp_path / "basic")
    assert r.code == 0, r.stderr
    assert json.loads((tmp_path / "basic" / "engine.json").read_text())["level"] == "basic"
    r = cli("build", model, "-t", "toy", "-o", tmp_path / "default")
    assert r.code == 0, r.stderr
    assert json.loads((tmp_path / "default" / "engine.json").read_text())["level"] == "disable"
    r = cli("build", model, "-t", "toy", "--option", "level=fast", "-o", tmp_path / "bad")
    assert r.code == 2 and "toy option level: expected one of disable" in _one_line(r.stderr)
    runner = Toy().load(ModelArtifact(tmp_path / "basic", Format.engine))
    x = np.zeros((2, 3, 8, 8), np.float32)
    assert runner.infer({"x": x})["y"].shape == (2, 5)
