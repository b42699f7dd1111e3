"""The quantize stage's data and ranges: calibration and eval data checked before any work,
outlier channels split off and the rest smoothed, then the activation ranges (cached).

1. Outlier channels: channel maxima of the weighted MatMuls' inputs (one pass, cached); the
   few channels far above the rest are computed in float beside the int8 product
   (rewrites.split_outliers), and the others are smoothed into the weights
   (rewrites.smooth_channels).
2. Ranges: one streaming pass (calibration/statistics.py, cached by model + data + method).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgesmith.calibration.cache import CacheKey, CalibrationCache
from edgesmith.calibration.sources import TEXT_SUFFIXES, Dataset, Preprocess, load_dataset
from edgesmith.calibration.statistics import (
    MethodSpec,
    PassSettings,
    Request,
    activation_tensors,
    calibrate,
    dataset_digest,
)
from edgesmith.toolchain.core.artifact import IoSpec
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.progress import track
from edgesmith.toolchain.quantize import qdq, rewrites
from edgesmith.toolchain.quantize.job import Job
from edgesmith.toolchain.quantize.plan import Plan


def load_checked(which: str, io: IoSpec, cfg, tok: Path | None) -> Dataset:
    """The config's `which` data ("calibration" or "eval_data") for the model's inputs, refused
    when text has no tokenizer or values are not finite."""
    p, what = Path(getattr(cfg, which)), f"{which.removesuffix('_data')} data"
    if p.suffix in TEXT_SUFFIXES and tok is None:
        raise InvalidInput(
            f"{what} {p}: text data needs --tokenizer (no tokenizer beside the model)"
        )
    limit = cfg.eval_limit if which == "eval_data" else None
    return load_dataset(p, io, Preprocess(tok, cfg.seq_len, cfg.image), limit)


def calibration_data(cfg, io: IoSpec, tok: Path | None) -> Dataset:
    """The calibration samples: all of the data, or `limit` drawn with `seed`; refused if
    empty, short or not finite."""
    data = load_checked("calibration", io, cfg, tok)
    if cfg.limit is not None:
        if cfg.limit > len(data):
            raise InvalidInput(
                f"calibration data {cfg.calibration}: --limit {cfg.limit} asked, the data has "
                f"only {len(data)}"
            )
        data = data.take(cfg.limit, seed=cfg.seed)
    return data


@dataclass
class Prepared:
    """The float model to quantize, its ranges, the plan, and what happened (for the report)."""

    path: Path
    ranges: dict[str, tuple[float, float]]
    plan: Plan
    info: dict[str, Any]
    masked: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Channels:
    """What the channel pass did: the plan (the split's float MatMuls added), the outlier
    channels left out of each tensor's range, the split and smoothing records, and the
    pass's own record (None: no channel pass)."""

    plan: Plan
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    outliers: list[dict] = field(default_factory=list)
    smoothed: dict[str, Any] | None = None
    record: dict[str, Any] | None = None


class Calibrator:
    """The calibration passes of one quantize run: data, cache, preset and the pass settings."""

    def __init__(self, job: Job, data: Dataset, cache: CalibrationCache):
        self.src, self.data, self.cfg, self.preset = job.src, data, job.cfg, job.preset
        self.cache, self.log = cache, job.log
        self.method = MethodSpec(job.cfg.method, percentile=job.cfg.percentile)
        self.digest = dataset_digest(data)
        self.run = PassSettings(job.cfg.batch_size, job.cfg.threads, track)

    def _cached(self, model: Path, key: CacheKey, request: Request, method: MethodSpec, what: str):
        """(the pass's Calibration on `model`, its record): from the cache, or run and cached."""
        start = time.perf_counter()
        hit = self.cache.load(key, list(request.tensors), list(request.channels))
        entry = str(self.cache.path(key))
        if hit is not None:
            self.log(f"calibration ({what}): cached ({self.cache.path(key).name[:12]})")
            return hit, {"pass": what, "cached": True, "entry": entry}
        calib = calibrate(model, self.data, method, request, self.run)
        self.cache.save(key, calib)
        seconds = time.perf_counter() - start
        self.log(f"calibration ({what}): {calib.samples} samples in {seconds:.1f} s")
        return calib, {"pass": what, "cached": False, "seconds": round(seconds, 2),
                       "entry": entry}  # fmt: skip

    def channel_pass(self, model, proto, plan: Plan) -> Channels:
        """Split the outlier channels off and smooth the rest, in `model` (in place)."""
        preset, out = self.preset, Channels(plan)
        targets = rewrites.split_targets(proto, plan.quantized(proto))
        if not targets or not (preset.outlier_ratio or preset.smooth_alpha):
            return out
        chans = [t.tensor for t in targets]
        chan, out.record = self._cached(
            Path(self.src.path),
            CacheKey(self.src.sha256, self.digest, {"method": "channel-absmax"}),
            Request(channels=chans),
            MethodSpec("minmax"),
            "channel maxima",
        )
        if preset.outlier_ratio:
            split = rewrites.split_outliers(model, targets, chan.channel_absmax, preset)
            out.plan = plan.with_float(
                split.float_nodes, "float part of a split MatMul (outlier channels)"
            )
            out.masked, out.outliers = split.masked, split.split
        if preset.smooth_alpha:
            smooth = rewrites.smooth_channels(
                model, targets, chan.channel_absmax, preset.smooth_alpha, out.masked
            )
            out.masked = {smooth.renamed.get(t, t): idx for t, idx in out.masked.items()}
            out.smoothed = {"alpha": preset.smooth_alpha, "tensors": smooth.smoothed}
        return out

    def range_pass(self, prepared: Path, channels: Channels) -> tuple[dict, dict]:
        """The activation ranges of the prepared model's quantized inputs, and the pass's
        record."""
        proto = onnx.load(str(prepared), load_external_data=False)
        tensors = activation_tensors(proto, channels.plan.op_types)
        preset, masked = self.preset, channels.masked
        levels = (
            256 if preset.activation_type == "uint8" and not preset.activation_symmetric else 128
        )
        key = CacheKey(
            self.src.sha256,
            self.digest,
            {
                **self.method.key(),
                "levels": levels,
                "split": {k: v.tolist() for k, v in sorted(masked.items())},
                # the smoothing scales decide the smoothed tensors' ranges
                "smooth": {
                    d["smoothed"]: d["scale_sha256"]
                    for d in (channels.smoothed or {}).get("tensors", [])
                },
            },
        )
        request = Request(tensors, drop=masked, non_negative_levels=levels)
        calib, done = self._cached(prepared, key, request, self.method, self.method.name)
        return dict(calib.ranges), done

    def prepare(self, plan: Plan, work: Path) -> Prepared:
        model = onnx.load(str(self.src.path))
        proto = onnx.load(str(self.src.path), load_external_data=False)
        channels = self.channel_pass(model, proto, plan)
        prepared = qdq.save_model(model, work / "prepared.onnx")
        del model
        ranges, done = self.range_pass(prepared, channels)
        info: dict[str, Any] = {
            "method": self.method.key(),
            "samples": len(self.data),
            "seed": self.cfg.seed,
            "data_sha256": self.digest,
            "passes": [r for r in (channels.record, done) if r is not None],
            "outlier_channels": channels.outliers,
        }
        if channels.smoothed is not None:
            info["smoothed"] = channels.smoothed
        return Prepared(prepared, ranges, channels.plan, info, channels.masked)
