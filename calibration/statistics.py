"""Streaming calibration statistics: min/max, histograms (percentile, entropy), channel maxima.

Every statistic is updated batch by batch and has a fixed size per tensor (a histogram of
`bins` counts, a vector per channel), so memory does not grow with the number of samples.
ONNX Runtime's own percentile and entropy calibrators keep every activation of every batch
until the end (onnxruntime issue 10503: more than 100 GB for a BERT-size model at 32
samples); we compute the ranges here and hand them to its QDQ quantizer (toolchain/quantize).

Histograms sit on a grid symmetric around 0, [-edge, +edge] in `bins` equal bins. When a batch
exceeds the edge, the grid widens by an integer factor k: every old bin then falls inside exactly
one new bin, so counts are merged exactly, never interpolated (what TensorRT's and ONNX
Runtime's collectors do when they re-bin).
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgesmith.calibration.sources import Dataset, check_finite
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.ort_session import SessionSettings, ort_session

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_BINS = 2048
DEFAULT_PERCENTILE = 99.999  # of |x|; clips the rarest 0.001% of values
# Entropy threshold search: candidates tried between the smallest and the largest threshold.
# Trying every bin (as TensorRT does) is O(bins^2); 256 evenly spaced candidates choose the same
# threshold to within bins/256 bins of resolution and keep a 2048-bin search under 50 ms.
ENTROPY_CANDIDATES = 256

Track = Callable[[Iterable[Any], int, str], Iterable[Any]]


@dataclass
class TensorStats:
    """Running statistics of one float tensor over every calibration sample seen so far.

    `hist` counts values on [-edge, edge] in `bins` bins; `channel_absmax` is max |x| per index
    of the last axis (the input channels of a MatMul), kept only for tensors that are smoothed.
    """

    min: float = math.inf
    max: float = -math.inf
    count: int = 0
    bins: int = DEFAULT_BINS
    edge: float = 0.0
    hist: np.ndarray | None = None
    channel_absmax: np.ndarray | None = None

    def update(self, name: str, x: np.ndarray, histogram: bool, channels: bool) -> None:
        if x.size == 0:
            return
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InvalidInput(
                f"calibration: tensor '{name}' holds NaN or Inf for this data; the model or the "
                "data is broken before quantization (no ranges can be computed)"
            )
        self.min, self.max, self.count = min(self.min, lo), max(self.max, hi), self.count + x.size
        if histogram:
            self._add_to_histogram(x, max(-lo, hi))
        if channels:
            m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0).astype(np.float64)
            self.channel_absmax = (
                m if self.channel_absmax is None else np.maximum(self.channel_absmax, m)
            )

    def _add_to_histogram(self, x: np.ndarray, absmax: float) -> None:
        if self.bins % 2:
            raise ValueError("bins must be even (the grid is symmetric around 0)")
        if self.hist is None:
            self.hist = np.zeros(self.bins, dtype=np.float64)
            self.edge = absmax if absmax > 0 else np.finfo(np.float32).tiny
        elif absmax > self.edge:
            self._widen(math.ceil(absmax / self.edge))
        scale = self.bins / (2.0 * self.edge)
        idx = ((x.reshape(-1).astype(np.float64) + self.edge) * scale).astype(np.int64)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.hist += np.bincount(idx, minlength=self.bins)

    def _widen(self, k: int) -> None:
        """Grid [-edge, edge] → [-k·edge, k·edge]; old bin i is in new bin ((k-1)·B/2 + i) // k."""
        k = max(k, 2)
        half = self.bins // 2
        target = ((k - 1) * half + np.arange(self.bins)) // k
        self.hist = np.bincount(target, weights=self.hist, minlength=self.bins)
        self.edge *= k

    def abs_histogram(self) -> np.ndarray:
        """Counts of |x| over [0, edge] in bins/2 bins (the symmetric grid folded at 0)."""
        if self.hist is None:
            raise ValueError("no histogram was collected")
        half = self.bins // 2
        return self.hist[half:] + self.hist[:half][::-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "min": self.min,
            "max": self.max,
            "count": self.count,
            "bins": self.bins,
            "edge": self.edge,
            "hist": None if self.hist is None else self.hist.tolist(),
            "channel_absmax": None if self.channel_absmax is None else self.channel_absmax.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorStats:
        return cls(
            min=d["min"],
            max=d["max"],
            count=d["count"],
            bins=d["bins"],
            edge=d["edge"],
            hist=None if d["hist"] is None else np.asarray(d["hist"], dtype=np.float64),
            channel_absmax=None
            if d["channel_absmax"] is None
            else np.asarray(d["channel_absmax"], dtype=np.float64),
        )


@dataclass(frozen=True)
class MethodSpec:
    """How ranges are read from the statistics; part of the calibration cache key."""

    name: str = "minmax"
    percentile: float = DEFAULT_PERCENTILE
    bins: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise InvalidInput(
                f"unknown calibration method '{self.name}'; available: {', '.join(METHODS)}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise InvalidInput(f"percentile must be in (50, 100], got {self.percentile}")

    @property
    def needs_histogram(self) -> bool:
        return self.name != "minmax"

    def key(self) -> dict[str, Any]:
        if self.name == "minmax":
            return {"method": "minmax"}
        if self.name == "percentile":
            return {"method": "percentile", "percentile": self.percentile, "bins": self.bins}
        return {"method": "entropy", "bins": self.bins}


def tensor_range(stats: TensorStats, method: MethodSpec, levels: int = 128) -> tuple[float, float]:
    """The (low, high) range of a tensor for `method`.

    `levels` is how many quantization steps cover [0, threshold] (128 for symmetric int8, 256
    for a non-negative tensor in uint8); only entropy uses it. A clipped range never extends past
    the values seen.
    """
    if stats.count == 0:
        raise ValueError("no values were seen")
    if method.name == "minmax":
        return stats.min, stats.max
    counts = stats.abs_histogram()
    width = stats.edge / len(counts)
    if method.name == "percentile":
        cdf = np.cumsum(counts) / counts.sum()
        i = int(np.searchsorted(cdf, method.percentile / 100.0))
        threshold = (min(i, len(counts) - 1) + 1) * width
    else:
        threshold = (entropy_threshold_bins(counts, levels) + 0.0) * width
    return max(stats.min, -threshold), min(stats.max, threshold)


def _smooth(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """The normalised distribution with eps added to every bin, so that KL stays finite where
    Q misses mass P has (clipped outliers): they then cost log(p/eps) each, not infinity."""
    p = p / p.sum() + eps
    return p / p.sum()


def entropy_threshold_bins(counts: np.ndarray, levels: int = 128) -> int:
    """Bins kept (from 0) that minimise KL(P || Q): TensorRT's entropy calibration.

    P is the histogram clipped at the threshold (the clipped mass added to its last bin); Q is
    the unclipped slice quantized into `levels` steps and expanded back, each step's mass spread
    evenly over its bins that are non-zero in P. Both are smoothed before the KL.
    """
    n = len(counts)
    if n <= levels or counts.sum() == 0:
        return n
    step = max(1, (n - levels) // ENTROPY_CANDIDATES)
    best, best_kl = n, math.inf
    for i in list(range(levels, n, step)) + [n]:
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        nonzero = p > 0
        group = (np.arange(i) * levels) // i  # `levels` groups of (nearly) equal width
        group_sum = np.bincount(group, weights=counts[:i], minlength=levels)
        group_nz = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, group_sum[group] / np.maximum(group_nz[group], 1), 0.0)
        if q.sum() == 0:
            continue
        ps, qs = _smooth(p), _smooth(q)
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best_kl:
            best, best_kl = i, kl
    return best


# ---------------------------------------------------------------------------------------------
# Collecting: run the model with the wanted tensors added as outputs, one batch at a time.


def dataset_digest(data: Dataset) -> str:
    """sha256 of exactly the samples used (names, dtypes, shapes, bytes): the cache's data key.

    Hashing the selected arrays rather than the file covers the sample count, the seed, the
    tokenizer and the image preprocessing at once.
    """
    h = hashlib.sha256()
    for name in sorted(data.feeds):
        a = np.ascontiguousarray(data.feeds[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def float_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """Float tensors the graph computes or takes as input → elem type (not initializers)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    inits = {i.name for i in g.initializer}
    types = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        et = v.type.tensor_type.elem_type
        if v.name not in inits and et in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            types[v.name] = et
    return types


def activation_tensors(model: onnx.ModelProto, op_types: Iterable[str]) -> list[str]:
    """Float, non-constant inputs and outputs of every node whose op type is in `op_types`.

    These are the tensors ONNX Runtime's QDQ quantizer may ask a range for.
    """
    types = float_tensors(model)
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    wanted = set(op_types)
    out: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type not in wanted:
            continue
        for name in list(node.input) + list(node.output):
            if name and name in types and name not in consts:
                out[name] = None
    return list(out)


def _augmented(model_path: Path, names: list[str], tmp: Path) -> Path:
    """The model with `names` added as graph outputs, saved under `tmp` (weights external)."""
    model = onnx.load(str(model_path))
    types = float_tensors(onnx.load(str(model_path), load_external_data=False))
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    path = tmp / "augmented.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="augmented.onnx.data")
    return path


def _batch_size(io_dims: list[Any], wanted: int) -> int:
    fixed = [d for d in io_dims if isinstance(d, int) and d > 0]
    return min(fixed) if fixed else wanted


@dataclass(frozen=True)
class Request:
    """What one calibration pass collects: the ranges of `tensors`, the channel maxima of
    `channels`; `drop`: tensor → indices of its last axis left out of its statistics (outlier
    channels computed in float elsewhere); `non_negative_levels`: quantization steps over
    [0, threshold] for a tensor that is never negative (256 when activations are asymmetric
    uint8, else 128)."""

    tensors: Sequence[str] = ()
    channels: Sequence[str] = ()
    drop: dict[str, np.ndarray] = field(default_factory=dict)
    non_negative_levels: int = 128


@dataclass(frozen=True)
class PassSettings:
    """How a pass runs: batch size, intra-op threads, and a progress tracker."""

    batch_size: int = 16
    threads: int | None = None
    track: Track | None = None


def collect(
    model_path: Path,
    data: Dataset,
    request: Request,
    method: MethodSpec,
    run: PassSettings = PassSettings(),
) -> dict[str, TensorStats]:
    """Run `data` through the model once and return the running statistics the request names
    (histograms when `method` needs them). Graph inputs among the tensors are read from the
    data itself. Memory: the statistics (bins + channels per tensor) and one batch of
    activations, whatever the sample count.
    """
    drop, histogram, track = request.drop, method.needs_histogram, run.track

    if len(data) == 0:
        raise InvalidInput("calibration: the data holds no samples")
    check_finite(data)
    chans = set(request.channels)
    stats = {
        n: TensorStats(bins=method.bins)
        for n in dict.fromkeys(list(request.tensors) + sorted(chans))
    }
    proto = onnx.load(str(model_path), load_external_data=False)
    graph_inputs = {i.name for i in proto.graph.input}
    from_model = [n for n in stats if n not in graph_inputs]
    with tempfile.TemporaryDirectory(prefix="edgesmith-calib-") as tmp:
        path = _augmented(Path(model_path), from_model, Path(tmp))
        sess = ort_session(path, SessionSettings(threads=run.threads))  # as the engine's
        names = [o.name for o in sess.get_outputs() if o.name in stats]
        size = _batch_size([i.shape[0] for i in sess.get_inputs() if i.shape], run.batch_size)
        total = (len(data) + size - 1) // size
        batches: Iterator = data.batches(size)
        if track is not None:
            batches = iter(track(batches, total, f"calibrating on {len(data)} samples"))
        for feeds, _ in batches:
            # an empty name list would make onnxruntime return every output
            outs = sess.run(names, feeds) if names else []
            values = dict(zip(names, outs, strict=True))
            values.update({n: feeds[n] for n in graph_inputs & stats.keys()})
            for name, value in values.items():
                if name in drop:
                    value = np.delete(value, drop[name], axis=-1)
                stats[name].update(name, value, histogram, name in chans)
            del outs  # one batch of activations alive at a time
    missing = [n for n, s in stats.items() if s.count == 0]
    if missing:
        raise InvalidInput(f"calibration: tensor(s) {missing[:3]} produced no values on this data")
    return stats


@dataclass
class Calibration:
    """What quantization needs: a (low, high) range per tensor, and channel maxima for smoothing."""

    method: dict[str, Any]
    ranges: dict[str, tuple[float, float]]
    channel_absmax: dict[str, np.ndarray] = field(default_factory=dict)
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "samples": self.samples,
            "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()},
            "channel_absmax": {k: v.tolist() for k, v in self.channel_absmax.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(
            method=d["method"],
            ranges={k: (float(v[0]), float(v[1])) for k, v in d["ranges"].items()},
            channel_absmax={
                k: np.asarray(v, dtype=np.float64) for k, v in d["channel_absmax"].items()
            },
            samples=d["samples"],
        )


def calibrate(
    model_path: Path,
    data: Dataset,
    method: MethodSpec,
    request: Request,
    run: PassSettings = PassSettings(),
) -> Calibration:
    """Ranges of the request's tensors by `method`, plus the channel maxima it asks for."""
    chans, levels = list(request.channels), request.non_negative_levels
    stats = collect(model_path, data, request, method, run)
    ranges = {
        n: tensor_range(stats[n], method, levels if stats[n].min >= 0 else 128)
        for n in request.tensors
    }
    return Calibration(
        method.key(),
        ranges,
        {n: stats[n].channel_absmax for n in chans if stats[n].channel_absmax is not None},
        len(data),
    )
