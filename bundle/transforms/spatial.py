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
"""2D slices to the MAE's square input."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from bundle.utils.flags import as_flag
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Spacing
from monai.utils import ensure_tuple_rep
from scipy import ndimage

__all__ = ["ResampleToSpacingd", "ResizeSliced"]


class ResizeSliced(MapTransform):
    """2D slices ``(C, H, W)`` to the MAE's square input ``(C, size, size)``.

    With ``pad_to_square`` the slice is first zero-padded symmetrically to a square of its longer
    side, so the anatomy keeps its proportions (an ATLAS axial slice is 197 x 233); without, it is
    resized directly (the aspect ratio changes). The resize is bilinear with antialiasing
    (``torch.nn.functional.interpolate``, as the residual-map transform resizes for the MAE), so
    the MAE is trained on slices prepared like those it reconstructs later. Whichever mode trains
    the MAE must also be the one used when computing its residual maps.

    The output is a plain tensor: the slice's affine no longer describes the padded, resized grid.

    Args:
        keys: keys of the slices.
        size: side of the output square (the MAE's ``img_size``).
        pad_to_square: zero-pad to a square before resizing.
        allow_missing_keys: skip keys absent from the data.
    """

    def __init__(
        self, keys: KeysCollection, size: int, pad_to_square: bool = True, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(size) < 1:
            raise ValueError(f"size must be positive, got {size}.")
        self.size = int(size)
        self.pad_to_square = as_flag(pad_to_square, "pad_to_square")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            if hasattr(x, "as_tensor"):
                x = x.as_tensor()
            if x.ndim != 3:
                raise ValueError(f"ResizeSliced expects (C, H, W) slices, got {key} of shape {tuple(x.shape)}.")
            x = x.float()
            if self.pad_to_square:
                h, w = x.shape[1:]
                side = max(h, w)
                top, left = (side - h) // 2, (side - w) // 2
                x = torch.nn.functional.pad(x, (left, side - w - left, top, side - h - top))
            if tuple(x.shape[1:]) != (self.size, self.size):
                x = torch.nn.functional.interpolate(
                    x[None], size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
                )[0]
            d[key] = x
        return d


class ResampleToSpacingd(MapTransform, InvertibleTransform):
    """Resample channel-first volumes to a voxel spacing, invertibly (MONAI's ``Spacing`` per key).

    MONAI's ``Spacingd`` also updates every ``<key>_*`` entry of the item as if it were the key's
    meta dict; MONAI Label's items carry ``image_path`` (a string), on which it fails. This
    transform touches only its keys. ``Invertd`` (or :meth:`inverse`) resamples back to the
    input's grid.

    Downsampling an image (any mode but ``nearest``) first smooths each coarsened axis with a
    Gaussian of sigma ``(factor - 1) / 2`` voxels (scikit-image's anti-aliasing rule): trilinear
    sampling of every third voxel of a 1 mm scan keeps its noise and aliases its edges, which a
    model trained on 3 mm scans never saw (their voxels average the tissue inside them).

    Args:
        keys: keys of the volumes (MetaTensors ``(C, X, Y, Z)`` with their affine).
        pixdim: target spacing (mm) per axis; a value <= 0 keeps that axis' spacing.
        mode: interpolation per key (``"bilinear"`` for images, ``"nearest"`` for labels).
        allow_missing_keys: skip keys absent from the data.
    """

    def __init__(
        self,
        keys: KeysCollection,
        pixdim: Sequence[float],
        mode: str | Sequence[str] = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spacing = Spacing(pixdim=pixdim)
        self.modes = ensure_tuple_rep(mode, len(self.keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.modes):
            img = d[key]
            if mode != "nearest":
                img = self._antialias(img)
            d[key] = self.spacing(img, mode=mode)
        return d

    def antialias_sigmas(self, img: MetaTensor) -> list[float]:
        """Gaussian sigma (voxels) per spatial axis of ``img`` (C, X, Y, Z) before resampling; 0 where
        the axis keeps or refines its spacing."""
        current = torch.linalg.norm(torch.as_tensor(img.affine, dtype=torch.float64)[:3, :3], dim=0).tolist()
        target = ensure_tuple_rep(self.spacing.pixdim, len(current))
        return [max(0.0, (float(t) / c - 1.0) / 2.0) if float(t) > 0 else 0.0 for t, c in zip(target, current)]

    def _antialias(self, img: Any) -> Any:
        if not isinstance(img, MetaTensor) or img.ndim != 4:
            return img  # Spacing reports what it cannot resample
        sigmas = self.antialias_sigmas(img)
        if not any(sigma > 0 for sigma in sigmas):
            return img
        # edges replicated (a zero border would pull the rim of a CT in HU towards water)
        values = ndimage.gaussian_filter(img.detach().cpu().numpy(), sigma=[0.0, *sigmas], mode="nearest")
        values = torch.as_tensor(values, dtype=img.dtype, device=img.device)
        out = img.clone()
        out.set_array(values)  # same meta and trace: only the values change
        return out

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.spacing.inverse(d[key])
        return d
