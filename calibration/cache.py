"""Calibration cache: ranges per tensor, keyed by model sha256 + data sha256 + method.

Quantizing the same model on the same samples again with other settings (a preset, excluded
nodes, the fallback loop's steps) reads the ranges back instead of running the model again.
One JSON file per key; written atomically, so a crash leaves the old entry or none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesmith.calibration.statistics import Calibration
from edgesmith.toolchain.core.files import sha256_json, write_json

CACHE_VERSION = 1  # bump when the statistics change meaning: old entries are then ignored


@dataclass(frozen=True)
class CacheKey:
    model_sha256: str
    data_sha256: str
    method: dict[str, Any]

    def digest(self) -> str:
        return sha256_json(
            {
                "version": CACHE_VERSION,
                "model": self.model_sha256,
                "data": self.data_sha256,
                "method": self.method,
            }
        )


class CalibrationCache:
    """A directory of `<key digest>.json` files."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, key: CacheKey) -> Path:
        return self.directory / f"{key.digest()}.json"

    def load(self, key: CacheKey, tensors: list[str], channels: list[str]) -> Calibration | None:
        """The cached entry, if it holds every tensor and channel vector asked for."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            entry = json.loads(p.read_text())
            calib = Calibration.from_dict(entry["calibration"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # a damaged entry is recomputed and overwritten, never trusted
        if (
            not set(tensors) <= calib.ranges.keys()
            or not set(channels) <= calib.channel_absmax.keys()
        ):
            return None
        return calib

    def save(self, key: CacheKey, calib: Calibration) -> Path:
        """Write the entry; tensors of an earlier entry under the same key are kept (same model,
        data and method: their ranges are still right)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        p = self.path(key)
        old = self.load(key, [], [])
        if old is not None:
            calib = Calibration(
                calib.method,
                {**old.ranges, **calib.ranges},
                {**old.channel_absmax, **calib.channel_absmax},
                calib.samples,
            )
        write_json(
            p,
            {
                "key": {
                    "model_sha256": key.model_sha256,
                    "data_sha256": key.data_sha256,
                    "method": key.method,
                },
                "calibration": calib.to_dict(),
            },
        )
        return p
