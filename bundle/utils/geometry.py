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
"""Voxel-to-world affines: checked 4 x 4 matrices, voxel sizes, RAS from a MetaTensor's own space.

Affines are voxel-to-world 4 x 4 matrices in millimetres; RAS+ unless said otherwise (MONAI's
default). A MetaTensor read by ITK may carry an LPS affine (``meta["space"] == "LPS"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

__all__ = ["LPS_FLIP", "as_affine", "ras_affine", "voxel_spacing"]

#: diag(-1, -1, 1, 1): LPS <-> RAS (its own inverse)
LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def as_affine(affine: Any) -> np.ndarray:
    """A 4 x 4 float64 numpy affine (tensor or array input); ValueError otherwise."""
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"expected a finite 4 x 4 voxel-to-world affine, got shape {matrix.shape}.")
    return matrix


def voxel_spacing(affine: Any) -> tuple[float, ...]:
    """Voxel size (mm) per axis: the column norms of the 3 x 3 part of a 4 x 4 affine."""
    return tuple(float(s) for s in np.linalg.norm(as_affine(affine)[:3, :3], axis=0))


def ras_affine(img: Any) -> tuple[np.ndarray, np.ndarray]:
    """(RAS affine, matrix taking RAS affines back to the image's own world space) of a MetaTensor."""
    affine = as_affine(img.affine)
    space = str(img.meta.get("space", "RAS")).upper() if isinstance(img, MetaTensor) else "RAS"
    to_own = LPS_FLIP if space == "LPS" else np.eye(4)
    return to_own @ affine, to_own
