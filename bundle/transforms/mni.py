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
"""Brain T1 volumes onto the MNI-152 grid: grid checks, ITK affine registration, invertible resampling.

The GRCSF brain pipeline works on the MNI-152 ICBM 2009a 1 mm grid (197 x 233 x 189 voxels,
SPEC section 7), where ATLAS v2.0 already is. This module brings other inputs there and back
(docs/registration.md shows how the pieces compose):

- :func:`check_mni_grid` -- is a volume exactly on the MNI grid (shape, affine within a tolerance)?
- :func:`check_mni_space` -- is a volume plausibly in MNI space at all (axis-aligned voxel axes,
  world extent covering the template brain, NIfTI world coordinates present)?
- :class:`EnsureMNIGridd` -- passes a volume on the grid unchanged, resamples an MNI-space volume at
  another resolution or crop onto the grid (invertible: MONAI's ``Invertd`` takes predictions
  back), refuses a native-space volume with a message pointing to :class:`RegisterToMNId`.
- :func:`register_affine_to_mni` -- ITK v4 affine registration of a native-space T1 onto the
  template (centre-of-mass initialisation, rigid then affine stage, multi-resolution, Mattes
  mutual information or normalised correlation) at a coarse resolution (3 mm by default).
- :class:`RegisterToMNId` -- registers the image and resamples it and its label (nearest) onto
  the MNI grid; its ``inverse`` brings a prediction on the MNI grid back to the native grid and
  affine (also through ``Invertd``).
- :func:`native_brain_preprocessing` / :func:`mni_brain_preprocessing` --
  :func:`~bundle.transforms.preprocessing.brain_preprocessing` with registration or the grid
  check inserted after the reorientation.

Geometry conventions: affines are voxel-to-world 4 x 4 matrices in RAS+ millimetres (MONAI's
default; MetaTensors whose ``meta["space"]`` is LPS are converted). A "moving-to-fixed" world
matrix ``W`` maps a point ``x`` of the native (moving) world to the MNI (fixed) world point
``W @ x``; resampling the native image onto the MNI grid then reads the native image at
``W^-1 @ y`` for every MNI grid point ``y``. ITK works in the same RAS coordinates here (the
images are handed to ITK with RAS origin and direction), so no LPS flip is involved.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, InvertibleTransform, MapTransform, Orientationd, SpatialResample
from monai.utils import TraceKeys

from bundle.data.mni import MNITemplate, block_average, load_mni152_template, mni152_grid

from .preprocessing import InvalidVolumeError, brain_preprocessing

__all__ = [
    "MNI152_BRAIN_BOX_MM",
    "EnsureMNIGridd",
    "RegisterToMNId",
    "RegistrationError",
    "check_mni_grid",
    "check_mni_space",
    "mni_brain_preprocessing",
    "native_brain_preprocessing",
    "register_affine_to_mni",
]

#: World bounding box (RAS mm, outer voxel faces) of the brain mask of the 1 mm ICBM 2009a template:
#: ``(lower corner, upper corner)``. Measured from nilearn's template file (tests/test_mni.py checks it);
#: a constant so that the grid checks need no template file.
MNI152_BRAIN_BOX_MM: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (-72.5, -107.5, -72.5),
    (72.5, 73.5, 82.5),
)

_LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
_REGISTER_HINT = (
    "Register it to MNI-152 first: bundle.transforms.mni.RegisterToMNId (or "
    "native_brain_preprocessing), see docs/registration.md"
)


class RegistrationError(InvalidVolumeError):
    """The affine registration to MNI-152 failed or gave an implausible transform; names the file."""


# --------------------------------------------------------------------------- geometry helpers


def _as_affine(affine: Any) -> np.ndarray:
    """A 4 x 4 float64 numpy affine (tensor or array input); ValueError otherwise."""
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"expected a finite 4 x 4 voxel-to-world affine, got shape {matrix.shape}.")
    return matrix


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


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(affine[:3, :3], axis=0)


def _fmt(values: Any, digits: int = 3) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in np.ravel(values)) + ")"


def _source(value: Any, key: Hashable | None = None) -> str:
    """The file a volume came from, for error messages."""
    if isinstance(value, MetaTensor):
        name = value.meta.get("filename_or_obj")
        if name:
            return str(name)
    return f"<in-memory {key if key is not None else 'volume'}>"


def _ras_affine(img: Any) -> tuple[np.ndarray, np.ndarray]:
    """(RAS affine, matrix taking RAS affines back to the image's own world space)."""
    affine = _as_affine(img.affine)
    space = str(img.meta.get("space", "RAS")).upper() if isinstance(img, MetaTensor) else "RAS"
    to_own = _LPS_FLIP if space == "LPS" else np.eye(4)
    return to_own @ affine, to_own  # the flip is its own inverse


def _xform_codes(img: Any) -> tuple[int, int] | None:
    """(qform_code, sform_code) of a NIfTI-loaded MetaTensor, None when unknown."""
    if not isinstance(img, MetaTensor):
        return None
    try:
        return int(np.asarray(img.meta["qform_code"])), int(np.asarray(img.meta["sform_code"]))
    except (KeyError, TypeError, ValueError):
        return None


def _check_resolution(resolution_mm: Any, name: str = "resolution_mm") -> int:
    if (
        isinstance(resolution_mm, bool)
        or not isinstance(resolution_mm, (int, np.integer))
        or resolution_mm < 1
    ):
        raise ValueError(f"{name} must be a positive integer (mm), got {resolution_mm!r}.")
    return int(resolution_mm)


# --------------------------------------------------------------------------- grid checks


def check_mni_grid(
    affine: Any, shape: Sequence[int], atol_mm: float = 1e-2, resolution_mm: int = 1
) -> str | None:
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
    matrix, size = _as_affine(affine), _as_shape(shape)
    grid_shape, grid_affine = mni152_grid(_check_resolution(resolution_mm))
    problems = []
    if size != tuple(grid_shape):
        problems.append(f"shape {size} instead of {tuple(grid_shape)}")
    corners = _corners(grid_shape)
    distance = float(np.linalg.norm((matrix - grid_affine)[:3] @ corners, axis=0).max())
    if distance > atol_mm:
        problems.append(
            f"voxel-to-world affine off by up to {distance:.3g} mm (voxel size {_fmt(_voxel_sizes(matrix))} mm, "
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
    matrix, size = _as_affine(affine), _as_shape(shape)
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
        self.resolution_mm = _check_resolution(resolution_mm)
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
                f"{_source(img, key)}: EnsureMNIGridd needs the {key} as a channel-first MetaTensor "
                f"(C, X, Y, Z) with an affine, got {type(img).__name__} of shape {shape}."
            )
        ras_affine, to_own = _ras_affine(img)
        shape = tuple(img.shape[1:])
        mismatch = check_mni_grid(ras_affine, shape, self.atol_mm, self.resolution_mm)
        if mismatch is None:
            out = MetaTensor(
                img.as_tensor(), meta=dict(img.meta), applied_operations=list(img.applied_operations)
            )
            self.push_transform(out, orig_size=shape, extra_info={"resampled": False})
            return out
        if self.check_space:
            problem = check_mni_space(
                ras_affine, shape, self.min_brain_coverage, self.max_oblique_deg, _xform_codes(img)
            )
            if problem is not None:
                raise InvalidVolumeError(
                    f"{_source(img, key)}: the {key} does not look like a volume in MNI-152 space: {problem}. "
                    f"{_REGISTER_HINT}. (If it is in MNI space, pass check_space=False.)"
                )
        if self.on_mismatch == "error":
            raise InvalidVolumeError(
                f"{_source(img, key)}: the {key} is not on the MNI-152 {self.resolution_mm} mm grid: {mismatch}. "
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


@functools.lru_cache(maxsize=4)
def _cached_template(resolution_mm: int) -> MNITemplate:
    return load_mni152_template(resolution_mm)


def _volume_and_affine(image: Any, affine: Any | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(3D float32 array, RAS affine, source name) of a MetaTensor, array + affine, or NIfTI path."""
    import os

    if isinstance(image, (str, os.PathLike)):
        import nibabel as nib

        try:
            img = nib.load(os.fspath(image))
            array = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as e:
            raise InvalidVolumeError(f"{image}: cannot read the image ({type(e).__name__}: {e})") from e
        return np.squeeze(array), _as_affine(img.affine), os.fspath(image)
    source = _source(image, "image")
    if isinstance(image, MetaTensor) and affine is None:
        affine, _ = _ras_affine(image)
    if affine is None:
        raise ValueError(f"{source}: pass the voxel-to-world affine of a plain array (or a MetaTensor).")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = image.as_tensor() if isinstance(image, MetaTensor) else image
        image = image.float().numpy()
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise InvalidVolumeError(f"{source}: registration needs one 3D volume, got shape {array.shape}.")
    return array, _as_affine(affine), source


def _center_of_mass_mm(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre (world mm) of a volume shifted to be non-negative (first-order moments)."""
    weights = np.clip(array - min(float(array.min()), 0.0), 0.0, None).astype(np.float64)
    total = weights.sum()
    if total <= 0:
        return affine[:3, :3] @ ((np.asarray(array.shape) - 1) / 2.0) + affine[:3, 3]
    centre = [
        float((weights.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(n)).sum() / total)
        for axis, n in enumerate(array.shape)
    ]
    return affine[:3, :3] @ np.asarray(centre) + affine[:3, 3]


def _downsample(array: np.ndarray, affine: np.ndarray, resolution_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Block-average a volume whose voxels are much finer than ``resolution_mm`` (speed, anti-aliasing)."""
    spacing = _voxel_sizes(affine)
    factors = [max(1, math.floor(resolution_mm / s + 1e-6)) for s in spacing]
    if max(factors) == 1:
        return array, affine
    if len(set(factors)) == 1:
        out = block_average(array, factors[0])
    else:  # anisotropic voxels: average one axis at a time
        out = array.astype(np.float32)
        for axis, f in enumerate(factors):
            if f > 1:
                pad = (-out.shape[axis]) % f
                widths = [(0, pad if a == axis else 0) for a in range(3)]
                padded = np.pad(out, widths)
                shape = list(padded.shape)
                shape[axis : axis + 1] = [shape[axis] // f, f]
                out = padded.reshape(shape).mean(axis=axis + 1, dtype=np.float32)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factors)
    scale[:3, 3] = (np.asarray(factors) - 1) / 2.0  # new voxel 0 = mean position of the first block
    return out, affine @ scale


def _to_itk(array: np.ndarray, affine: np.ndarray) -> Any:
    """An itk.Image[F, 3] in RAS world coordinates (origin, spacing, direction from ``affine``)."""
    import itk

    # numpy (X, Y, Z) -> ITK's (z, y, x) buffer order, so that ITK index (i, j, k) is voxel (i, j, k)
    buffer = np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0))
    image = itk.image_from_array(buffer)
    spacing = _voxel_sizes(affine)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in affine[:3, 3]])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(affine[:3, :3] / spacing)))
    return image


def _run_stage(
    fixed: Any,
    moving: Any,
    transform: Any,
    metric: str,
    iterations: int,
    shrink_factors: Sequence[int],
    smoothing_sigmas: Sequence[float],
    sampling_fraction: float,
    histogram_bins: int,
    seed: int,
) -> dict[str, Any]:
    """One multi-resolution ITK v4 registration stage, optimising ``transform`` in place."""
    import itk

    image_type = itk.Image[itk.F, 3]
    if metric == "mattes":
        cost = itk.MattesMutualInformationImageToImageMetricv4[image_type, image_type].New()
        cost.SetNumberOfHistogramBins(int(histogram_bins))
    else:
        cost = itk.CorrelationImageToImageMetricv4[image_type, image_type].New()
    scales = itk.RegistrationParameterScalesFromPhysicalShift[type(cost)].New()
    scales.SetMetric(cost)
    optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New()
    # initial step 1 (scaled units: ~1 mm of voxel motion with physical-shift scales), halved on reversals
    optimizer.SetLearningRate(1.0)
    optimizer.SetMinimumStepLength(1e-3)
    optimizer.SetRelaxationFactor(0.5)
    optimizer.SetNumberOfIterations(int(iterations))
    optimizer.SetScalesEstimator(scales)
    method = itk.ImageRegistrationMethodv4[image_type, image_type].New()
    method.SetFixedImage(fixed)
    method.SetMovingImage(moving)
    method.SetMetric(cost)
    method.SetOptimizer(optimizer)
    method.SetInitialTransform(transform)
    method.InPlaceOn()
    method.SetNumberOfLevels(len(shrink_factors))
    method.SetShrinkFactorsPerLevel([int(s) for s in shrink_factors])
    method.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_sigmas])
    method.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(False)
    if sampling_fraction < 1.0:
        method.SetMetricSamplingStrategy(itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM)
        method.SetMetricSamplingPercentage(float(sampling_fraction))
        method.MetricSamplingReinitializeSeed(int(seed))
    method.Update()
    return {
        "iterations": int(optimizer.GetCurrentIteration()),
        "metric_value": float(optimizer.GetValue()),
        "stop_condition": str(optimizer.GetStopConditionDescription()),
    }


def register_affine_to_mni(
    image: Any,
    template: MNITemplate | tuple[Any, Any] | None = None,
    affine: Any | None = None,
    resolution_mm: int = 3,
    metric: str = "mattes",
    rigid_iterations: int = 100,
    affine_iterations: int = 100,
    shrink_factors: Sequence[int] = (2, 1),
    smoothing_sigmas: Sequence[float] = (1.0, 0.0),
    sampling_fraction: float = 0.1,
    histogram_bins: int = 32,
    seed: int = 0,
    max_scale_change: float = 2.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Affine registration of a (native-space) brain T1 onto the MNI-152 template with ITK.

    ITK v4 ``ImageRegistrationMethodv4`` in two stages, each multi-resolution
    (``shrink_factors`` x the template resolution, Gaussian smoothing of ``smoothing_sigmas``
    voxels) with a regular-step gradient descent whose parameter scales come from physical
    shifts: a rigid stage (``Euler3DTransform``) initialised by matching the intensity centres
    of mass (first-order moments) of both images, then a 12-parameter affine stage
    (``AffineTransform``) started from it. The fixed image is the template T1 block-averaged to
    ``resolution_mm``; a moving image with much finer voxels is block-averaged to about that
    size first. Metric: Mattes mutual information (``"mattes"``, intensity scale and contrast
    free) or normalised cross-correlation (``"correlation"``, same modality and contrast).

    The template T1 is brain-extracted: skull-stripped inputs register best (see
    docs/registration.md).

    Args:
        image: the moving image: a MetaTensor ``(1, X, Y, Z)`` or ``(X, Y, Z)`` with its affine, an
            array/tensor with ``affine``, or a NIfTI path.
        template: the fixed image: an :class:`~bundle.data.mni.MNITemplate`, an ``(array, affine)``
            pair, or None for the ICBM 2009a T1 at ``resolution_mm`` (needs nilearn).
        affine: voxel-to-world affine (RAS mm) of a plain array ``image``.
        resolution_mm: resolution of the default template (registration speed vs. detail).
        metric: ``"mattes"`` or ``"correlation"``.
        rigid_iterations: maximum optimiser iterations per level of the rigid stage (0 skips it).
        affine_iterations: maximum optimiser iterations per level of the affine stage.
        shrink_factors: image shrink factor per level, coarse to fine.
        smoothing_sigmas: Gaussian sigma (voxels of the shrunk image) per level.
        sampling_fraction: fraction of fixed voxels sampled (randomly, seeded) by the metric; 1 = all.
        histogram_bins: Mattes histogram bins.
        seed: seed of the metric sampling.
        max_scale_change: refuse results whose volume change (determinant) is beyond this factor.

    Returns:
        ``(moving_to_fixed, info)``: the 4 x 4 world matrix mapping native RAS mm to MNI RAS mm,
        and a dict with ``time_s`` (wall), ``cpu_s`` (CPU time of all threads), ``metric``,
        ``metric_value`` (final, lower is better), ``stages`` (per stage: iterations of its last
        level, metric value, stop condition),
        ``initial_translation_mm`` and ``fixed_resolution_mm``.

    Raises:
        InvalidVolumeError: the image is not a finite, non-constant 3D volume.
        RegistrationError: ITK failed, or the transform is degenerate/implausible.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    if metric not in ("mattes", "correlation"):
        raise ValueError(f"metric must be 'mattes' or 'correlation', got {metric!r}.")
    if len(shrink_factors) != len(smoothing_sigmas) or not shrink_factors:
        raise ValueError("shrink_factors and smoothing_sigmas need one entry per level (at least one level).")
    if not 0.0 < sampling_fraction <= 1.0:
        raise ValueError(f"sampling_fraction must be in (0, 1], got {sampling_fraction}.")
    moving, moving_affine, source = _volume_and_affine(image, affine)
    if not np.isfinite(moving).all():
        raise InvalidVolumeError(f"{source}: the image holds NaN/inf voxels; it cannot be registered.")
    if float(moving.max()) == float(moving.min()):
        raise InvalidVolumeError(f"{source}: the image is constant; it cannot be registered.")
    if abs(np.linalg.det(moving_affine[:3, :3])) < 1e-12:
        raise InvalidVolumeError(f"{source}: the image's voxel-to-world affine is singular.")

    if template is None:
        template = _cached_template(_check_resolution(resolution_mm))
    if isinstance(template, MNITemplate):
        fixed, fixed_affine = template.t1, template.affine
    else:
        fixed, fixed_affine = np.asarray(template[0], dtype=np.float32), _as_affine(template[1])
    fixed_res = float(_voxel_sizes(fixed_affine).mean())
    moving, moving_affine = _downsample(moving, moving_affine, fixed_res)

    import itk

    fixed_itk, moving_itk = _to_itk(fixed, fixed_affine), _to_itk(moving, moving_affine)
    centre_fixed = _center_of_mass_mm(fixed, fixed_affine)
    centre_moving = _center_of_mass_mm(moving, moving_affine)
    # ITK transforms map fixed points to moving points: start with the centres of mass matched
    rigid = itk.Euler3DTransform[itk.D].New()
    rigid.SetCenter([float(c) for c in centre_fixed])
    rigid.SetTranslation([float(t) for t in centre_moving - centre_fixed])
    common = {
        "metric": metric,
        "shrink_factors": shrink_factors,
        "smoothing_sigmas": smoothing_sigmas,
        "sampling_fraction": sampling_fraction,
        "histogram_bins": histogram_bins,
        "seed": seed,
    }
    stages = []
    try:
        if rigid_iterations > 0:
            stages.append(
                {
                    "transform": "rigid",
                    **_run_stage(fixed_itk, moving_itk, rigid, iterations=rigid_iterations, **common),
                }
            )
        full = itk.AffineTransform[itk.D, 3].New()
        full.SetCenter(rigid.GetCenter())
        full.SetMatrix(rigid.GetMatrix())
        full.SetTranslation(rigid.GetTranslation())
        if affine_iterations > 0:
            stages.append(
                {
                    "transform": "affine",
                    **_run_stage(fixed_itk, moving_itk, full, iterations=affine_iterations, **common),
                }
            )
    except RuntimeError as e:  # ITK exceptions (e.g. too few samples inside the moving image)
        raise RegistrationError(f"{source}: ITK affine registration to MNI-152 failed: {e}") from e

    fixed_to_moving = np.eye(4)
    fixed_to_moving[:3, :3] = itk.array_from_matrix(full.GetMatrix())
    fixed_to_moving[:3, 3] = np.asarray(full.GetOffset(), dtype=np.float64)
    determinant = float(np.linalg.det(fixed_to_moving[:3, :3]))
    if (
        not np.isfinite(fixed_to_moving).all()
        or not 1.0 / max_scale_change <= determinant <= max_scale_change
    ):
        raise RegistrationError(
            f"{source}: the affine registration to MNI-152 gave an implausible transform (volume change "
            f"x{determinant:.3g}); is the image a brain T1 with a correct affine? (stages: {stages})"
        )
    info = {
        "time_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - start_cpu,
        "metric": metric,
        "metric_value": stages[-1]["metric_value"] if stages else float("nan"),
        "stages": stages,
        "initial_translation_mm": [float(t) for t in centre_moving - centre_fixed],
        "fixed_resolution_mm": fixed_res,
    }
    return np.linalg.inv(fixed_to_moving), info


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
        self.output_resolution_mm = _check_resolution(output_resolution_mm, "output_resolution_mm")
        self.grid_shape, self.grid_affine = mni152_grid(self.output_resolution_mm)
        self.padding_mode = padding_mode
        self.registration_resolution_mm = _check_resolution(
            registration_resolution_mm, "registration_resolution_mm"
        )
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
                f"{_source(image, self.image_key)}: RegisterToMNId needs the {self.image_key} as a channel-first "
                f"MetaTensor (C, X, Y, Z) with an affine, got {type(image).__name__} of shape {tuple(image.shape)}."
            )
        if image.shape[0] != 1:
            raise InvalidVolumeError(
                f"{_source(image, self.image_key)}: RegisterToMNId registers one 3D volume, got {image.shape[0]} channels."
            )
        moving_to_mni, info = register_affine_to_mni(
            image,
            template=self.template,
            resolution_mm=self.registration_resolution_mm,
            **self.registration_kwargs,
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
                f"{_source(img, key)}: RegisterToMNId needs the {key} as a channel-first MetaTensor (C, X, Y, Z)."
            )
        ras_affine, to_own = _ras_affine(img)
        shape = tuple(img.shape[1:])
        # The native voxels expressed in MNI world coordinates; resampling them onto the MNI grid
        # is then an ordinary MONAI SpatialResample.
        in_mni = MetaTensor(img.as_tensor(), meta=dict(img.meta))
        in_mni.affine = torch.as_tensor(to_own @ moving_to_mni @ ras_affine, dtype=torch.float64)
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
    """:func:`~bundle.transforms.preprocessing.brain_preprocessing` for native-space T1 volumes.

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
    """:func:`~bundle.transforms.preprocessing.brain_preprocessing` with :class:`EnsureMNIGridd` after RAS.

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
