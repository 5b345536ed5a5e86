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
"""ITK affine registration of a native-space brain T1 onto the MNI-152 template.

:func:`register_affine_to_mni` runs ITK v4 ``ImageRegistrationMethodv4`` in named phases: the moving
image read and checked (:func:`_moving_volume`), the fixed template chosen (:func:`_fixed_template`),
both handed to ITK in RAS world coordinates (:func:`_to_itk`), a rigid stage initialised at the
centres of mass and an affine stage (:func:`_run_stage`), then the result checked for plausibility
(:func:`_check_transform`). The transforms that use it (``RegisterToMNId``) live in
:mod:`bundle.transforms.mni`; docs/registration.md shows how the pieces compose.

Geometry conventions: affines are voxel-to-world 4 x 4 matrices in RAS+ millimetres. A
"moving-to-fixed" world matrix ``W`` maps a native (moving) world point ``x`` to the MNI
(fixed) world point ``W @ x``. ITK works in the same RAS coordinates here (the images are handed
to ITK with RAS origin and direction), so no LPS flip is involved.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from bundle.data.mni import MNITemplate, block_average, check_resolution, load_mni152_template
from bundle.utils.errors import InvalidVolumeError, source_of
from bundle.utils.geometry import as_affine, ras_affine, voxel_spacing
from monai.data import MetaTensor

__all__ = ["RegistrationError", "register_affine_to_mni"]


class RegistrationError(InvalidVolumeError):
    """The affine registration to MNI-152 failed or gave an implausible transform; names the file."""


@functools.lru_cache(maxsize=4)
def _cached_template(resolution_mm: int) -> MNITemplate:
    return load_mni152_template(resolution_mm)


def _volume_and_affine(image: Any, affine: Any | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(3D float32 array, RAS affine, source name) of a MetaTensor, array + affine, or NIfTI path."""

    if isinstance(image, (str, os.PathLike)):
        import nibabel as nib

        try:
            img = nib.load(os.fspath(image))
            array = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as e:
            raise InvalidVolumeError(f"{image}: cannot read the image ({type(e).__name__}: {e})") from e
        return np.squeeze(array), as_affine(img.affine), os.fspath(image)
    source = source_of(image, "image")
    if isinstance(image, MetaTensor) and affine is None:
        affine, _ = ras_affine(image)
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
    return array, as_affine(affine), source


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
    spacing = np.asarray(voxel_spacing(affine))
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
    spacing = np.asarray(voxel_spacing(affine))
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
    _check_arguments(metric, shrink_factors, smoothing_sigmas, sampling_fraction)
    moving, moving_affine, source = _moving_volume(image, affine)
    fixed, fixed_affine = _fixed_template(template, resolution_mm)
    fixed_res = float(np.asarray(voxel_spacing(fixed_affine)).mean())
    moving, moving_affine = _downsample(moving, moving_affine, fixed_res)
    levels = {
        "metric": metric,
        "shrink_factors": shrink_factors,
        "smoothing_sigmas": smoothing_sigmas,
        "sampling_fraction": sampling_fraction,
        "histogram_bins": histogram_bins,
        "seed": seed,
    }
    fixed_to_moving, stages, initial = _rigid_then_affine(
        (fixed, fixed_affine), (moving, moving_affine), rigid_iterations, affine_iterations, levels, source
    )
    _check_transform(fixed_to_moving, max_scale_change, stages, source)
    info = {
        "time_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - start_cpu,
        "metric": metric,
        "metric_value": stages[-1]["metric_value"] if stages else float("nan"),
        "stages": stages,
        "initial_translation_mm": [float(v) for v in initial],
        "fixed_resolution_mm": fixed_res,
    }
    return np.linalg.inv(fixed_to_moving), info


def _check_arguments(
    metric: str, shrink_factors: Sequence[int], smoothing_sigmas: Sequence[float], sampling_fraction: float
) -> None:
    if metric not in ("mattes", "correlation"):
        raise ValueError(f"metric must be 'mattes' or 'correlation', got {metric!r}.")
    if len(shrink_factors) != len(smoothing_sigmas) or not shrink_factors:
        raise ValueError("shrink_factors and smoothing_sigmas need one entry per level (at least one level).")
    if not 0.0 < sampling_fraction <= 1.0:
        raise ValueError(f"sampling_fraction must be in (0, 1], got {sampling_fraction}.")


def _moving_volume(image: Any, affine: Any | None) -> tuple[np.ndarray, np.ndarray, str]:
    """The moving image as (3D array, RAS affine, source name), refused when it cannot be registered."""
    moving, moving_affine, source = _volume_and_affine(image, affine)
    if not np.isfinite(moving).all():
        raise InvalidVolumeError(f"{source}: the image holds NaN/inf voxels; it cannot be registered.")
    if float(moving.max()) == float(moving.min()):
        raise InvalidVolumeError(f"{source}: the image is constant; it cannot be registered.")
    if abs(np.linalg.det(moving_affine[:3, :3])) < 1e-12:
        raise InvalidVolumeError(f"{source}: the image's voxel-to-world affine is singular.")
    return moving, moving_affine, source


def _fixed_template(
    template: MNITemplate | tuple[Any, Any] | None, resolution_mm: int
) -> tuple[np.ndarray, np.ndarray]:
    """The fixed image (array, RAS affine): the given template, or the ICBM 2009a T1 at ``resolution_mm``."""
    if template is None:
        template = _cached_template(check_resolution(resolution_mm))
    if isinstance(template, MNITemplate):
        return template.t1, template.affine
    return np.asarray(template[0], dtype=np.float32), as_affine(template[1])


def _rigid_then_affine(
    fixed: tuple[np.ndarray, np.ndarray],
    moving: tuple[np.ndarray, np.ndarray],
    rigid_iterations: int,
    affine_iterations: int,
    levels: dict[str, Any],
    source: str,
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """The two ITK stages: a rigid transform started with the centres of mass matched, then an affine
    one started from it. Returns (fixed-to-moving 4 x 4 world matrix, the stages' reports, the
    initial translation in mm)."""
    import itk

    fixed_itk, moving_itk = _to_itk(*fixed), _to_itk(*moving)
    centre_fixed, centre_moving = _center_of_mass_mm(*fixed), _center_of_mass_mm(*moving)
    # ITK transforms map fixed points to moving points: start with the centres of mass matched
    rigid = itk.Euler3DTransform[itk.D].New()
    rigid.SetCenter([float(c) for c in centre_fixed])
    rigid.SetTranslation([float(v) for v in centre_moving - centre_fixed])
    stages = []
    try:
        if rigid_iterations > 0:
            report = _run_stage(fixed_itk, moving_itk, rigid, iterations=rigid_iterations, **levels)
            stages.append({"transform": "rigid", **report})
        full = itk.AffineTransform[itk.D, 3].New()
        full.SetCenter(rigid.GetCenter())
        full.SetMatrix(rigid.GetMatrix())
        full.SetTranslation(rigid.GetTranslation())
        if affine_iterations > 0:
            report = _run_stage(fixed_itk, moving_itk, full, iterations=affine_iterations, **levels)
            stages.append({"transform": "affine", **report})
    except RuntimeError as e:  # ITK exceptions (e.g. too few samples inside the moving image)
        raise RegistrationError(f"{source}: ITK affine registration to MNI-152 failed: {e}") from e
    fixed_to_moving = np.eye(4)
    fixed_to_moving[:3, :3] = itk.array_from_matrix(full.GetMatrix())
    fixed_to_moving[:3, 3] = np.asarray(full.GetOffset(), dtype=np.float64)
    return fixed_to_moving, stages, centre_moving - centre_fixed


def _check_transform(
    fixed_to_moving: np.ndarray, max_scale_change: float, stages: list[dict[str, Any]], source: str
) -> None:
    """Refuse a degenerate transform or one that changes the volume by more than ``max_scale_change``."""
    determinant = float(np.linalg.det(fixed_to_moving[:3, :3]))
    if not np.isfinite(fixed_to_moving).all() or not 1.0 / max_scale_change <= determinant <= max_scale_change:
        raise RegistrationError(
            f"{source}: the affine registration to MNI-152 gave an implausible transform (volume change "
            f"x{determinant:.3g}); is the image a brain T1 with a correct affine? (stages: {stages})"
        )
