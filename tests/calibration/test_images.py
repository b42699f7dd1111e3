"""Image folders as data: labels from class folders, preprocessing applied as recorded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgesmith.calibration.sources import Preprocess, load_dataset
from edgesmith.toolchain.core.artifact import IoSpec, TensorSpec
from edgesmith.toolchain.core.errors import InvalidInput

GREY = IoSpec((TensorSpec("x", "float32", ("batch", 1, 8, 8)),), ())


def write(folder, name, pixels):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / name)


def test_labelled_folder_scaled_and_normalised(tmp_path):
    a = np.full((8, 8), 255, np.uint8)
    b = np.zeros((16, 16), np.uint8)  # resized to the model's 8x8
    write(tmp_path / "cats", "1.png", a)
    write(tmp_path / "dogs", "2.png", b)
    data = load_dataset(tmp_path, GREY, Preprocess(image={"mean": [0.5], "std": [0.5]}))
    assert data.labels.tolist() == [0, 1]  # sorted class folder names
    assert data.feeds["x"].shape == (2, 1, 8, 8) and data.feeds["x"].dtype == np.float32
    np.testing.assert_allclose(data.feeds["x"][0], 1.0)  # (255/255 - 0.5) / 0.5
    np.testing.assert_allclose(data.feeds["x"][1], -1.0)


def test_unlabelled_rgb_folder_to_grey_model(tmp_path):
    write(tmp_path, "a.png", np.full((8, 8, 3), 51, np.uint8))
    data = load_dataset(tmp_path, GREY)
    assert data.labels is None
    np.testing.assert_allclose(data.feeds["x"], 0.2, atol=1e-6)


def test_bad_preprocessing_and_models(tmp_path):
    write(tmp_path, "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(InvalidInput, match="unknown key"):
        load_dataset(tmp_path, GREY, Preprocess(image={"means": [0.5]}))
    flat = IoSpec((TensorSpec("x", "float32", ("batch", 12)),), ())
    with pytest.raises(InvalidInput, match="one \\[N, C, H, W\\]"):
        load_dataset(tmp_path, flat)
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(InvalidInput, match="not a readable image"):
        load_dataset(tmp_path, GREY)
