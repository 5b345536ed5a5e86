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
"""Brain T1 volumes onto the MNI-152 grid: grid checks and invertible resampling or registration.

The GRCSF brain pipeline works on the MNI-152 ICBM 2009a 1 mm grid (197 x 233 x 189 voxels,
docs/method.md, data), where ATLAS v2.0 already is. These transforms bring other inputs there and
back (docs/registration.md shows how the pieces compose):

- :func:`check_mni_grid` -- is a volume exactly on the MNI grid (shape, affine within a tolerance)?
- :func:`check_mni_space` -- is a volume plausibly in MNI space at all (axis-aligned voxel axes,
  world extent covering the template brain, NIfTI world coordinates present)?
- :class:`EnsureMNIGridd` -- passes a volume on the grid unchanged, resamples an MNI-space volume at
  another resolution or crop onto the grid (invertible: MONAI's ``Invertd`` takes predictions
  back), refuses a native-space volume with a message pointing to :class:`RegisterToMNId`.
- :class:`RegisterToMNId` -- registers the image (:func:`bundle.registration.register_affine_to_mni`)
  and resamples it and its label (nearest) onto the MNI grid; its ``inverse`` brings a prediction on
  the MNI grid back to the native grid and affine (also through ``Invertd``).

Affines are voxel-to-world 4 x 4 matrices in RAS+ millimetres (MONAI's default; MetaTensors whose
``meta["space"]`` is LPS are converted).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from bundle.data.mni import MNITemplate, check_resolution, mni152_grid
from bundle.registration import register_affine_to_mni
from bundle.utils.errors import InvalidVolumeError, source_of
from bundle.utils.geometry import as_affine, ras_affine, voxel_spacing
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, SpatialResample
from monai.utils import TraceKeys

__all__ = ["MNI152_BRAIN_BOX_MM", "EnsureMNIGridd", "RegisterToMNId", "check_mni_grid", "check_mni_space"]

#: World bounding box (RAS mm, outer voxel faces) of the brain mask of the 1 mm ICBM 2009a template:
#: ``(lower corner, upper corner)``. Measured from nilearn's template file (tests/transforms/test_mni.py checks it);
#: a constant so that the grid checks need no template file.
MNI152_BRAIN_BOX_MM: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (-72.5, -107.5, -72.5),
    (72.5, 73.5, 82.5),
)

_REGISTER_HINT = (
    "Register it to MNI-152 first: bundle.transforms.mni.RegisterToMNId (or "
    "native_brain_preprocessing), see docs/registration.md"
)


# --------------------------------------------------------------------------- geometry helpers


def _as_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(int(s) for s in shape)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"expected a 3D spatial shape of positive sizes, got {tuple(shape)}.")
    return values  # type: ignore[return-value]


def _corners(shape: Sequence[int]) -> np.ndarray:
    """Homogeneous voxel coordinates (4, 8) of the corner voxel centres of a grid."""
    highs = [s - 1 for s in shape]
    pts = np.array(np.meshgrid(*[[0, h] for h in highs], indexing="ij")).reshape(3, -1)
    return np.vstack([pts, np.ones((1, pts.shape[1]))])


def _world_box(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box (outer voxel faces) of a grid."""
    highs = [s - 0.5 for s in shape]
    pts = np.array(np.meshgrid(*[[-0.5, h] for h in highs], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ pts + affine[:3, 3:4]
    return world.min(axis=1), world.max(axis=1)


def _obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis and its nearest world axis."""
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0, keepdims=True)
    cosines = np.clip(np.abs(columns).max(axis=0), 0.0, 1.0)
    return float(np.degrees(np.arccos(cosines)).max())


def _fmt(values: Any, digits: int = 3) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in np.ravel(values)) + ")"


def _xform_codes(img: Any) -> tuple[int, int] | None:
    """(qform_code, sform_code) of a NIfTI-loaded MetaTensor, None when unknown."""
    if not isinstance(img, MetaTensor):
        return None
    try:
        return int(np.asarray(img.meta["qform_code"])), int(np.asarray(img.meta["sform_code"]))
    except (KeyError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- grid checks


def check_mni_grid(affine: Any, shape: Sequence[int], atol_mm: float = 1e-2, resolution_mm: int = 1) -> str | None:
    """Whether a volume lies on the MNI-152 grid (``resolution_mm`` = 1: the ATLAS v2.0 grid).

    The affines are compared by where they put the corner voxels of the grid: the volume is on the
    grid when its shape equals the grid's and no corner moves by more than ``atol_mm``.

    Args:
        affine: voxel-to-world affine (4, 4), RAS mm.
        shape: spatial shape ``(X, Y, Z)``.
        atol_mm: tolerance of the corner positions, mm.
        resolution_mm: the grid (see :func:`bundle.data.mni.mni152_grid`), 1 for 197 x 233 x 189.

    Returns:
        None on the grid, else a sentence describing the mismatch (shape and/or geometry).
    """
    matrix, size = as_affine(affine), _as_shape(shape)
    grid_shape, grid_affine = mni152_grid(check_resolution(resolution_mm))
    problems = []
    if size != tuple(grid_shape):
        problems.append(f"shape {size} instead of {tuple(grid_shape)}")
    corners = _corners(grid_shape)
    distance = float(np.linalg.norm((matrix - grid_affine)[:3] @ corners, axis=0).max())
    if distance > atol_mm:
        problems.append(
            f"voxel-to-world affine off by up to {distance:.3g} mm (voxel size {_fmt(np.asarray(voxel_spacing(matrix)))} mm, "
            f"voxel (0,0,0) at {_fmt(matrix[:3, 3])} mm; the grid has {resolution_mm} mm voxels, "
            f"voxel (0,0,0) at {_fmt(grid_affine[:3, 3])} mm)"
        )
    return "; ".join(problems) if problems else None


def check_mni_space(
    affine: Any,
    shape: Sequence[int],
    min_brain_coverage: float = 0.5,
    max_oblique_deg: float = 1.0,
    xform_codes: tuple[int, int] | None = None,
) -> str | None:
    """Whether a volume can plausibly be in MNI-152 world coordinates (so that resampling suffices).

    Heuristics (a volume in MNI space at another resolution or crop passes all three):

    - its voxel axes are parallel to the world axes within ``max_oblique_deg`` (MNI-space data is
      resampled on axis-aligned grids; native scans are usually acquired oblique);
    - its world extent covers at least ``min_brain_coverage`` of the template's brain bounding box
      :data:`MNI152_BRAIN_BOX_MM` (a volume whose affine is the identity, i.e. coordinates in voxel
      units, covers ~20 %);
    - its NIfTI header has world coordinates (not ``qform_code == sform_code == 0``).

    A native-space volume that happens to be axis-aligned and centred like MNI passes: only
    registration can tell, which is why :class:`RegisterToMNId` exists.

    Args:
        affine: voxel-to-world affine (4, 4), RAS mm.
        shape: spatial shape ``(X, Y, Z)``.
        min_brain_coverage: minimum fraction (0..1) of the brain box inside the volume's extent.
        max_oblique_deg: maximum angle between a voxel axis and the nearest world axis.
        xform_codes: ``(qform_code, sform_code)`` of the NIfTI header, None when unknown.

    Returns:
        None when plausible, else a sentence saying why the volume does not look like MNI space.
    """
    matrix, size = as_affine(affine), _as_shape(shape)
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        return "its voxel-to-world affine is singular"
    problems = []
    oblique = _obliquity_deg(matrix)
    if oblique > max_oblique_deg:
        problems.append(
            f"its voxel axes are oblique to the world axes by {oblique:.1f} deg (MNI-space volumes are "
            "axis-aligned; native scanner space usually is not)"
        )
    low, high = _world_box(matrix, size)
    box_low, box_high = (np.asarray(c) for c in MNI152_BRAIN_BOX_MM)
    overlap = np.clip(np.minimum(high, box_high) - np.maximum(low, box_low), 0.0, None)
    coverage = float(np.prod(overlap) / np.prod(box_high - box_low))
    if coverage < min_brain_coverage:
        problems.append(
            f"its world extent {_fmt(low, 4)}..{_fmt(high, 4)} mm covers only {coverage:.0%} of the MNI-152 "
            f"brain box {_fmt(box_low, 4)}..{_fmt(box_high, 4)} mm"
        )
    if xform_codes is not None and tuple(xform_codes) == (0, 0):
        problems.append("its NIfTI header has no world coordinates (qform_code = sform_code = 0)")
    return "; ".join(problems) if problems else None


def _modes_for(keys: Sequence[Hashable], mode: str | Sequence[str]) -> tuple[str, ...]:
    """One interpolation mode per key: a sequence shorter than ``keys`` repeats its last entry
    (``("bilinear", "nearest")`` = image first, every further key a label), a longer one is cut."""
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    if not modes:
        raise ValueError("mode must name at least one interpolation mode.")
    return tuple(modes[min(i, len(modes) - 1)] for i in range(len(keys)))


def _restore_dtype(out: torch.Tensor, dtype: torch.dtype, mode: str) -> torch.Tensor:
    """Nearest-resampled integer/bool volumes (labels) keep their dtype; SpatialResample gives float32."""
    if mode == "nearest" and not (dtype.is_floating_point or dtype.is_complex):
        return out.round().to(dtype)
    return out


class EnsureMNIGridd(MapTransform, InvertibleTransform):
    """Put MNI-space volumes on the MNI-152 grid; refuse volumes that are not in MNI space.

    Per key (channel-first MetaTensors ``(C, X, Y, Z)``, e.g. after ``EnsureChannelFirstd``):

    - on the grid (:func:`check_mni_grid` within ``atol_mm``): passed through unchanged;
    - in MNI space at another resolution, crop or orientation: resampled onto the grid with
      MONAI's :class:`~monai.transforms.SpatialResample` (``mode`` per key; bilinear for images,
      nearest for labels) when ``on_mismatch="resample"``, :class:`InvalidVolumeError` naming the
      file and the mismatch when ``on_mismatch="error"``;
    - plainly not in MNI space (:func:`check_mni_space`, unless ``check_space=False``):
      :class:`InvalidVolumeError` suggesting :class:`RegisterToMNId`.

    The transform is invertible: ``inverse`` (directly or through ``monai.transforms.Invertd``)
    resamples a volume on the grid (e.g. a prediction) back to the input's grid and affine;
    pass-through volumes are left as they are.

    Args:
        keys: keys of the volumes (image first, then labels).
        mode: interpolation per key (``"bilinear"``, ``"nearest"``, or spline order 0..5); a sequence
            shorter than ``keys`` repeats its last entry.
        on_mismatch: ``"resample"`` or ``"error"`` for MNI-space volumes off the grid.
        atol_mm: tolerance of the grid check, mm.
        resolution_mm: the target grid (1 = 197 x 233 x 189, the ATLAS grid; 2, 3, ... the
            block-averaged grids of :func:`bundle.data.mni.mni152_grid`).
        padding_mode: value outside the input's field of view (``"zeros"``, ``"border"``, ...).
        check_space: refuse volumes that fail :func:`check_mni_space`.
        min_brain_coverage: see :func:`check_mni_space`.
        max_oblique_deg: see :func:`check_mni_space`.
        allow_missing_keys: skip keys absent from the data.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str | Sequence[str] = ("bilinear", "nearest"),
        on_mismatch: str = "resample",
        atol_mm: float = 1e-2,
        resolution_mm: int = 1,
        padding_mode: str = "zeros",
        check_space: bool = True,
        min_brain_coverage: float = 0.5,
        max_oblique_deg: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if on_mismatch not in ("resample", "error"):
            raise ValueError(f"on_mismatch must be 'resample' or 'error', got {on_mismatch!r}.")
        if atol_mm < 0:
            raise ValueError(f"atol_mm must be >= 0, got {atol_mm}.")
        self.mode = _modes_for(self.keys, mode)
        self.on_mismatch = on_mismatch
        self.atol_mm = float(atol_mm)
        self.resolution_mm = check_resolution(resolution_mm)
        self.grid_shape, self.grid_affine = mni152_grid(self.resolution_mm)
        self.padding_mode = padding_mode
        self.check_space = check_space
        self.min_brain_coverage = float(min_brain_coverage)
        self.max_oblique_deg = float(max_oblique_deg)
        self.resampler = SpatialResample(dtype=torch.float64)

    def _ensure(self, img: Any, key: Hashable, mode: str) -> MetaTensor:
        if not isinstance(img, MetaTensor) or img.ndim != 4:
            shape = tuple(getattr(img, "shape", ()))
            raise InvalidVolumeError(
                f"{source_of(img, key)}: EnsureMNIGridd needs the {key} as a channel-first MetaTensor "
                f"(C, X, Y, Z) with an affine, got {type(img).__name__} of shape {shape}."
            )
        affine_ras, to_own = ras_affine(img)
        shape = tuple(img.shape[1:])
        mismatch = check_mni_grid(affine_ras, shape, self.atol_mm, self.resolution_mm)
        if mismatch is None:
            out = MetaTensor(img.as_tensor(), meta=dict(img.meta), applied_operations=list(img.applied_operations))
            self.push_transform(out, orig_size=shape, extra_info={"resampled": False})
            return out
        if self.check_space:
            problem = check_mni_space(
                affine_ras, shape, self.min_brain_coverage, self.max_oblique_deg, _xform_codes(img)
            )
            if problem is not None:
                raise InvalidVolumeError(
                    f"{source_of(img, key)}: the {key} does not look like a volume in MNI-152 space: {problem}. "
                    f"{_REGISTER_HINT}. (If it is in MNI space, pass check_space=False.)"
                )
        if self.on_mismatch == "error":
            raise InvalidVolumeError(
                f"{source_of(img, key)}: the {key} is not on the MNI-152 {self.resolution_mm} mm grid: {mismatch}. "
                "Resample it (EnsureMNIGridd with on_mismatch='resample') or register it (RegisterToMNId)."
            )
        with self.resampler.trace_transform(False):
            out = self.resampler(
                img,
                dst_affine=torch.as_tensor(to_own @ self.grid_affine),
                spatial_size=self.grid_shape,
                mode=mode,
                padding_mode=self.padding_mode,
                align_corners=False,
            )
        out = _restore_dtype(out, img.dtype, mode)
        out.affine = torch.as_tensor(to_own @ self.grid_affine)  # exact, without round-off of the resampler
        extra = {
            "resampled": True,
            "src_affine": img.affine.clone().double(),
            "mode": mode,
            "padding_mode": self.padding_mode,
            "align_corners": False,
        }
        self.push_transform(out, orig_size=shape, extra_info=extra)
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self._ensure(d[key], key, mode)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            xform = self.pop_transform(d[key])
            info = xform[TraceKeys.EXTRA_INFO]
            if not info["resampled"]:
                continue
            align = info.get("align_corners", False)
            with self.resampler.trace_transform(False):
                d[key] = self.resampler(
                    d[key],
                    dst_affine=info["src_affine"],
                    spatial_size=[int(s) for s in xform[TraceKeys.ORIG_SIZE]],
                    mode=info["mode"],
                    padding_mode=info["padding_mode"],
                    align_corners=False if align == TraceKeys.NONE else align,
                )
        return d


# --------------------------------------------------------------------------- registration


class RegisterToMNId(MapTransform, InvertibleTransform):
    """Register a native-space brain T1 to MNI-152 and resample it (and its labels) onto the MNI grid.

    ``{"image": MetaTensor (1, X, Y, Z) native, "label": ...}`` -> the same keys on the MNI-152 grid
    of ``output_resolution_mm`` (``mni152_grid``), image bilinear, labels nearest (``mode``). The
    transform is :func:`register_affine_to_mni` of ``image_key``, applied to every key (they share
    the image's world). ``d[info_key]`` receives ``{"moving_to_mni": (4, 4) array, "time_s",
    "metric_value"}``.

    Invertible: ``inverse`` (directly, or through ``monai.transforms.Invertd`` for a prediction
    that carries the image's applied operations) resamples a volume on the MNI grid back onto the
    native grid, with the native shape and affine.

    Args:
        keys: keys to resample (must include ``image_key``), image first, labels after.
        image_key: key of the T1 that is registered.
        mode: interpolation per key; a sequence shorter than ``keys`` repeats its last entry.
        output_resolution_mm: grid of the output (1 = 197 x 233 x 189, the ATLAS grid).
        padding_mode: value outside the native field of view.
        registration_resolution_mm: template resolution of the registration (3 mm: about 1-5 s).
        template: fixed image of the registration (None: ICBM 2009a at ``registration_resolution_mm``).
        info_key: data key of the registration record, None to not store it.
        registration_kwargs: further arguments of :func:`register_affine_to_mni` (metric, iterations...).
        allow_missing_keys: skip keys absent from the data (the image must be there).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        mode: str | Sequence[str] = ("bilinear", "nearest"),
        output_resolution_mm: int = 1,
        padding_mode: str = "zeros",
        registration_resolution_mm: int = 3,
        template: MNITemplate | tuple[Any, Any] | None = None,
        info_key: str | None = "mni_registration",
        registration_kwargs: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if image_key not in self.keys:
            raise ValueError(f"image_key {image_key!r} must be one of keys {list(self.keys)}.")
        self.image_key = image_key
        self.mode = _modes_for(self.keys, mode)
        self.output_resolution_mm = check_resolution(output_resolution_mm, "output_resolution_mm")
        self.grid_shape, self.grid_affine = mni152_grid(self.output_resolution_mm)
        self.padding_mode = padding_mode
        self.registration_resolution_mm = check_resolution(registration_resolution_mm, "registration_resolution_mm")
        self.template = template
        self.info_key = info_key
        self.registration_kwargs = dict(registration_kwargs or {})
        clashing = sorted({"image", "affine", "template", "resolution_mm"} & set(self.registration_kwargs))
        if clashing:
            raise ValueError(
                f"registration_kwargs cannot set {clashing}: RegisterToMNId passes the image and its own "
                "template / registration_resolution_mm arguments."
            )
        self.resampler = SpatialResample(dtype=torch.float64)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.image_key not in d:
            raise KeyError(f"RegisterToMNId: no {self.image_key!r} in the data (keys: {list(d)}).")
        image = d[self.image_key]
        if not isinstance(image, MetaTensor) or image.ndim != 4:
            raise InvalidVolumeError(
                f"{source_of(image, self.image_key)}: RegisterToMNId needs the {self.image_key} as a channel-first "
                f"MetaTensor (C, X, Y, Z) with an affine, got {type(image).__name__} of shape {tuple(image.shape)}."
            )
        if image.shape[0] != 1:
            raise InvalidVolumeError(
                f"{source_of(image, self.image_key)}: RegisterToMNId registers one 3D volume, got {image.shape[0]} channels."
            )
        moving_to_mni, info = register_affine_to_mni(
            image, template=self.template, resolution_mm=self.registration_resolution_mm, **self.registration_kwargs
        )
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self._to_mni(d[key], key, mode, moving_to_mni)
        if self.info_key is not None:
            d[self.info_key] = {
                "moving_to_mni": moving_to_mni,
                "time_s": float(info["time_s"]),
                "metric_value": float(info["metric_value"]),
            }
        return d

    def _to_mni(self, img: Any, key: Hashable, mode: str, moving_to_mni: np.ndarray) -> MetaTensor:
        if not isinstance(img, MetaTensor) or img.ndim != 4:
            raise InvalidVolumeError(
                f"{source_of(img, key)}: RegisterToMNId needs the {key} as a channel-first MetaTensor (C, X, Y, Z)."
            )
        affine_ras, to_own = ras_affine(img)
        shape = tuple(img.shape[1:])
        # The native voxels expressed in MNI world coordinates; resampling them onto the MNI grid
        # is then an ordinary MONAI SpatialResample.
        in_mni = MetaTensor(img.as_tensor(), meta=dict(img.meta))
        in_mni.affine = torch.as_tensor(to_own @ moving_to_mni @ affine_ras, dtype=torch.float64)
        with self.resampler.trace_transform(False):
            out = self.resampler(
                in_mni,
                dst_affine=torch.as_tensor(to_own @ self.grid_affine),
                spatial_size=self.grid_shape,
                mode=mode,
                padding_mode=self.padding_mode,
                align_corners=False,
            )
        out = _restore_dtype(out, img.dtype, mode)
        out.affine = torch.as_tensor(to_own @ self.grid_affine)  # exact, without round-off of the resampler
        out.applied_operations = list(img.applied_operations)
        extra = {
            "native_affine": img.affine.clone().double(),
            "moving_to_mni": torch.as_tensor(moving_to_mni, dtype=torch.float64),
            "to_own_space": torch.as_tensor(to_own, dtype=torch.float64),
            "mode": mode,
            "padding_mode": self.padding_mode,
            "align_corners": False,
        }
        self.push_transform(out, orig_size=shape, extra_info=extra)
        return out

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            xform = self.pop_transform(d[key])
            info = xform[TraceKeys.EXTRA_INFO]
            native = torch.as_tensor(info["native_affine"], dtype=torch.float64)
            to_own = torch.as_tensor(info["to_own_space"], dtype=torch.float64)
            moving_to_mni = torch.as_tensor(info["moving_to_mni"], dtype=torch.float64)
            # native affine in MNI world (own axes): to_own @ W @ (to_own @ native)
            native_in_mni = to_own @ moving_to_mni @ to_own @ native
            align = info.get("align_corners", False)
            with self.resampler.trace_transform(False):
                out = self.resampler(
                    d[key],
                    dst_affine=native_in_mni,
                    spatial_size=[int(s) for s in xform[TraceKeys.ORIG_SIZE]],
                    mode=info["mode"],
                    padding_mode=info["padding_mode"],
                    align_corners=False if align == TraceKeys.NONE else align,
                )
            out.affine = native  # the same voxels, described in the native world again
            d[key] = out
        return d


# --------------------------------------------------------------------------- pipelines
