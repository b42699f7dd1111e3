"""trt-gpu's build and load path, end to end: on the fake TensorRT in make test (every test
here), and the same tests on a real GPU with TensorRT under `make test-gpu` (the `gpu` ones).

The fake (fake_tensorrt.py) plays a dumped TensorRT API (10.x by default, 11 where a test says
so): a name or keyword the real bindings of that version lack fails here as it would there.
"""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from edgesmith.targets.base import ENGINE_CONFIG, BuildConfig
from edgesmith.targets.tensorrt_config import tensor_precision
from edgesmith.targets.tensorrt_gpu import TrtGpu
from edgesmith.toolchain.core.artifact import Format, ModelArtifact, Precision
from edgesmith.toolchain.core.errors import InvalidInput
from tests.targets import trt_models

REASON = TrtGpu().unavailable_reason()


@pytest.fixture(params=["fake10", "fake11", pytest.param("gpu", marks=pytest.mark.gpu)])
def trt(request, fake_trt):
    """The fake TensorRT as 10.16 and as 11.4, or (marked gpu) the real one on this GPU."""
    if request.param == "fake10":
        return fake_trt(version="10.16.1.11")
    if request.param == "fake11":
        return fake_trt(version="11.4.0.106")
    if REASON:
        pytest.skip(f"trt-gpu unavailable: {REASON}")
    import tensorrt

    return tensorrt


def _ort(path, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def _build(src, tmp_path, options=None, name="engine") -> ModelArtifact:
    out = tmp_path / name
    out.mkdir()
    return TrtGpu().build(ModelArtifact.at(src, Format.onnx), BuildConfig(options or {}), out)


def _config(art: ModelArtifact) -> dict:
    return json.loads((art.path / ENGINE_CONFIG).read_text())


def _x(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 3, 8, 8)).astype(np.float32)


# ---------------------------------------------------------------- fake and GPU


def test_fp32_engine_matches_onnxruntime_and_says_how_it_was_built(trt, tmp_path):
    src = trt_models.conv_net(tmp_path / "m.onnx")
    opts = {"min_batch": 1, "opt_batch": 2, "max_batch": 8, "workspace_mb": 256}
    art = _build(src, tmp_path, opts)
    runner = TrtGpu().load(art)
    for batch in (1, 3, 8):
        got = runner.infer({"x": _x(batch)})
        assert list(got) == ["y"] and got["y"].shape == (batch, 5)
        np.testing.assert_allclose(got["y"], _ort(src, {"x": _x(batch)})[0], atol=1e-3, rtol=1e-3)
    cfg = _config(art)
    assert (cfg["typing"], cfg["tf32"], cfg["fp16"], cfg["int8"]) == ("strong", False, False, False)
    assert cfg["workspace_mb"] == 256 and cfg["tensorrt"] == trt.__version__
    assert cfg["profiles"] == [
        {"x": {"min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [8, 3, 8, 8]}}
    ]
    assert sorted(cfg["files"]) == ["engine.plan", "layers.json", "timing.cache"]
    assert all((art.path / f).stat().st_size > 0 for f in cfg["files"])
    assert "Layers" in json.loads((art.path / "layers.json").read_text())
    assert sum(cfg["layer_precisions"].values()) >= 1
    args = shlex.split(cfg["trtexec"])
    assert args[:2] == ["trtexec", f"--onnx={src}"]
    assert ("--stronglyTyped" in args) is trt.__version__.startswith("10.")
    for flag in ("--noTF32", "--memPoolSize=workspace:256M",
                 "--minShapes=x:1x3x8x8", "--optShapes=x:2x3x8x8", "--maxShapes=x:8x3x8x8",
                 "--saveEngine=engine.plan", "--exportLayerInfo=layers.json"):  # fmt: skip
        assert flag in args, flag
    assert art.precision is Precision.fp32


def test_batch_beyond_the_profile_is_invalid_input(trt, tmp_path):
    art = _build(trt_models.conv_net(tmp_path / "m.onnx"), tmp_path, {"max_batch": 8})
    with pytest.raises(InvalidInput, match="accepts 1x3x8x8 to 8x3x8x8"):
        TrtGpu().load(art).infer({"x": np.zeros((9, 3, 8, 8), np.float32)})


def test_qdq_model_builds_int8_strongly_typed(trt, tmp_path):
    src = trt_models.conv_net(tmp_path / "q.onnx", qdq=True)
    art = _build(src, tmp_path, {"max_batch": 4})
    cfg = _config(art)
    assert cfg["int8"] and "enabled automatically" in cfg["int8_reason"]
    assert cfg["quantized_types"] == {"int8": 1} and cfg["typing"] == "strong"
    assert "--int8" not in cfg["trtexec"] and art.precision is Precision.int8
    got = TrtGpu().load(art).infer({"x": _x(4, 3)})["y"]
    np.testing.assert_allclose(got, _ort(src, {"x": _x(4, 3)})[0], atol=1e-2, rtol=1e-2)


def test_fp16_is_an_fp16_copy_with_the_fallback_layers_in_fp32(trt, tmp_path):
    src = trt_models.conv_net(tmp_path / "m.onnx")
    art = _build(src, tmp_path, {"fp16": True, "fp32_layers": ["fc", "Relu"], "max_batch": 4})
    cfg = _config(art)
    assert cfg["fp32_layers"] == {"nodes": ["fc"], "op_types": ["Relu"]}
    assert "fp16 copy" in cfg["trtexec_note"] and art.precision is Precision.fp16
    got = TrtGpu().load(art).infer({"x": _x(4, 2)})["y"]
    np.testing.assert_allclose(got, _ort(src, {"x": _x(4, 2)})[0], atol=2e-2, rtol=2e-2)
    if trt.__name__ == "tensorrt" and hasattr(trt, "CALLS"):  # the fake names what it made
        layers = {x["Name"]: tensor_precision(x["Outputs"][0]) for x in
                  json.loads((art.path / "layers.json").read_text())["Layers"]}  # fmt: skip
        assert (layers["conv"], layers["fc"], layers["relu"]) == ("fp16", "fp32", "fp32"), layers


def test_several_profiles_each_run_takes_one_that_holds_it(trt, tmp_path):
    src = trt_models.conv_net(tmp_path / "m.onnx")
    profiles = [{"max_batch": 4}, {"min_batch": 5, "opt_batch": 8, "max_batch": 16}]
    art = _build(src, tmp_path, {"profiles": profiles})
    assert len(_config(art)["profiles"]) == 2
    args = shlex.split(_config(art)["trtexec"])
    shapes = [a.split("=")[0] for a in args if a.startswith(("--profile=", "--m", "--opt"))]
    assert shapes == ["--profile", "--minShapes", "--optShapes", "--maxShapes"] * 2
    assert [a for a in args if a.startswith("--profile=")] == ["--profile=0", "--profile=1"]
    runner = TrtGpu().load(art)
    for batch, profile in ((8, 1), (2, 0), (16, 1)):
        got = runner.infer({"x": _x(batch)})["y"]
        assert runner.profile == profile
        np.testing.assert_allclose(got, _ort(src, {"x": _x(batch)})[0], atol=1e-3, rtol=1e-3)
    with pytest.raises(InvalidInput, match="1x3x8x8 to 4x3x8x8 .* or 5x3x8x8 to 16x3x8x8"):
        runner.infer({"x": _x(17)})


def test_data_dependent_output_shapes_use_an_output_allocator(trt, tmp_path):
    art = _build(trt_models.nonzero_net(tmp_path / "nz.onnx"), tmp_path, {"max_batch": 4})
    runner = TrtGpu().load(art)
    for x in (np.array([[0, 1, 0, 2]], np.float32), np.eye(4, dtype=np.float32)):
        got = runner.infer({"x": x})["idx"]
        np.testing.assert_array_equal(got, np.array(np.nonzero(x)))


def test_parser_error_names_the_node(trt, tmp_path):
    src = trt_models.custom_op_net(tmp_path / "custom.onnx")
    with pytest.raises(InvalidInput, match=r"TensorRT cannot parse node 0 'odd_one'") as e:
        _build(src, tmp_path)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- fake only: other machines


def test_plugins_are_initialised_before_parsing(fake_trt, tmp_path):
    mod = fake_trt()
    _build(trt_models.conv_net(tmp_path / "m.onnx"), tmp_path)
    assert mod.CALLS[0] == "init_libnvinfer_plugins"


def test_an_engine_runs_where_tensorrt_would_run_it(fake_trt, tmp_path):
    fake_trt(version="10.13.0.35", cc="8.9", gpu="NVIDIA L4")
    art = _build(trt_models.conv_net(tmp_path / "m.onnx"), tmp_path)
    fake_trt(version="10.13.0.35", cc="8.9", gpu="NVIDIA L40S")  # another GPU, same compute
    assert TrtGpu().load(art).infer({"x": _x(1)})["y"].shape == (1, 5)
    for where, words in (
        ({"cc": "8.6"}, "compute capability 8.9 at build, 8.6 here"),
        ({"version": "10.14.0.1"}, "TensorRT 10.13.0.35 at build, 10.14.0.1 here"),
    ):
        fake_trt(**where)
        with pytest.raises(InvalidInput, match="does not fit this machine") as e:
            TrtGpu().load(art)
        assert words in str(e.value) and "rebuild it here" in str(e.value)


def test_version_and_hardware_compatible_engines_move(fake_trt, tmp_path):
    fake_trt(version="10.13.0.35", cc="8.9")
    opts = {"version_compatible": True, "hardware_compatibility": "ampere+"}
    art = _build(trt_models.conv_net(tmp_path / "m.onnx"), tmp_path, opts)
    cfg = _config(art)
    assert "--versionCompatible" in cfg["trtexec"]
    assert "--hardwareCompatibilityLevel=ampere+" in cfg["trtexec"]
    fake_trt(version="10.14.0.1", cc="8.6")  # later 10.x, an Ampere GPU: the plan loads
    assert TrtGpu().load(art).infer({"x": _x(2)})["y"].shape == (2, 5)
    for where in ({"version": "10.12.0.1", "cc": "8.9"}, {"version": "10.13.0.35", "cc": "7.5"}):
        fake_trt(**where)
        with pytest.raises(InvalidInput, match="does not fit this machine"):
            TrtGpu().load(art)


def test_io_types_are_checked_when_building(fake_trt, tmp_path):
    fake_trt()
    src = trt_models.double_input_net(tmp_path / "d.onnx")
    with pytest.raises(InvalidInput, match="'x' is float64 in the model but float32 in TensorRT"):
        _build(src, tmp_path)
    assert list((tmp_path / "engine").iterdir()) == []


def test_bfloat16_inputs_and_outputs(fake_trt, tmp_path):
    import ml_dtypes

    fake_trt()
    art = _build(trt_models.bf16_net(tmp_path / "b.onnx"), tmp_path, {"max_batch": 2})
    x = np.array([[1.5, -2, 3, -4]], dtype=ml_dtypes.bfloat16)
    y = TrtGpu().load(art).infer({"x": x})["y"]
    assert y.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(y.astype(np.float32), [[1.5, 0, 3, 0]])


def test_a_refused_tensor_address_is_an_error(fake_trt, tmp_path, monkeypatch):
    mod = fake_trt()
    runner = TrtGpu().load(_build(trt_models.conv_net(tmp_path / "m.onnx"), tmp_path))
    monkeypatch.setattr(mod.IExecutionContext, "set_tensor_address", lambda *a: False)
    with pytest.raises(InvalidInput, match="TensorRT refused the buffer of 'x'"):
        runner.infer({"x": _x(1)})


def test_timing_cache_seeds_and_a_shared_cache_merges(fake_trt, tmp_path):
    fake_trt()
    shared = tmp_path / "caches" / "trt.cache"
    shared.parent.mkdir()
    first = _build(trt_models.conv_net(tmp_path / "a.onnx"), tmp_path, {
        "shared_timing_cache": str(shared)}, "a")  # fmt: skip
    assert shared.is_file() and not _config(first)["timing_cache_seeded"]
    second = _build(trt_models.conv_net(tmp_path / "b.onnx", qdq=True), tmp_path, {
        "shared_timing_cache": str(shared)}, "b")  # fmt: skip
    assert _config(second)["timing_cache_seeded"]
    entries = json.loads(shared.read_bytes())["entries"]
    for art in (first, second):
        assert set(json.loads((art.path / "timing.cache").read_bytes())["entries"]) <= set(entries)
    assert sorted(p.name for p in shared.parent.iterdir()) == ["trt.cache"]  # no temp left
    # a read-only seed is read, not written
    seed = first.path / "timing.cache"
    before = seed.read_bytes()
    third = _build(trt_models.conv_net(tmp_path / "c.onnx"), tmp_path, {
        "timing_cache": str(seed)}, "c")  # fmt: skip
    assert _config(third)["timing_cache_seeded"] and seed.read_bytes() == before
    # a cache from another TensorRT is refused, by name
    fake_trt(version="10.14.0.1")
    with pytest.raises(InvalidInput, match="made on another GPU or TensorRT version"):
        _build(trt_models.conv_net(tmp_path / "d.onnx"), tmp_path, {"timing_cache": str(seed)}, "d")


def test_builder_options_are_applied_and_recorded(fake_trt, tmp_path, monkeypatch):
    mod = fake_trt()
    seen = {}
    build = mod.Builder.build_serialized_network

    def spy(self, network, config):
        seen.update(level=config.builder_optimization_level, tf32=config.get_flag(
            mod.BuilderFlag.TF32), verbosity=config.profiling_verbosity)  # fmt: skip
        return build(self, network, config)

    monkeypatch.setattr(mod.Builder, "build_serialized_network", spy)
    art = _build(trt_models.conv_net(tmp_path / "m.onnx"), tmp_path,
                 {"optimization_level": 5, "tf32": True})  # fmt: skip
    assert seen == {"level": 5, "tf32": True, "verbosity": mod.ProfilingVerbosity.DETAILED}
    cfg = _config(art)
    assert cfg["optimization_level"] == 5 and cfg["tf32"]
    assert "--builderOptimizationLevel=5" in cfg["trtexec"] and "--noTF32" not in cfg["trtexec"]


def test_the_fake_has_what_each_tensorrt_has(fake_trt):
    """Real 10.x keeps the weak-typing API (deprecated since 10.12, 10.1 for calibrators);
    11 removed it. The fake follows the dump of the version it plays."""
    mod = fake_trt(version="10.16.1.11")
    assert {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"} <= set(mod.BuilderFlag.__members__)
    assert hasattr(mod.IBuilderConfig, "int8_calibrator")
    assert hasattr(mod.Builder, "platform_has_fast_fp16")
    mod = fake_trt(version="11.4.0.106")
    assert not {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"} & set(mod.BuilderFlag.__members__)
    assert "DIRECT_IO" in mod.BuilderFlag.__members__
    assert not hasattr(mod.IBuilderConfig, "int8_calibrator")
    assert not hasattr(mod.Builder, "platform_has_fast_fp16")
    with pytest.raises(AttributeError):
        mod.NetworkDefinitionCreationFlag.EXPLICIT_BATCH  # noqa: B018


def test_the_fake_takes_the_real_keywords_only(fake_trt):
    mod = fake_trt()
    config = mod.Builder(mod.Logger()).create_builder_config()
    cache = config.create_timing_cache(b"")
    assert config.set_timing_cache(cache=cache, ignore_mismatch=False)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_timing_cache(cache, ignore_mismatches=False)  # not the real keyword


def test_the_cli_takes_lists_and_tables_as_toml(fake_trt, cli, tmp_path):
    fake_trt()
    src = trt_models.conv_net(tmp_path / "m.onnx")
    r = cli("build", src, "--target", "trt-gpu", "-o", tmp_path / "e",
            "--option", "profiles=[{max_batch = 4}, {min_batch = 5, max_batch = 8}]",
            "--option", "fp16=true", "--option", 'fp32_layers=["fc"]')  # fmt: skip
    assert r.code == 0, r.stderr
    cfg = json.loads((tmp_path / "e" / ENGINE_CONFIG).read_text())
    assert len(cfg["profiles"]) == 2 and cfg["fp32_layers"]["nodes"] == ["fc"]
    r = cli("build", src, "--target", "trt-gpu", "--option", "profiles=[{max_batch=", "-o",
            tmp_path / "bad")  # fmt: skip
    assert r.code == 2 and "--option profiles: not a TOML list or table" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_validate_and_bench_a_trt_engine_through_the_cli(fake_trt, cli, tmp_path):
    """The same contract as ort-cpu: the gate on a trt-gpu engine against the fp32 original."""
    fake_trt()
    fp32 = trt_models.conv_net(tmp_path / "m.onnx")
    qdq = trt_models.conv_net(tmp_path / "q.onnx", qdq=True)
    np.savez(tmp_path / "d.npz", x=_x(64, 5))
    assert cli("build", qdq, "--target", "trt-gpu", "-o", tmp_path / "e").code == 0
    r = cli("validate", tmp_path / "e", "--reference", fp32, "--data", tmp_path / "d.npz",
            "--metric", "agreement", "--max-drop", "0.2", "-o", tmp_path / "v")  # fmt: skip
    assert r.code == 0, r.stderr
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert report["passed"] and report["candidate"]["path"] == str(tmp_path / "e")
    agreement = next(c for c in report["checks"] if c["metric"] == "agreement")
    assert agreement["candidate"] > 0.9  # int8 against fp32, run through the engine
    r = cli("bench", tmp_path / "e", "--target", "trt-gpu", "--batch", "1,4",
            "--iterations", "3", "--warmup", "1", "-o", tmp_path / "b")  # fmt: skip
    assert r.code == 0, r.stderr


def test_builds_at_once_both_land_in_the_shared_timing_cache(fake_trt, tmp_path, monkeypatch):
    """Two builds merging into one shared cache at the same time: the directory lock keeps
    either from overwriting the other's entries (a slow merge widens the window)."""
    import threading
    import time

    mod = fake_trt()
    combine = mod.ITimingCache.combine

    def slow_combine(self, other, ignore_mismatch):
        time.sleep(0.3)  # between reading the shared file and writing it back
        return combine(self, other, ignore_mismatch)

    monkeypatch.setattr(mod.ITimingCache, "combine", slow_combine)
    shared = tmp_path / "caches" / "trt.cache"
    shared.parent.mkdir()
    srcs = [trt_models.conv_net(tmp_path / "a.onnx"),
            trt_models.conv_net(tmp_path / "b.onnx", qdq=True)]  # fmt: skip
    arts, errors = {}, []

    def build(i):
        try:
            arts[i] = _build(srcs[i], tmp_path, {"shared_timing_cache": str(shared)}, f"e{i}")
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=build, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    entries = set(json.loads(shared.read_bytes())["entries"])
    for art in arts.values():
        assert set(json.loads((art.path / "timing.cache").read_bytes())["entries"]) <= entries


# ---------------------------------------------------------------- TensorRT 10 and 11


def test_a_version_compatible_10x_engine_runs_on_tensorrt_11(fake_trt, tmp_path):
    fake_trt(version="10.13.3.9")
    art = _build(trt_models.conv_net(tmp_path / "m.onnx"), tmp_path, {"version_compatible": True})
    fake_trt(version="11.4.0.106")  # TensorRT 11's support matrix: 10.x VC engines load
    assert TrtGpu().load(art).infer({"x": _x(2)})["y"].shape == (2, 5)
    plain = _build(trt_models.conv_net(tmp_path / "p.onnx"), tmp_path, name="plain")
    fake_trt(version="10.16.1.11")  # an 11-built engine never runs on 10
    with pytest.raises(InvalidInput, match="TensorRT 11.4.0.106 at build, 10.16.1.11 here"):
        TrtGpu().load(plain)


def test_tensorrt_11_networks_are_made_without_the_deprecated_flag(fake_trt, tmp_path, monkeypatch):
    mod = fake_trt(version="11.4.0.106")
    seen = []
    create = mod.Builder.create_network
    monkeypatch.setattr(mod.Builder, "create_network", lambda self, flags=0: seen.append(flags)
                        or create(self, flags))  # fmt: skip
    art = _build(trt_models.conv_net(tmp_path / "q.onnx", qdq=True), tmp_path, {"max_batch": 2})
    assert seen == [0] and _config(art)["int8"] and _config(art)["typing"] == "strong"
    assert "--stronglyTyped" not in _config(art)["trtexec"]
    assert _config(art)["layer_precisions"] == {"int8": 1, "fp32": 4}


def test_layer_precisions_of_a_10x_int8_engine(fake_trt, tmp_path):
    fake_trt(version="10.16.1.11")
    art = _build(trt_models.conv_net(tmp_path / "q.onnx", qdq=True), tmp_path, {"max_batch": 2})
    layers = json.loads((art.path / "layers.json").read_text())["Layers"]
    assert "Int8" in layers[0]["Outputs"][0]["Format/Datatype"]  # NVIDIA's wording
    assert _config(art)["layer_precisions"] == {"int8": 1, "fp32": 4}


def test_same_compute_capability_before_10_9_is_one_line_exit_2(fake_trt, cli, tmp_path):
    fake_trt(version="10.0.1")  # the real 10.0.1 API: no SAME_COMPUTE_CAPABILITY
    src = trt_models.conv_net(tmp_path / "m.onnx")
    r = cli("build", src, "--target", "trt-gpu", "-o", tmp_path / "e",
            "--option", "hardware_compatibility=same_compute_capability")  # fmt: skip
    assert r.code == 2, r.stderr
    assert "needs TensorRT 10.9 or later" in r.stderr and "10.0.1" in r.stderr
    (error,) = [line for line in r.stderr.splitlines() if "error" in line]
    assert error.startswith("edgesmith: error: trt-gpu option hardware_compatibility")
    assert "Traceback" not in r.stderr
    fake_trt(version="10.16.1.11")
    r = cli("build", src, "--target", "trt-gpu", "-o", tmp_path / "e2",
            "--option", "hardware_compatibility=same_compute_capability")  # fmt: skip
    assert r.code == 0, r.stderr


def test_the_trtexec_timing_cache_difference_is_stated(fake_trt, tmp_path):
    fake_trt()
    seed = _build(trt_models.conv_net(tmp_path / "a.onnx"), tmp_path, name="a")
    art = _build(trt_models.conv_net(tmp_path / "b.onnx"), tmp_path,
                 {"timing_cache": str(seed.path / "timing.cache")}, "b")  # fmt: skip
    cfg = _config(art)
    assert f"--timingCacheFile={seed.path / 'timing.cache'}" in cfg["trtexec"]
    assert "writes the merged cache back" in cfg["trtexec_note"]
    assert "trtexec_note" not in _config(seed)
