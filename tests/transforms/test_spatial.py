"""ResampleToSpacingd: invertible resampling that anti-aliases when it coarsens an image."""

from __future__ import annotations

import numpy as np
import torch
from bundle.data.mni import block_average
from bundle.transforms import ResampleToSpacingd
from monai.data import MetaTensor
from monai.transforms import Spacing


def _noise(shape=(60, 60, 30), spacing=1.0, seed=0) -> MetaTensor:
    g = torch.Generator().manual_seed(seed)
    return MetaTensor(torch.rand(1, *shape, generator=g), affine=torch.diag(torch.tensor([spacing] * 3 + [1.0])))


def test_coarsening_averages_like_bigger_voxels():
    """1 mm noise to 3 mm: close to what 3 x 3 x 3 block averages keep, unlike plain trilinear sampling."""
    image = _noise()
    resampled = ResampleToSpacingd("image", pixdim=[3, 3, 3])({"image": image})["image"]
    plain = Spacing(pixdim=[3, 3, 3])(image, mode="bilinear")
    blocks = block_average(image[0].numpy(), 3)
    assert resampled.shape == plain.shape
    assert float(plain.std()) > 3 * float(resampled.std())  # aliasing: the 1 mm noise survives
    assert 0.5 < float(resampled.std()) / float(blocks.std()) < 2.0
    assert abs(float(resampled.mean()) - float(image.mean())) < 0.01


def test_labels_refining_axes_and_the_inverse_are_untouched():
    image = _noise()
    label = (image > 0.7).float()
    transform = ResampleToSpacingd(["image", "label"], pixdim=[3, 3, 3], mode=["bilinear", "nearest"])
    out = transform({"image": image, "label": label})
    assert torch.equal(out["label"].as_tensor(), Spacing(pixdim=[3, 3, 3])(label, mode="nearest").as_tensor())
    back = transform.inverse(out)
    assert back["image"].shape == image.shape and np.allclose(back["image"].affine, image.affine)
    # a finer or kept spacing is not smoothed
    finer = ResampleToSpacingd("image", pixdim=[0.5, 0.5, -1])
    assert finer.antialias_sigmas(image) == [0.0, 0.0, 0.0]
    assert ResampleToSpacingd("image", pixdim=[3, 1, 2]).antialias_sigmas(image) == [1.0, 0.0, 0.5]
    refined = finer({"image": image})["image"]
    assert torch.allclose(refined.as_tensor(), Spacing(pixdim=[0.5, 0.5, -1])(image, mode="bilinear").as_tensor())
