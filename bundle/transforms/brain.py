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
"""The volume pipelines of brain T1 MRI shared by training, inference and evaluation.

- :func:`brain_preprocessing` -- T1 on the MNI grid as given (ATLAS v2.0): load, channel first, RAS,
  optional resampling, robust in-brain intensity scaling to [0, 1], binary lesion label.
- :func:`mni_brain_preprocessing` -- MNI space at any resolution or crop, resampled onto the 1 mm grid.
- :func:`native_brain_preprocessing` -- native scanner space, ITK affine registration to MNI-152.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.transforms import Compose, EnsureChannelFirstd, Orientationd

from .intensity import BinarizeLabeld, ScaleIntensityPercentilesd
from .io import LoadVolumed, ValidateVolumed
from .mni import EnsureMNIGridd, RegisterToMNId
from .spatial import ResampleToSpacingd

__all__ = ["brain_preprocessing", "mni_brain_preprocessing", "native_brain_preprocessing"]


def brain_preprocessing(
    keys: Sequence[str] = ("image", "label"),
    image_key: str = "image",
    label_key: str | None = "label",
    axcodes: str = "RAS",
    pixdim: Sequence[float] | None = None,
    lower_percentile: float = 0.5,
    upper_percentile: float = 99.5,
    nonzero: bool = True,
    label_dtype: torch.dtype = torch.uint8,
    affine_atol: float | None = 1e-3,
    reader: str | None = None,
    dicom_modality: str | None = "MR",
) -> Compose:
    """The volume pipeline of brain T1 MRI (ATLAS v2.0 and the synthetic look-alike).

    ``{"image": path, "label": path, ...}`` -> ``{"image": MetaTensor (1, X, Y, Z) float32 in
    [0, 1], "label": MetaTensor (1, X, Y, Z) label_dtype in {0, 1}, ...}`` in ``axcodes``
    orientation. Keys absent from a record (e.g. the label of unlabeled data) are skipped; other
    record entries (subject, cohort) pass through. The file names stay in each MetaTensor's
    ``meta["filename_or_obj"]``.

    Steps: :class:`LoadVolumed` -> :class:`~monai.transforms.EnsureChannelFirstd` ->
    :class:`ValidateVolumed` -> :class:`~monai.transforms.Orientationd` -> (optional)
    :class:`~bundle.transforms.spatial.ResampleToSpacingd` -> :class:`ScaleIntensityPercentilesd` (image) ->
    :class:`BinarizeLabeld` (label).

    Args:
        keys: keys of the files to load; must contain ``image_key`` (and ``label_key`` to use labels).
        image_key: key of the T1 image.
        label_key: key of the lesion mask, None for image-only pipelines (inference).
        axcodes: target orientation; ATLAS v2.0 is in MNI-152 space, "RAS" keeps the third
            spatial axis axial (inferior to superior).
        pixdim: resample to this spacing (mm) when given; None keeps the grid (ATLAS is already
            on the 1 mm MNI grid, docs/method.md §7).
        lower_percentile: intensity percentile mapped to 0.
        upper_percentile: intensity percentile mapped to 1.
        nonzero: percentiles over nonzero (in-head) voxels only, background kept at 0.
        label_dtype: dtype of the binary label.
        affine_atol: tolerance (mm) of the image/label affine check, None to skip it.
        reader: image reader for :class:`~monai.transforms.LoadImaged`, None for automatic.
        dicom_modality: the Modality a DICOM series folder must have (None accepts any).
    """
    keys = list(keys)
    if image_key not in keys:
        raise ValueError(f"image_key {image_key!r} must be one of keys {keys}.")
    label = label_key if label_key is not None and label_key in keys else None
    transforms: list = [
        LoadVolumed(keys, reader=reader, dicom_modality=dicom_modality),
        EnsureChannelFirstd(keys, allow_missing_keys=True),
        ValidateVolumed(image_key=image_key, label_key=label, affine_atol=affine_atol),
        # labels=None: take the axis labels from the MetaTensor's space (MONAI 1.6 default, stated to silence its warning)
        Orientationd(keys, axcodes=axcodes, labels=None, allow_missing_keys=True),
    ]
    if pixdim is not None:
        modes = ["bilinear" if k != label else "nearest" for k in keys]
        transforms.append(ResampleToSpacingd(keys, pixdim=pixdim, mode=modes, allow_missing_keys=True))
    transforms.append(ScaleIntensityPercentilesd(image_key, lower_percentile, upper_percentile, nonzero=nonzero))
    if label is not None:
        transforms.append(BinarizeLabeld(label, dtype=label_dtype))
    return Compose(transforms)


def _insert_after_orientation(pipeline: Compose, transform: Any) -> Compose:
    transforms = list(pipeline.transforms)
    index = next(i for i, t in enumerate(transforms) if isinstance(t, Orientationd))
    return Compose(transforms[: index + 1] + [transform] + transforms[index + 1 :])


def native_brain_preprocessing(
    keys: Sequence[str] = ("image", "label"),
    image_key: str = "image",
    label_key: str | None = "label",
    output_resolution_mm: int = 1,
    registration_resolution_mm: int = 3,
    registration_kwargs: Mapping[str, Any] | None = None,
    info_key: str | None = "mni_registration",
    **preprocessing_kwargs: Any,
) -> Compose:
    """:func:`~bundle.transforms.brain.brain_preprocessing` for native-space T1 volumes.

    Load -> channel first -> validate -> RAS -> :class:`RegisterToMNId` (image bilinear, label
    nearest, onto the MNI grid of ``output_resolution_mm``) -> in-brain percentile scaling ->
    binary label. ``monai.transforms.Invertd`` with this Compose takes predictions back to the
    native grid.

    Args:
        keys: keys of the files to load (must contain ``image_key``).
        image_key: key of the T1 image (the one registered).
        label_key: key of the lesion mask, None for image-only pipelines.
        output_resolution_mm: output grid (1 = the ATLAS 197 x 233 x 189 grid).
        registration_resolution_mm: template resolution of the registration.
        registration_kwargs: further arguments of :func:`register_affine_to_mni`.
        info_key: data key of the registration record, None to not store it.
        preprocessing_kwargs: further arguments of ``brain_preprocessing`` (percentiles, reader, ...);
            ``pixdim`` is refused (the grid is the MNI grid).
    """
    if preprocessing_kwargs.get("pixdim") is not None:
        raise ValueError("native_brain_preprocessing resamples onto the MNI grid; pixdim cannot be set.")
    base = brain_preprocessing(keys=keys, image_key=image_key, label_key=label_key, **preprocessing_kwargs)
    ordered = [image_key] + [k for k in keys if k != image_key]
    register = RegisterToMNId(
        ordered,
        image_key=image_key,
        mode=("bilinear", "nearest"),
        output_resolution_mm=output_resolution_mm,
        registration_resolution_mm=registration_resolution_mm,
        info_key=info_key,
        registration_kwargs=registration_kwargs,
        allow_missing_keys=True,
    )
    return _insert_after_orientation(base, register)


def mni_brain_preprocessing(
    keys: Sequence[str] = ("image", "label"),
    image_key: str = "image",
    label_key: str | None = "label",
    resolution_mm: int = 1,
    on_mismatch: str = "resample",
    atol_mm: float = 1e-2,
    **preprocessing_kwargs: Any,
) -> Compose:
    """:func:`~bundle.transforms.brain.brain_preprocessing` with :class:`EnsureMNIGridd` after RAS.

    For data that should already be in MNI space (ATLAS v2.0 and other MNI-registered sets):
    on-grid volumes pass unchanged, MNI-space volumes at another resolution or crop are resampled
    onto the grid (``on_mismatch="resample"``) or refused (``"error"``), native-space volumes are
    refused with a pointer to :func:`native_brain_preprocessing`.

    Args:
        keys, image_key, label_key: as for ``brain_preprocessing``.
        resolution_mm: target grid (1 = 197 x 233 x 189).
        on_mismatch: ``"resample"`` or ``"error"`` (see :class:`EnsureMNIGridd`).
        atol_mm: tolerance of the grid check.
        preprocessing_kwargs: further arguments of ``brain_preprocessing``; not ``pixdim``.
    """
    if preprocessing_kwargs.get("pixdim") is not None:
        raise ValueError("mni_brain_preprocessing keeps the MNI grid; pixdim cannot be set.")
    base = brain_preprocessing(keys=keys, image_key=image_key, label_key=label_key, **preprocessing_kwargs)
    ordered = [image_key] + [k for k in keys if k != image_key]
    ensure = EnsureMNIGridd(
        ordered,
        mode=("bilinear", "nearest"),
        on_mismatch=on_mismatch,
        atol_mm=atol_mm,
        resolution_mm=resolution_mm,
        allow_missing_keys=True,
    )
    return _insert_after_orientation(base, ensure)
