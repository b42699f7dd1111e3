"""Streaming statistics: exact merging, ranges by method, fixed memory, refusals, the cache."""

from __future__ import annotations

import numpy as np
import pytest

from edgesmith.calibration.cache import CacheKey, CalibrationCache
from edgesmith.calibration.sources import Dataset
from edgesmith.calibration.statistics import (
    Calibration,
    MethodSpec,
    TensorStats,
    dataset_digest,
    entropy_threshold_bins,
    tensor_range,
)
from edgesmith.toolchain.core.errors import InvalidInput


def streamed(batches: list[np.ndarray], bins: int = 2048) -> TensorStats:
    s = TensorStats(bins=bins)
    for b in batches:
        s.update("t", b, histogram=True, channels=True)
    return s


def test_widening_merges_counts_exactly():
    """Counts after growing the grid equal a histogram made directly on the final grid."""
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(5000).astype(np.float32) * s for s in (0.5, 1.0, 7.0, 3.0, 40.0)]
    s = streamed(batches, bins=512)
    assert s.edge >= 40 * np.abs(batches[-1]).max() / 40  # the grid grew to cover every value
    direct, _ = np.histogram(
        np.concatenate(batches).astype(np.float64), bins=512, range=(-s.edge, s.edge)
    )
    np.testing.assert_array_equal(s.hist, direct)
    assert s.hist.sum() == s.count == 25000
    assert s.min == min(b.min() for b in batches) and s.max == max(b.max() for b in batches)


def test_minmax_and_percentile_ranges():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200_000).astype(np.float32)
    x[:10] = 50.0  # rare outliers percentile must clip
    s = streamed(np.array_split(x, 20))
    assert tensor_range(s, MethodSpec("minmax")) == (float(x.min()), float(x.max()))
    lo, hi = tensor_range(s, MethodSpec("percentile", percentile=99.99))
    expected = np.percentile(np.abs(x), 99.99)
    width = s.edge / (s.bins // 2)
    assert abs(hi - expected) <= 2 * width and hi < 10
    assert lo == pytest.approx(max(float(x.min()), -hi))


def test_entropy_clips_a_heavy_tail_but_not_a_uniform():
    rng = np.random.default_rng(2)
    uniform = streamed([rng.uniform(-1, 1, 100_000).astype(np.float32)])
    lo, hi = tensor_range(uniform, MethodSpec("entropy"))
    assert hi > 0.95 and lo < -0.95
    laplace = rng.laplace(0, 0.1, 200_000).astype(np.float32)
    laplace[:5] = 20.0
    lo, hi = tensor_range(streamed([laplace]), MethodSpec("entropy"))
    assert 0.2 < hi < 5.0  # far below the 20.0 outliers, above the bulk (|x| ~ 0.1)


def test_entropy_threshold_of_uniform_counts_is_the_whole_range():
    assert entropy_threshold_bins(np.ones(1024)) == 1024


def test_memory_does_not_grow_with_samples():
    rng = np.random.default_rng(3)
    few = streamed([rng.standard_normal((4, 32)).astype(np.float32) for _ in range(2)])
    many = streamed([rng.standard_normal((4, 32)).astype(np.float32) for _ in range(500)])
    assert few.hist.nbytes == many.hist.nbytes
    assert few.channel_absmax.shape == many.channel_absmax.shape == (32,)
    assert many.count == 500 * 128


def test_nan_or_inf_activation_is_refused():
    s = TensorStats()
    with pytest.raises(InvalidInput, match="NaN or Inf"):
        s.update("act", np.array([1.0, np.inf], np.float32), histogram=True, channels=False)


def test_check_finite_names_the_input_and_sample():
    from edgesmith.calibration.sources import check_finite

    x = np.zeros((5, 3), np.float32)
    x[3, 1] = np.nan
    with pytest.raises(InvalidInput, match=r"'x'.*sample 3"):
        check_finite(Dataset({"x": x}, origin="calib.npz"))


def test_dataset_digest_changes_with_the_samples():
    a = Dataset({"x": np.arange(12, dtype=np.float32).reshape(4, 3)})
    assert dataset_digest(a) == dataset_digest(Dataset({"x": a.feeds["x"].copy()}))
    assert dataset_digest(a) != dataset_digest(a.take(3, seed=0))


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(InvalidInput, match="minmax, percentile, entropy"):
        MethodSpec("kl")


def test_cache_round_trip_and_partial_entries(tmp_path):
    cache = CalibrationCache(tmp_path)
    key = CacheKey("m" * 64, "d" * 64, MethodSpec("minmax").key())
    assert cache.load(key, ["a"], []) is None
    cache.save(key, Calibration({"method": "minmax"}, {"a": (-1.0, 2.0)}, {}, 8))
    assert cache.load(key, ["a"], []).ranges == {"a": (-1.0, 2.0)}
    assert cache.load(key, ["a", "b"], []) is None  # a tensor it does not hold: recompute
    cache.save(key, Calibration({"method": "minmax"}, {"b": (0.0, 1.0)}, {}, 8))
    assert set(cache.load(key, ["a", "b"], []).ranges) == {"a", "b"}  # merged, not replaced
    other = CacheKey("m" * 64, "e" * 64, MethodSpec("minmax").key())
    assert cache.load(other, ["a"], []) is None
    cache.path(key).write_text("{ not json")
    assert cache.load(key, ["a"], []) is None  # a damaged entry is never trusted
