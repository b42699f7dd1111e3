"""Image folders as calibration or evaluation data, with the preprocessing recorded.

A folder of images (unlabelled), or a folder of class folders (labels by sorted folder name,
as torchvision's ImageFolder). Each image is converted to the model input's channels, resized
to its fixed height and width, scaled, normalised and laid out NCHW (or NHWC). The
preprocessing is part of the recipe (`image = {...}` on the stage) and written to the report,
so a deployment can apply the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgesmith.toolchain.core.artifact import IoSpec
from edgesmith.toolchain.core.errors import InvalidInput

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImagePreprocess:
    """value = (pixel · scale − mean[c]) / std[c], pixel in 0..255; size (height, width)."""

    size: tuple[int, int] | None = None  # default: the model input's fixed height and width
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    resample: Literal["bilinear", "nearest", "bicubic"] = "bilinear"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImagePreprocess:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            available = ", ".join(sorted(known))
            raise InvalidInput(
                f"image preprocessing: unknown key(s) {unknown}; available: {available}"
            )
        kw = dict(d)
        for k in ("size", "mean", "std"):
            if k in kw and kw[k] is not None:
                kw[k] = tuple(kw[k])
        pre = cls(**kw)
        if pre.layout not in ("NCHW", "NHWC"):
            raise InvalidInput(
                f"image preprocessing: layout must be NCHW or NHWC, got {pre.layout}"
            )
        if pre.resample not in ("bilinear", "nearest", "bicubic"):
            raise InvalidInput(f"image preprocessing: unknown resample '{pre.resample}'")
        if any(s == 0 for s in pre.std):
            raise InvalidInput("image preprocessing: std must not be 0")
        return pre

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def image_files(path: Path) -> list[Path]:
    return sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and not list(path.glob("*.npy")) and bool(image_files(path))


def load_image_folder(
    path: Path, io: IoSpec, pre: ImagePreprocess
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(arrays by input name, labels or None) for a model with one rank-4 float input."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if len(io.inputs) != 1 or io.inputs[0].rank != 4:
        raise InvalidInput(
            f"{path}: image folders fit a model with one [N, C, H, W] (or NHWC) input; this model "
            f"takes {', '.join(t.describe() for t in io.inputs)}"
        )
    spec = io.inputs[0]
    c_axis, h_axis, w_axis = (1, 2, 3) if pre.layout == "NCHW" else (3, 1, 2)
    channels = spec.dims[c_axis]
    if channels not in (1, 3):
        raise InvalidInput(
            f"{path}: input '{spec.name}' has {channels} channels on axis {c_axis} "
            f"({pre.layout}); images give 1 or 3 (set image.layout if the model is NHWC)"
        )
    size = pre.size or (spec.dims[h_axis], spec.dims[w_axis])
    if not all(isinstance(s, int) for s in size):
        raise InvalidInput(
            f"{path}: input '{spec.name}' has no fixed height and width; set image.size = [H, W]"
        )
    files = image_files(path)
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    labelled = bool(classes) and all(f.parent.parent == path for f in files)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(-1, 1, 1)
    resample = {
        "bilinear": Image.Resampling.BILINEAR,
        "nearest": Image.Resampling.NEAREST,
        "bicubic": Image.Resampling.BICUBIC,
    }[pre.resample]
    out = np.empty((len(files), channels, *size), dtype=np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB").resize(
                    (size[1], size[0]), resample
                )
                a = np.asarray(im, dtype=np.float32).reshape(size[0], size[1], channels)
        except (UnidentifiedImageError, OSError) as e:
            raise InvalidInput(f"{f}: not a readable image ({e})") from None
        out[i] = (a.transpose(2, 0, 1) * pre.scale - mean) / std
    if pre.layout == "NHWC":
        out = out.transpose(0, 2, 3, 1).copy()
    labels = (
        np.asarray([classes.index(f.parent.name) for f in files], dtype=np.int64)
        if labelled
        else None
    )
    return {spec.name: out.astype(spec.dtype)}, labels
