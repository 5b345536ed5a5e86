"""The one volume-level preprocessing of brain T1 MRI shared by training, inference and evaluation.

:func:`brain_preprocessing` builds the MONAI pipeline that every config references
(``"$bundle.transforms.preprocessing.brain_preprocessing(...)"``), so that the MAE, the
segmentation network and the evaluation all see identically prepared volumes (SPEC section 1,
step 1): load, channel first, RAS orientation, optional resampling, in-brain robust intensity
scaling to [0, 1], binary lesion label.

The checks raise :class:`InvalidVolumeError` (or :class:`FileNotFoundError`) naming the file and
the problem: missing or unreadable file, 4D (multi-volume) input, NaN/inf or constant image,
image/label shape or grid mismatch. MONAI wraps transform errors into
``RuntimeError("applying transform ...")`` chains; :func:`find_volume_error` digs the original
error out of such a chain so that callers can re-raise the clear one.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapTransform, Orientationd, Spacingd

__all__ = [
    "BinarizeLabeld",
    "InvalidVolumeError",
    "LoadVolumed",
    "ResizeSliced",
    "ScaleIntensityPercentilesd",
    "ValidateVolumed",
    "brain_preprocessing",
    "find_volume_error",
]


class InvalidVolumeError(ValueError):
    """An input volume that the pipeline refuses; the message names the file and the problem."""


def _source(data: Mapping[Hashable, Any], key: Hashable) -> str:
    """The file a (loaded) item came from, for error messages."""
    value = data[key]
    if isinstance(value, MetaTensor):
        return str(value.meta.get("filename_or_obj", f"<{key}>"))
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    return f"<in-memory {key}>"


def find_volume_error(exc: BaseException) -> BaseException | None:
    """The :class:`InvalidVolumeError` or :class:`FileNotFoundError` behind a MONAI transform error.

    MONAI re-raises every exception inside a transform chain as
    ``RuntimeError("applying transform <...>")`` (once per nesting level); the message that names
    the file is at the bottom of the ``__cause__`` chain.

    Returns:
        the first such exception in the chain (``exc`` itself included), None if there is none.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (InvalidVolumeError, FileNotFoundError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class LoadVolumed(MapTransform):
    """:class:`~monai.transforms.LoadImaged` (MetaTensor output) with errors that name the file.

    Args:
        keys: keys of the file paths to load (NIfTI files or DICOM series folders).
        reader: reader name or class for :class:`~monai.transforms.LoadImaged`, None for automatic.
        dtype: data type of the loaded arrays.
        allow_missing_keys: skip keys absent from the data (e.g. no label for unlabeled data).
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: str | None = None,
        dtype: Any = np.float32,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImaged(keys, reader=reader, dtype=dtype, image_only=True, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
                raise FileNotFoundError(f"{key} file does not exist: {path}")
            try:
                d[key] = self.loader._loader(path)  # the array-level LoadImage of LoadImaged
            except Exception as e:
                raise InvalidVolumeError(
                    f"{path}: cannot read the {key} file ({type(e).__name__}: {e})"
                ) from e
        return d


class ValidateVolumed(MapTransform):
    """Refuse volumes the slice-wise pipeline cannot use, with messages naming the files.

    Expects channel-first data, i.e. after :class:`~monai.transforms.EnsureChannelFirstd`, where a
    3D volume is (1, X, Y, Z) and a 4D NIfTI (X, Y, Z, T) became (T, X, Y, Z).

    Checks: every key holds a single 3D volume (not 4D, not 2D); the image is finite and not
    constant; the label is finite and has the image's spatial shape and (within ``affine_atol``
    mm) its voxel-to-world affine.

    Args:
        image_key: key of the image.
        label_key: key of the label, None for image-only data. A missing label is allowed.
        affine_atol: tolerance of the image/label affine comparison in mm, None to skip it.
        allow_missing_keys: skip keys absent from the data.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        affine_atol: float | None = 1e-3,
        allow_missing_keys: bool = True,
    ) -> None:
        keys = [image_key] if label_key is None else [image_key, label_key]
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.label_key = label_key
        self.affine_atol = affine_atol

    def _check_3d(self, data: Mapping[Hashable, Any], key: str) -> torch.Tensor:
        volume = data[key]
        shape = tuple(volume.shape)
        if len(shape) == 4 and shape[0] > 1:
            raise InvalidVolumeError(
                f"{_source(data, key)}: the {key} is 4D ({shape[0]} volumes/channels of spatial shape {shape[1:]}); "
                "a single 3D volume is expected (extract one volume first)."
            )
        if len(shape) != 4:
            raise InvalidVolumeError(
                f"{_source(data, key)}: the {key} has shape {shape[1:]} (channel first {shape}); a 3D volume is expected."
            )
        return torch.as_tensor(volume)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.image_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"no {self.image_key!r} in the data (keys: {list(d)}).")
        image = self._check_3d(d, self.image_key)
        finite = torch.isfinite(image)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise InvalidVolumeError(
                f"{_source(d, self.image_key)}: the {self.image_key} holds {bad} NaN/inf voxel(s) of {image.numel()}."
            )
        if bool(image.max() == image.min()):
            raise InvalidVolumeError(
                f"{_source(d, self.image_key)}: the {self.image_key} is constant ({float(image.min())}); "
                "it cannot be intensity-normalised."
            )
        if self.label_key is None or self.label_key not in d:
            return d
        label = self._check_3d(d, self.label_key)
        if label.shape[1:] != image.shape[1:]:
            raise InvalidVolumeError(
                f"image/label shape mismatch: image {_source(d, self.image_key)} has spatial shape "
                f"{tuple(image.shape[1:])}, label {_source(d, self.label_key)} has {tuple(label.shape[1:])}."
            )
        if not bool(torch.isfinite(label).all()):
            raise InvalidVolumeError(
                f"{_source(d, self.label_key)}: the {self.label_key} holds NaN/inf values."
            )
        img, lab = d[self.image_key], d[self.label_key]
        if self.affine_atol is not None and isinstance(img, MetaTensor) and isinstance(lab, MetaTensor):
            a_img, a_lab = img.affine.double(), lab.affine.double()
            if a_img.shape != a_lab.shape or not torch.allclose(
                a_img, a_lab, atol=self.affine_atol, rtol=0.0
            ):
                raise InvalidVolumeError(
                    f"image/label grid mismatch: image {_source(d, self.image_key)} and label "
                    f"{_source(d, self.label_key)} have the same shape but different affines "
                    f"(max difference {float((a_img - a_lab).abs().max()):.4g} mm)."
                )
        return d


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
                raise InvalidVolumeError(f"{_source(d, key)}: the {key} has no intensity range to scale.")
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
        self.pad_to_square = pad_to_square

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            if hasattr(x, "as_tensor"):
                x = x.as_tensor()
            if x.ndim != 3:
                raise ValueError(
                    f"ResizeSliced expects (C, H, W) slices, got {key} of shape {tuple(x.shape)}."
                )
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
) -> Compose:
    """The volume pipeline of brain T1 MRI (ATLAS v2.0 and the synthetic look-alike).

    ``{"image": path, "label": path, ...}`` -> ``{"image": MetaTensor (1, X, Y, Z) float32 in
    [0, 1], "label": MetaTensor (1, X, Y, Z) label_dtype in {0, 1}, ...}`` in ``axcodes``
    orientation. Keys absent from a record (e.g. the label of unlabeled data) are skipped; other
    record entries (subject, cohort) pass through. The file names stay in each MetaTensor's
    ``meta["filename_or_obj"]``.

    Steps: :class:`LoadVolumed` -> :class:`~monai.transforms.EnsureChannelFirstd` ->
    :class:`ValidateVolumed` -> :class:`~monai.transforms.Orientationd` -> (optional)
    :class:`~monai.transforms.Spacingd` -> :class:`ScaleIntensityPercentilesd` (image) ->
    :class:`BinarizeLabeld` (label).

    Args:
        keys: keys of the files to load; must contain ``image_key`` (and ``label_key`` to use labels).
        image_key: key of the T1 image.
        label_key: key of the lesion mask, None for image-only pipelines (inference).
        axcodes: target orientation; ATLAS v2.0 is in MNI-152 space, "RAS" keeps the third
            spatial axis axial (inferior to superior).
        pixdim: resample to this spacing (mm) when given; None keeps the grid (ATLAS is already
            on the 1 mm MNI grid, SPEC section 7).
        lower_percentile: intensity percentile mapped to 0.
        upper_percentile: intensity percentile mapped to 1.
        nonzero: percentiles over nonzero (in-head) voxels only, background kept at 0.
        label_dtype: dtype of the binary label.
        affine_atol: tolerance (mm) of the image/label affine check, None to skip it.
        reader: image reader for :class:`~monai.transforms.LoadImaged`, None for automatic.
    """
    keys = list(keys)
    if image_key not in keys:
        raise ValueError(f"image_key {image_key!r} must be one of keys {keys}.")
    label = label_key if label_key is not None and label_key in keys else None
    transforms: list = [
        LoadVolumed(keys, reader=reader),
        EnsureChannelFirstd(keys, allow_missing_keys=True),
        ValidateVolumed(image_key=image_key, label_key=label, affine_atol=affine_atol),
        # labels=None: take the axis labels from the MetaTensor's space (MONAI 1.6 default, stated to silence its warning)
        Orientationd(keys, axcodes=axcodes, labels=None, allow_missing_keys=True),
    ]
    if pixdim is not None:
        modes = ["bilinear" if k != label else "nearest" for k in keys]
        transforms.append(Spacingd(keys, pixdim=pixdim, mode=modes, allow_missing_keys=True))
    transforms.append(
        ScaleIntensityPercentilesd(image_key, lower_percentile, upper_percentile, nonzero=nonzero)
    )
    if label is not None:
        transforms.append(BinarizeLabeld(label, dtype=label_dtype))
    return Compose(transforms)
