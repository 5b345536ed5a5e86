"""Overlay figures: the lesion slice, shown in the same (RAS) orientation whatever the file's grid."""

from __future__ import annotations

import numpy as np
from bundle.visualize.overlay import OverlaySlices, save_overlay
from PIL import Image


def _volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.random((12, 10, 6)).astype(np.float32)
    truth = np.zeros((12, 10, 6), dtype=np.uint8)
    truth[2:5, 6:9, 4] = 1  # the lesion slice is z = 4, off-centre in x and y
    maps = np.stack([image * 0.5, image * 0.25])
    return image, truth, maps


def test_lps_and_ras_grids_show_the_same_picture(tmp_path) -> None:
    image, truth, maps = _volumes()
    ras_affine = np.diag([2.0, 2.0, 5.0, 1.0])
    # the same voxels stored LPS and running inferior: x and y flipped, z reversed
    lps = [np.flip(v, axis=(-3, -2, -1)) for v in (image, truth, maps)]
    lps_affine = np.diag([-2.0, -2.0, -5.0, 1.0])
    shown_ras = OverlaySlices.from_volumes(image, truth, truth, maps, ["a", "b"], ras_affine, "ras")
    shown_lps = OverlaySlices.from_volumes(*lps[:2], lps[1], lps[2], ["a", "b"], lps_affine, "lps")
    np.testing.assert_array_equal(shown_ras.image, shown_lps.image)
    np.testing.assert_array_equal(shown_ras.truth, shown_lps.truth)
    np.testing.assert_array_equal(shown_ras.residual_maps, shown_lps.residual_maps)
    assert shown_ras.truth.sum() == 9 and shown_ras.title.endswith("(slice 4 of axis 2)")
    assert shown_lps.title.endswith("(slice 1 of axis 2)")  # the grid's own index
    # RAS display: rows are anterior-posterior (origin lower), columns left-right
    np.testing.assert_array_equal(shown_ras.image, image[:, :, 4].T)
    path = save_overlay(shown_lps, tmp_path / "overlay.png")
    assert Image.open(path).size[0] > Image.open(path).size[1] > 100
