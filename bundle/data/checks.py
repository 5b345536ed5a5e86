# Copyright (c) GRCSF bundle contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Checks of what a volume holds, shared by the readers and the transforms.

- :func:`hounsfield_problem` -- why an image is plainly not a CT in Hounsfield units, or None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

__all__ = [
    "AIR_RANGE_HU",
    "hounsfield_problem",
    "plain_values",
    "residual_map_statistic",
    "summarise_residual_statistics",
]


#: HU interval of air and lung; a CT in HU has voxels there, raw or normalised values have none
AIR_RANGE_HU: tuple[float, float] = (-1100.0, -200.0)


def plain_values(image: Any) -> torch.Tensor:
    """The values of a tensor, MetaTensor or array as a detached plain tensor."""
    t = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    return t.detach()


def _share(values: torch.Tensor, low: float, high: float) -> float:
    """Fraction of ``values`` in ``[low, high]``."""
    return float(((values >= low) & (values <= high)).float().mean()) if values.numel() else 0.0


def hounsfield_problem(values: np.ndarray | torch.Tensor, min_air_fraction: float = 1e-3) -> str | None:
    """Why ``values`` do not look like a CT in Hounsfield units, or None if they do.

    The rule (module docstring): at least ``min_air_fraction`` of the voxels at or above -1100 HU
    must lie in :data:`AIR_RANGE_HU` ([-1100, -200]). The reason names the likely cause:
    normalised, 8-bit, or stored DICOM values without RescaleIntercept.

    Args:
        values: the image (any shape).
        min_air_fraction: the fraction of air/lung voxels required (0 accepts any image with at
            least one such voxel).
    """
    v = plain_values(values).float()
    finite = v[torch.isfinite(v)]
    if finite.numel() == 0:
        return "the image has no finite values."
    lo, hi = float(finite.min()), float(finite.max())
    physical = finite >= AIR_RANGE_HU[0]
    n_physical = int(physical.sum())
    n_air = int((physical & (finite <= AIR_RANGE_HU[1])).sum())
    if n_air > 0 and n_air >= min_air_fraction * n_physical:
        return None
    if lo >= -1.0 and hi <= 1.0:
        cause = "it looks normalised ([0, 1] or [-1, 1])"
    elif lo >= 0.0 and hi <= 255.0:
        cause = "it looks like an 8-bit (windowed or PNG) image"
    elif n_physical and float(finite[physical].min()) >= -50.0 and _share(finite[physical], 824.0, 1224.0) >= 0.2:
        # air near 0 and much soft tissue near 1024: HU shifted by the usual intercept of -1024
        cause = (
            "it looks like DICOM stored values without the RescaleIntercept (air near 0, water near 1024, "
            "e.g. [0, 4095])"
        )
    else:
        cause = "it contains no air or lung (a crop, or values shifted from HU)"
    fraction = n_air / n_physical if n_physical else 0.0
    return (
        f"values range over [{lo:g}, {hi:g}] and {fraction:.3%} of the voxels (>= {AIR_RANGE_HU[0]:g}) lie in the "
        f"air/lung range [{AIR_RANGE_HU[0]:g}, {AIR_RANGE_HU[1]:g}] HU ({min_air_fraction:.3%} required): {cause}. "
        "A CT in HU contains air; for crops without air or synthetic data use check_hu=False."
    )


#: image intensity (after the [0, 1] scaling) above which a voxel counts as foreground for the
#: residual-map statistic
_STATISTIC_FOREGROUND = 0.1


def residual_map_statistic(image: Any, maps: Any) -> float | None:
    """The mean residual-map value over a volume's foreground (image > 0.1 after scaling to [0, 1]).

    The MAE reconstructs the anatomy it was trained on well, so this mean is low for scans like the
    training data and high for other images (another modality, noise, a wrong field of view): the
    inference compares it with the training volumes' values (:func:`summarise_residual_statistics`).

    Args:
        image: ``(1, *spatial)`` or ``(*spatial)`` intensities in [0, 1].
        maps: ``(R, *spatial)`` residual maps, one channel per mask ratio.

    Returns:
        the mean, None when the volume has no foreground.
    """
    image_t = plain_values(image).float()
    maps_t = plain_values(maps).float()
    if image_t.ndim == maps_t.ndim:
        image_t = image_t[0]
    foreground = image_t > _STATISTIC_FOREGROUND
    if not bool(foreground.any()):
        return None
    return float(maps_t[:, foreground].mean())


def summarise_residual_statistics(values: Sequence[float | None]) -> dict[str, Any] | None:
    """The training volumes' residual-map statistics, kept in the weights file: ``{"n_volumes",
    "mean", "max"}``; None without values."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not kept:
        return None
    return {"n_volumes": len(kept), "mean": float(np.mean(kept)), "max": float(np.max(kept))}
