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
"""CT volume preprocessing: Hounsfield windows, the HU check, and calcium post-processing (``docs/ct.md``).

:func:`ct_preprocessing` is the CT counterpart of
:func:`~bundle.transforms.brain.brain_preprocessing` (docs/method.md §1: "CT
intensities windowed in HU"): load a NIfTI / MetaImage file or a DICOM series folder, channel
first, validate, orient, optionally resample, window the image, binarise the label. Only the
image is windowed; ``keep_hu_key`` keeps a copy in HU on the same grid for the orCaScore
post-processing (:class:`CalciumCandidatesd`), which thresholds at 130 HU.

Windows (:data:`CT_WINDOWS`, :class:`HUWindow`): ``[level - width / 2, level + width / 2]`` HU
is clipped and mapped linearly onto ``output_range`` (default [0, 1]).

HU check (:func:`hounsfield_problem`): a CT in HU contains air or lung (-1000 to -200 HU), so a
volume with fewer than ``min_air_fraction`` (0.1 %) of its voxels in [-1100, -200] is refused --
values below -1100 are not physical HU (scanner padding such as -2048 or -3024) and are ignored.
This catches normalised ([0, 1]) or 8-bit images and DICOM stored values without the rescale
(air near 0, water near 1024, e.g. [0, 4095]) even when padded. Crops without air (a liver ROI)
and synthetic data can opt out with ``check_hu=False``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from bundle.data.checks import hounsfield_problem, plain_values
from bundle.metrics.calcium import calcium_candidates
from bundle.metrics.segmentation import connectivity_structure
from bundle.utils.errors import InvalidVolumeError, source_of
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor
from monai.transforms import Compose, CopyItemsd, EnsureChannelFirstd, MapTransform, Orientationd
from scipy import ndimage

from .intensity import BinarizeLabeld
from .io import LoadVolumed, ValidateVolumed
from .spatial import ResampleToSpacingd

__all__ = ["CT_WINDOWS", "CalciumCandidatesd", "HUWindow", "HUWindowd", "ct_preprocessing", "resolve_window"]


@dataclass(frozen=True)
class HUWindow:
    """A CT display window: ``level`` (centre) and ``width`` in HU.

    Attributes:
        level: window centre in HU.
        width: window width in HU (> 0); the window is ``[level - width / 2, level + width / 2]``.
    """

    level: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.level) and math.isfinite(self.width)) or self.width <= 0:
            raise ValueError(f"a HU window needs a finite level and a finite width > 0, got {self}.")

    @classmethod
    def from_range(cls, min_hu: float, max_hu: float) -> HUWindow:
        """The window ``[min_hu, max_hu]``."""
        min_hu, max_hu = float(min_hu), float(max_hu)
        if not (math.isfinite(min_hu) and math.isfinite(max_hu)) or max_hu <= min_hu:
            raise ValueError(f"a HU window range needs finite min < max, got [{min_hu}, {max_hu}].")
        return cls(level=(min_hu + max_hu) / 2.0, width=max_hu - min_hu)

    @property
    def min_hu(self) -> float:
        """Lower edge in HU (mapped to the start of the output range)."""
        return self.level - self.width / 2.0

    @property
    def max_hu(self) -> float:
        """Upper edge in HU (mapped to the end of the output range)."""
        return self.level + self.width / 2.0


#: Window presets. ``calcium`` ([-500, 1100] HU): the 130 HU calcium threshold sits at 0.39 of
#: the range, far from both edges, and every Agatston density band (130, 200, 300, >= 400 HU), fat,
#: blood and soft tissue stay on the linear part; only lung and air (irrelevant to coronary
#: calcium) saturate at 0, and only the densest bone/metal above 1100 HU at 1.
CT_WINDOWS: dict[str, HUWindow] = {
    "lung": HUWindow(level=-600.0, width=1500.0),
    "mediastinum": HUWindow(level=50.0, width=350.0),
    "calcium": HUWindow(level=300.0, width=1600.0),
}

WindowLike = str | HUWindow | Sequence[float] | Mapping[str, float]


def resolve_window(window: WindowLike) -> HUWindow:
    """A window from a preset name, an :class:`HUWindow`, ``(level, width)`` or a mapping.

    Args:
        window: ``"lung"`` / ``"mediastinum"`` / ``"calcium"`` (:data:`CT_WINDOWS`), an
            :class:`HUWindow`, a pair ``(level, width)``, ``{"level": l, "width": w}`` or
            ``{"min": a, "max": b}`` (a range in HU; the mapping forms suit JSON configs).

    Raises:
        ValueError: unknown name, wrong form, non-finite values, width <= 0 or min >= max.
    """
    presets = ", ".join(sorted(CT_WINDOWS))
    if isinstance(window, HUWindow):
        return window
    if isinstance(window, str):
        name = window.strip().lower()
        if name not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {window!r}; presets: {presets}, or (level, width) / {{'min', 'max'}}.")
        return CT_WINDOWS[name]
    if isinstance(window, Mapping):
        keys = set(window)
        if keys == {"level", "width"}:
            return HUWindow(float(window["level"]), float(window["width"]))
        if keys == {"min", "max"}:
            return HUWindow.from_range(window["min"], window["max"])
        raise ValueError(f"a window mapping needs keys {{'level', 'width'}} or {{'min', 'max'}}, got {sorted(keys)}.")
    if isinstance(window, Sequence) and len(window) == 2:
        try:
            level, width = float(window[0]), float(window[1])
        except (TypeError, ValueError) as e:
            raise ValueError(f"a (level, width) window needs two numbers, got {window!r}.") from e
        return HUWindow(level, width)
    raise ValueError(
        f"cannot read {window!r} as a CT window; presets: {presets}, or (level, width) / {{'min', 'max'}}."
    )


class HUWindowd(MapTransform):
    """Clip CT images to a HU window and map it linearly onto ``output_range``.

    ``window.min_hu`` maps to ``output_range[0]``, ``window.max_hu`` to ``output_range[1]``; values
    outside are clipped. MetaTensor metadata and the applied operations are kept (the window is
    not an invertible spatial transform; ``Invertd`` ignores it).

    Args:
        keys: keys of the CT images (in HU).
        window: preset name, ``(level, width)`` or mapping (:func:`resolve_window`).
        output_range: the values of the window's lower and upper edges.
        check_hu: refuse images that do not look like HU (:func:`hounsfield_problem`) with an
            :class:`~bundle.transforms.io.InvalidVolumeError` naming the file.
        min_air_fraction: the HU check's required fraction of air/lung voxels.
        dtype: output dtype (floating point).
        allow_missing_keys: skip keys absent from the data.
    """

    def __init__(
        self,
        keys: KeysCollection,
        window: WindowLike = "lung",
        output_range: Sequence[float] = (0.0, 1.0),
        check_hu: bool = True,
        min_air_fraction: float = 1e-3,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.window = resolve_window(window)
        out = tuple(float(v) for v in output_range)
        if len(out) != 2 or not all(math.isfinite(v) for v in out) or out[0] == out[1]:
            raise ValueError(f"output_range must be two different finite numbers, got {output_range!r}.")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point type, got {dtype}.")
        self.output_range = out
        self.check_hu = check_hu
        self.min_air_fraction = float(min_air_fraction)
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        low, high = self.window.min_hu, self.window.max_hu
        a, b = self.output_range
        for key in self.key_iterator(d):
            image = d[key]
            if self.check_hu:
                problem = hounsfield_problem(image, self.min_air_fraction)
                if problem is not None:
                    raise InvalidVolumeError(
                        f"{source_of(d[key], key)}: the {key} is not in Hounsfield units: {problem}"
                    )
            values = plain_values(image).to(torch.float64)
            scaled = ((values.clamp(low, high) - low) / (high - low) * (b - a) + a).to(self.dtype)
            if isinstance(image, MetaTensor):
                out = image.clone()
                out.set_array(scaled)
                d[key] = out
            else:
                d[key] = scaled
        return d


class CalciumCandidatesd(MapTransform):
    """orCaScore post-processing of predicted masks: keep the voxels at or above ``threshold_hu``.

    Applies :func:`bundle.metrics.calcium.calcium_candidates` to each binary prediction with the
    HU image of ``hu_key`` (e.g. ``ct_preprocessing(keep_hu_key="image_hu")``). Prediction and
    HU image must share the grid: apply it before ``Invertd`` (or invert the HU image too).
    Output: the prediction's shape (channel kept), dtype and metadata.

    Args:
        keys: keys of binary predictions ``(1, X, Y, Z)`` or ``(X, Y, Z)``.
        hu_key: key of the CT in HU on the prediction's grid.
        threshold_hu: calcium threshold; voxels ``>= threshold_hu`` are kept.
        connectivity: lesion connectivity (6 = faces), used by ``min_voxels`` and ``components_key``.
        min_voxels: drop lesions smaller than this many voxels (1 keeps all).
        components_key: when given, also store the int32 map of the kept lesions (1..n, 0 =
            background, channel as the prediction's) under ``f"{key}_{components_key}"`` for each key.
        check_hu: refuse HU images that do not look like HU.
        affine_atol: tolerance (mm) of the prediction/HU affine comparison, None to skip it.
        allow_missing_keys: skip keys absent from the data.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        hu_key: str = "image_hu",
        threshold_hu: float = 130.0,
        connectivity: int = 6,
        min_voxels: int = 1,
        components_key: str | None = None,
        check_hu: bool = True,
        affine_atol: float | None = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.hu_key = hu_key
        self.threshold_hu = float(threshold_hu)
        self.structure = connectivity_structure(3, connectivity)
        self.connectivity = connectivity
        self.min_voxels = int(min_voxels)
        self.components_key = components_key
        self.check_hu = check_hu
        self.affine_atol = affine_atol

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.hu_key not in d:
            raise KeyError(f"CalciumCandidatesd needs the CT in HU under {self.hu_key!r} (keys: {list(d)}).")
        hu = d[self.hu_key]
        hu_values = plain_values(hu)
        for key in self.key_iterator(d):
            pred = d[key]
            pred_values = plain_values(pred)
            if pred_values.shape[-3:] != hu_values.shape[-3:]:
                raise ValueError(
                    f"{source_of(d[key], key)}: {key} has spatial shape {tuple(pred_values.shape[-3:])}, {self.hu_key} "
                    f"has {tuple(hu_values.shape[-3:])}; apply CalciumCandidatesd before Invertd (same grid)."
                )
            same_grid_known = isinstance(pred, MetaTensor) and isinstance(hu, MetaTensor)
            if (
                self.affine_atol is not None
                and same_grid_known
                and not torch.allclose(pred.affine.double(), hu.affine.double(), atol=self.affine_atol, rtol=0.0)
            ):
                raise ValueError(
                    f"{source_of(d[key], key)}: {key} and {self.hu_key} have different affines; apply "
                    "CalciumCandidatesd before Invertd (same grid)."
                )
            try:
                kept = calcium_candidates(
                    pred_values.cpu().numpy(),
                    hu_values.cpu().numpy(),
                    threshold=self.threshold_hu,
                    connectivity=self.connectivity,
                    min_voxels=self.min_voxels,
                    check_hu=self.check_hu,
                )
            except ValueError as e:
                raise ValueError(f"{source_of(d[key], key)}: calcium post-processing of {key}: {e}") from e
            kept_t = torch.from_numpy(kept).reshape(pred_values.shape)
            out = kept_t.to(device=pred_values.device, dtype=pred_values.dtype)
            d[key] = self._like(pred, out)
            if self.components_key is not None:
                labels, _ = ndimage.label(kept, structure=self.structure)
                labels_t = torch.from_numpy(labels.astype(np.int32)).reshape(pred_values.shape)
                d[f"{key}_{self.components_key}"] = self._like(pred, labels_t)
        return d

    @staticmethod
    def _like(reference: Any, values: torch.Tensor) -> Any:
        if isinstance(reference, MetaTensor):
            return MetaTensor(values, meta=reference.meta, applied_operations=reference.applied_operations)
        return values


def ct_preprocessing(
    keys: Sequence[str] = ("image", "label"),
    image_key: str = "image",
    label_key: str | None = "label",
    window: WindowLike = "lung",
    axcodes: str = "RAS",
    pixdim: Sequence[float] | None = None,
    label_dtype: torch.dtype = torch.uint8,
    affine_atol: float | None = 1e-3,
    reader: str | ImageReader | None = None,
    keep_hu_key: str | None = None,
    check_hu: bool = True,
    output_range: Sequence[float] = (0.0, 1.0),
    require_modality: str | None = "CT",
    series_uid: str | None = None,
) -> Compose:
    """The volume pipeline of CT (MSD Lung, orCaScore and their synthetic look-alikes).

    ``{"image": file or DICOM folder, "label": file, ...}`` -> ``{"image": MetaTensor (1, X, Y, Z)
    float32 in output_range, "label": MetaTensor (1, X, Y, Z) label_dtype in {0, 1},
    keep_hu_key: MetaTensor (1, X, Y, Z) float32 in HU, ...}`` in ``axcodes`` orientation. Keys
    absent from a record are skipped; other entries pass through. Invertible like
    :func:`~bundle.transforms.brain.brain_preprocessing`: ``Invertd(transform=<this>,
    orig_keys=image_key)`` takes predictions back to the input's grid and affine.

    Steps: :class:`~bundle.transforms.io.LoadVolumed` (DICOM series of Modality
    ``require_modality``) -> :class:`~monai.transforms.EnsureChannelFirstd` ->
    :class:`~bundle.transforms.io.ValidateVolumed` -> :class:`~monai.transforms.Orientationd` ->
    (optional) :class:`~bundle.transforms.spatial.ResampleToSpacingd` -> (optional) ``CopyItemsd``
    of the HU image -> :class:`HUWindowd` (image only) -> :class:`~bundle.transforms.intensity.BinarizeLabeld`.

    Args:
        keys: keys of the files to load; must contain ``image_key`` (and ``label_key`` to use labels).
        image_key: key of the CT.
        label_key: key of the lesion mask, None for image-only pipelines (inference).
        window: HU window of the image (:func:`resolve_window`): ``"lung"`` for MSD Lung,
            ``"calcium"`` for orCaScore.
        axcodes: target orientation; "RAS" keeps the third spatial axis axial.
        pixdim: resample to this spacing (mm) when given (bilinear image, nearest label).
        label_dtype: dtype of the binary label.
        affine_atol: tolerance (mm) of the image/label affine check, None to skip it.
        reader: image reader of files for ``LoadImage``, None for automatic.
        keep_hu_key: store the oriented (resampled) image in HU under this key before windowing.
        check_hu: refuse images that are not in HU (:func:`hounsfield_problem`).
        output_range: values of the window's edges.
        require_modality: Modality required of DICOM series; None accepts any.
        series_uid: series to read from DICOM folders that hold several.
    """
    keys = list(keys)
    if image_key not in keys:
        raise ValueError(f"image_key {image_key!r} must be one of keys {keys}.")
    if keep_hu_key is not None and keep_hu_key in keys:
        raise ValueError(f"keep_hu_key {keep_hu_key!r} must differ from the loaded keys {keys}.")
    label = label_key if label_key is not None and label_key in keys else None
    windowing = HUWindowd(image_key, window=window, output_range=output_range, check_hu=check_hu)
    transforms: list = [
        LoadVolumed(keys, reader=reader, dicom_modality=require_modality, series_uid=series_uid),
        EnsureChannelFirstd(keys, allow_missing_keys=True),
        ValidateVolumed(image_key=image_key, label_key=label, affine_atol=affine_atol),
        # labels=None: take the axis labels from the MetaTensor's space (MONAI 1.6 default, stated to silence its warning)
        Orientationd(keys, axcodes=axcodes, labels=None, allow_missing_keys=True),
    ]
    if pixdim is not None:
        modes = ["bilinear" if k != label else "nearest" for k in keys]
        transforms.append(ResampleToSpacingd(keys, pixdim=pixdim, mode=modes, allow_missing_keys=True))
    if keep_hu_key is not None:
        transforms.append(CopyItemsd(image_key, names=keep_hu_key))
    transforms.append(windowing)
    if label is not None:
        transforms.append(BinarizeLabeld(label, dtype=label_dtype))
    return Compose(transforms)
