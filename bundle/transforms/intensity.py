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
"""Intensities and labels: robust in-brain scaling to [0, 1], binary lesion masks."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from bundle.utils.errors import InvalidVolumeError, source_of
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["BinarizeLabeld", "ScaleIntensityPercentilesd"]


class ScaleIntensityPercentilesd(MapTransform):
    """Robust in-brain intensity scaling: percentiles ``lower``/``upper`` of the foreground to 0/1.

    The percentiles are computed over the voxels that differ from zero (``nonzero=True``): in
    MNI-registered T1 volumes most voxels are zero background, which would otherwise pin the
    lower percentile to 0 and make the scaling depend on the head's size in the field of view.
    Values are clipped to [0, 1]; with ``nonzero`` the background stays 0.

    Args:
        keys: keys of the images to scale (channel-first tensors, all channels together).
        lower: lower percentile in [0, 100), mapped to 0.
        upper: upper percentile in (lower, 100], mapped to 1.
        nonzero: compute the percentiles over nonzero voxels only and keep zeros at 0.
        allow_missing_keys: skip keys absent from the data.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 0.5,
        upper: float = 99.5,
        nonzero: bool = True,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}.")
        self.lower = lower
        self.upper = upper
        self.nonzero = nonzero

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            values = torch.as_tensor(image).detach().float()
            mask = values != 0 if self.nonzero else torch.ones_like(values, dtype=torch.bool)
            if not bool(mask.any()):
                mask = torch.ones_like(values, dtype=torch.bool)
            # numpy: torch.quantile refuses inputs of more than 2**24 elements (a 1 mm brain has ~8.7 M)
            samples = values[mask].cpu().numpy()
            low, high = (float(v) for v in np.percentile(samples, [self.lower, self.upper]))
            if high <= low:  # a very peaked histogram: fall back to the full range
                low, high = float(samples.min()), float(samples.max())
            if high <= low:
                raise InvalidVolumeError(f"{source_of(d[key], key)}: the {key} has no intensity range to scale.")
            scaled = ((values - low) / (high - low)).clamp_(0.0, 1.0)
            if self.nonzero:
                scaled = torch.where(mask, scaled, torch.zeros_like(scaled))
            if isinstance(image, MetaTensor):
                image = image.clone()
                image.set_array(scaled.to(image.device))
                d[key] = image
            else:
                d[key] = scaled
        return d


class BinarizeLabeld(MapTransform):
    """Lesion label to a binary mask (voxels > ``threshold`` are lesion) of a compact dtype.

    Args:
        keys: keys of the labels.
        threshold: values above it are lesion (0: any nonzero label value, e.g. 1 or 255).
        dtype: output dtype; ``torch.uint8`` keeps cached volumes 4x smaller than float32, the
            slice transform of the segmentation training casts to float for the loss.
        allow_missing_keys: skip keys absent from the data (unlabeled data).
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.0,
        dtype: torch.dtype = torch.uint8,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            binary = (torch.as_tensor(label) > self.threshold).to(self.dtype)
            if isinstance(label, MetaTensor):
                out = MetaTensor(binary, meta=label.meta, applied_operations=label.applied_operations)
                d[key] = out
            else:
                d[key] = binary
        return d
