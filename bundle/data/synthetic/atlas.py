"""A synthetic look-alike of the ATLAS v2.0 stroke-lesion data set, built from the MNI-152 template.

ATLAS v2.0 (Liew et al. 2022) holds T1-weighted MRIs already registered to MNI-152 ICBM 2009a
(197 x 233 x 189 voxels of 1 mm) with manually traced lesion masks, in a BIDS-like tree::

    <root>/Training/R001/sub-r001s001/ses-1/anat/
        sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
        sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz

:func:`generate_atlas_like_dataset` writes the same tree (the cohort is the ``rXXX`` part of
the subject id and the ``RXXX`` folder) plus ``participants.tsv``,
``dataset_description.json`` and ``lesions.json`` (the per-subject/per-lesion records that
:func:`load_atlas_like_records` reads back). Nothing here is a real patient.

One subject is made as follows (all random numbers from a generator seeded by
``(seed, subject index)``, so a subject does not depend on how many others are made):

1. Anatomy: the template T1 and its grey+white-matter probability are resampled
   (``scipy.ndimage.map_coordinates``, trilinear) through a small random affine (the residual
   of a linear registration: rotations, per-axis scaling, translation) composed with a smooth
   elastic displacement field (a sum of Gaussian bumps on a coarse control grid).
2. Lesions (none for the lesion-free fraction of subjects): 1..5 per subject, each grown
   voxel by voxel from a random seed point inside the subject's grey/white matter
   (tissue probability >= 0.5, restricted to the template's brain mask), always adding
   the neighbour with the highest score = smoothed random noise - distance from the seed /
   radius. This gives irregular, connected, stroke-like shapes. Volumes are log-uniform in
   ``lesion_volume_mm3`` (20 .. 100000 mm^3 by default, i.e. voxel counts divided by
   ``resolution_mm ** 3``): small lesions of a few 1 mm voxels up to the large territorial
   strokes that dominate ATLAS's lesion load. Lesions are T1-hypointense: the image is
   multiplied by ``1 - contrast * occupancy`` where ``contrast`` (fractional darkening) is
   uniform in ``lesion_contrast`` (0.3 = white matter darkened to about grey-matter intensity,
   the faint end; 0.8 = as dark as CSF) and
   the occupancy is a partial-volume version of the binary mask (>= 0.5 inside the mask,
   < 0.5 outside). The binary mask is the ground truth.
3. Scanner: a smooth multiplicative bias field, a global intensity scale, Rician noise, and
   rounding to whole numbers (as a scanner's integer intensities; stored as float32).
   Every cohort has its own intensity scale, noise level and bias strength (as different
   sites would), jittered per subject.

Which subjects are lesion-free is decided by a stratified rule, so that every first ``n``
subjects hold ``floor(n * lesion_free_fraction + u)`` lesion-free ones, ``u`` in [0, 1)
drawn from ``seed``: the count is as close to the fraction as possible for any
``num_subjects`` and subject ``i``'s status does not depend on ``num_subjects``.

Subjects are spread over cohorts round-robin: subject ``i`` (0-based) belongs to cohort
``i % num_cohorts`` and is that cohort's ``i // num_cohorts + 1``-th subject.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bundle.data.mni import MNITemplate, load_mni152_template
from bundle.data.writers import NIFTI_XFORM_MNI_152, save_nifti
from bundle.utils.errors import DatasetError
from bundle.utils.flags import as_flag
from bundle.utils.io import write_text
from scipy import ndimage

__all__ = [
    "ATLAS_SPACE",
    "ATLAS_IMAGE_SUFFIX",
    "ATLAS_LABEL_SUFFIX",
    "ATLAS_LESION_INDEX",
    "SUPPORTED_RESOLUTIONS_MM",
    "SyntheticAtlasParams",
    "atlas_subject_id",
    "parse_atlas_subject_id",
    "atlas_subject_paths",
    "generate_atlas_like_dataset",
    "ensure_demo_dataset",
    "load_atlas_like_records",
]

#: The template space in ATLAS v2.0 file names.
ATLAS_SPACE = "MNI152NLin2009aSym"
#: File-name suffix (after the subject id) of the T1w image.
ATLAS_IMAGE_SUFFIX = f"_ses-1_space-{ATLAS_SPACE}_T1w.nii.gz"
#: File-name suffix (after the subject id) of the lesion mask.
ATLAS_LABEL_SUFFIX = f"_ses-1_space-{ATLAS_SPACE}_label-L_desc-T1lesion_mask.nii.gz"
#: Name of the per-subject/per-lesion record file at the data set root.
ATLAS_LESION_INDEX = "lesions.json"
#: Voxel sizes (mm) the generator accepts.
SUPPORTED_RESOLUTIONS_MM = (1, 2, 3, 4)

_GENERATOR_NAME = "grcsf-bundle synthetic ATLAS v2.0 look-alike"
_INDEX_FORMAT_VERSION = 1
_SUBJECT_ID = re.compile(r"^sub-(r\d{3,})(s\d{3,})$")
# NIfTI xform code NIFTI_XFORM_MNI_152: the grid is MNI-152 space.
_NIFTI_DESCRIPTION = "synthetic ATLAS-like, grcsf-bundle"
# Independent random streams of one seed (SeedSequence entropy tags).
_STREAM_DATASET, _STREAM_COHORT, _STREAM_SUBJECT = 0, 1, 2


@dataclass(frozen=True)
class SyntheticAtlasParams:
    """Appearance parameters of the synthetic subjects (defaults give the demo data set).

    Ranges are ``(low, high)``; lengths in mm, angles in degrees.

    Attributes:
        lesion_volume_mm3: lesion volume range; volumes are log-uniform in it.
        lesion_contrast: range of the fractional darkening of a lesion (uniform).
        lesion_count_probs: probabilities of 1, 2, ... lesions in a lesion-bearing subject.
        lesion_edge_sigma_mm: Gaussian blur (mm) that makes the partial-volume lesion edge.
        rotation_deg: maximum absolute rotation about each axis (residual registration error).
        scaling: maximum absolute relative change of the size along each axis.
        translation_mm: maximum absolute translation along each axis.
        elastic_mm: maximum absolute elastic displacement along each axis.
        elastic_spacing_mm: control-point spacing of the elastic field.
        bias_strength: range of the cohorts' log bias-field amplitude (max |log bias|).
        bias_spacing_mm: control-point spacing of the bias field.
        intensity_scale: range of the cohorts' intensity at template value 1 (~white matter).
        noise_fraction: range of the cohorts' noise sigma relative to ``intensity_scale``.
        subject_jitter: relative per-subject variation of the cohort's scale/noise/bias.
    """

    # [choice] with the former 5 .. 20000 mm^3 and contrasts 0.1 .. 0.7 the median lesion had 19
    # voxels at 3 mm and many vanished in the noise: the demo network learned nothing in CPU
    # minutes (val Dice 0.0005). The small, faint ends of the ranges keep the hard tail the
    # paper is about (the ablation bins its Dice by size and contrast).
    lesion_volume_mm3: tuple[float, float] = (20.0, 100000.0)
    lesion_contrast: tuple[float, float] = (0.3, 0.8)
    lesion_count_probs: tuple[float, ...] = (0.4, 0.25, 0.15, 0.12, 0.08)
    lesion_edge_sigma_mm: float = 0.65
    rotation_deg: float = 2.0
    scaling: float = 0.03
    translation_mm: float = 2.0
    elastic_mm: float = 3.0
    elastic_spacing_mm: float = 20.0
    bias_strength: tuple[float, float] = (0.05, 0.2)
    bias_spacing_mm: float = 60.0
    intensity_scale: tuple[float, float] = (400.0, 1000.0)
    noise_fraction: tuple[float, float] = (0.015, 0.04)
    subject_jitter: float = 0.1

    def __post_init__(self) -> None:
        ranges = ("lesion_volume_mm3", "lesion_contrast", "bias_strength", "intensity_scale", "noise_fraction")
        for name in ranges:
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"SyntheticAtlasParams.{name} must be (low, high) with 0 <= low <= high.")
        if self.lesion_volume_mm3[0] <= 0:
            raise ValueError("SyntheticAtlasParams.lesion_volume_mm3 must be positive.")
        if self.lesion_contrast[1] >= 1:
            raise ValueError("SyntheticAtlasParams.lesion_contrast must stay below 1 (1 = black lesion).")
        probs = np.asarray(self.lesion_count_probs, dtype=float)
        if probs.size == 0 or (probs < 0).any() or not math.isclose(probs.sum(), 1.0, abs_tol=1e-6):
            raise ValueError("SyntheticAtlasParams.lesion_count_probs must be non-negative and sum to 1.")
        for name in ("elastic_spacing_mm", "bias_spacing_mm", "lesion_edge_sigma_mm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SyntheticAtlasParams.{name} must be positive.")
        for name in ("rotation_deg", "scaling", "translation_mm", "elastic_mm", "subject_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticAtlasParams.{name} must be non-negative.")
        if self.subject_jitter >= 1:
            raise ValueError("SyntheticAtlasParams.subject_jitter must be below 1 (a relative variation).")


@dataclass(frozen=True)
class _Cohort:
    """Scanner-like appearance shared by a cohort's subjects."""

    intensity_scale: float
    noise_fraction: float
    bias_strength: float


@dataclass
class _Subject:
    """One synthesised subject: arrays on the template grid and its lesion records."""

    image: np.ndarray  # float32 (X, Y, Z), scanner-like units
    label: np.ndarray  # uint8 (X, Y, Z), {0, 1}
    lesions: list[dict[str, Any]] = field(default_factory=list)
    sex: str = "n/a"
    age: int = 0


# --------------------------------------------------------------------------- naming


def atlas_subject_id(cohort_index: int, subject_number: int) -> str:
    """ATLAS-style subject id, e.g. ``atlas_subject_id(0, 2) == "sub-r001s002"``.

    Args:
        cohort_index: 0-based cohort index (cohort ``r001`` is index 0).
        subject_number: 1-based number of the subject within its cohort.
    """
    if cohort_index < 0 or subject_number < 1:
        raise ValueError(f"Need cohort_index >= 0 and subject_number >= 1, got {cohort_index}, {subject_number}.")
    return f"sub-r{cohort_index + 1:03d}s{subject_number:03d}"


def parse_atlas_subject_id(subject: str) -> tuple[str, str]:
    """Split an ATLAS subject id into cohort and subject parts.

    Args:
        subject: e.g. ``"sub-r001s002"``.

    Returns:
        ``("r001", "s002")``.
    """
    match = _SUBJECT_ID.match(subject)
    if match is None:
        raise ValueError(f"{subject!r} is not an ATLAS subject id of the form 'sub-rXXXsYYY'.")
    return match.group(1), match.group(2)


def atlas_subject_paths(root: str | os.PathLike, subject: str) -> dict[str, Path]:
    """Image and label paths of one subject in an ATLAS v2.0 tree.

    Args:
        root: data set root (the folder holding ``Training``).
        subject: subject id, e.g. ``"sub-r001s002"``.

    Returns:
        ``{"image": path, "label": path}``, e.g.
        ``<root>/Training/R001/sub-r001s002/ses-1/anat/sub-r001s002_ses-1_space-..._T1w.nii.gz``.
    """
    cohort, _ = parse_atlas_subject_id(subject)
    anat = Path(root) / "Training" / cohort.upper() / subject / "ses-1" / "anat"
    return {"image": anat / f"{subject}{ATLAS_IMAGE_SUFFIX}", "label": anat / f"{subject}{ATLAS_LABEL_SUFFIX}"}


# --------------------------------------------------------------------------- random fields


def _gaussian_weights(num_points: int, spacing_vox: float) -> np.ndarray:
    """Normalised Gaussian interpolation weights from a coarse control grid to ``num_points``.

    Returns:
        float32 (num_points, num_controls); every row sums to 1, so a field interpolated
        with these weights never exceeds its largest control value in magnitude.
    """
    num_controls = int(math.ceil((num_points - 1) / spacing_vox)) + 3
    # Control points run from one spacing before the first voxel to beyond the last one.
    controls = (np.arange(num_controls) - 1) * spacing_vox
    x = np.arange(num_points, dtype=np.float64)[:, None]
    weights = np.exp(-0.5 * ((x - controls[None, :]) / (0.6 * spacing_vox)) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


class _SmoothField:
    """A smooth random scalar field on a 3D grid: Gaussian bumps on a coarse control grid.

    Values are bounded by ``amplitude`` in magnitude (convex combinations of the control
    values, which are uniform in [-amplitude, amplitude]).
    """

    def __init__(self, rng: np.random.Generator, shape: Sequence[int], spacing_vox: float, amplitude: float):
        self.weights = [_gaussian_weights(n, spacing_vox) for n in shape]
        coarse_shape = tuple(w.shape[1] for w in self.weights)
        self.coeffs = rng.uniform(-amplitude, amplitude, size=coarse_shape).astype(np.float32)

    def evaluate(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        """Field values inside ``region`` (three slices with explicit start/stop), float32."""
        wx, wy, wz = (w[s] for w, s in zip(self.weights, region))
        # Contract one axis at a time (separable): (cx,cy,cz)->(Z,cx,cy)->(Y,Z,cx)->(X,Y,Z).
        out = np.tensordot(wz, self.coeffs, axes=([1], [2]))
        out = np.tensordot(wy, out, axes=([1], [2]))
        return np.tensordot(wx, out, axes=([1], [2]))


def _rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z (3, 3)."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


# --------------------------------------------------------------------------- anatomy


def _support_box(template: MNITemplate) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive voxel bounds (lo, hi) of where any template map is non-zero."""
    support = (template.t1 > 0) | (template.gm > 0) | (template.wm > 0)
    lo, hi = np.zeros(3, dtype=int), np.zeros(3, dtype=int)
    for axis in range(3):
        occupied = np.flatnonzero(support.any(axis=tuple(a for a in range(3) if a != axis)))
        lo[axis], hi[axis] = occupied.min(), occupied.max()
    return lo, hi


def _deform_anatomy(
    template: MNITemplate, rng: np.random.Generator, params: SyntheticAtlasParams
) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice, slice]]:
    """Resample template T1 and tissue probability through a random affine + elastic warp.

    The output voxel ``x`` takes the template value at ``A (x - c) + c + t + e(x)``
    (voxel units; ``c`` the grid centre, ``e`` the elastic field).

    Returns:
        ``(t1, tissue, region)``: float32 arrays of the grid's shape (zero outside
        ``region``) and the box of output voxels that can be non-zero at all. Only that box
        is resampled, which roughly halves the work at 1 mm.
    """
    shape = np.array(template.shape)
    res = float(template.resolution_mm)
    centre = (shape - 1) / 2.0
    angles = np.deg2rad(rng.uniform(-params.rotation_deg, params.rotation_deg, size=3))
    scales = 1.0 + rng.uniform(-params.scaling, params.scaling, size=3)
    matrix = _rotation_matrix(angles) @ np.diag(scales)
    shift = rng.uniform(-params.translation_mm, params.translation_mm, size=3) / res
    spacing, amplitude = params.elastic_spacing_mm / res, params.elastic_mm / res
    elastic = [_SmoothField(rng, template.shape, spacing, amplitude) for _ in range(3)]

    # Bound the displacement |y - x| (affine part: extreme at the grid's corners because it
    # is linear; elastic part: bounded by construction) to know which outputs can be non-zero.
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1).T - centre
    affine_disp = np.abs(corners @ (matrix - np.eye(3)).T + shift).max()
    margin = int(math.ceil(affine_disp + params.elastic_mm / res)) + 1  # +1: trilinear support
    lo, hi = _support_box(template)
    lo = np.maximum(lo - margin, 0)
    hi = np.minimum(hi + margin, shape - 1)
    region = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))

    axes = [np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c) for s, c in zip(region, centre)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    coords = np.empty((3,) + tuple(s.stop - s.start for s in region), dtype=np.float32)
    for k in range(3):
        coords[k] = elastic[k].evaluate(region)
        coords[k] += np.float32(centre[k] + shift[k])
        for j in range(3):
            coords[k] += np.float32(matrix[k, j]) * grids[j]

    tissue_template = np.clip(template.gm + template.wm, 0.0, 1.0)
    t1 = np.zeros(template.shape, dtype=np.float32)
    tissue = np.zeros(template.shape, dtype=np.float32)
    for src, dst in ((template.t1, t1), (tissue_template, tissue)):
        dst[region] = ndimage.map_coordinates(src, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    return t1, tissue, region


# --------------------------------------------------------------------------- lesions


def _grow_region(score: np.ndarray, allowed: np.ndarray, seed: tuple[int, int, int], num_voxels: int) -> np.ndarray:
    """Grow a 6-connected region from ``seed``, always adding the best-scoring neighbour.

    Args:
        score: float array (x, y, z); higher = added earlier.
        allowed: bool array (x, y, z); the region never leaves it. ``seed`` must be allowed.
        seed: start voxel index.
        num_voxels: target size; fewer when the allowed component around the seed is smaller.

    Returns:
        bool array (x, y, z), the region.
    """
    # A False border removes all bounds checks from the neighbour loop.
    padded_allowed = np.pad(allowed, 1, constant_values=False)
    padded_shape = padded_allowed.shape
    allowed_flat = padded_allowed.ravel().tobytes()  # bytes index fast in the loop below
    score_flat = np.pad(score, 1).ravel().tolist()
    strides = (padded_shape[1] * padded_shape[2], padded_shape[2], 1)
    offsets = [sign * s for s in strides for sign in (1, -1)]
    start = int(np.ravel_multi_index(tuple(int(i) + 1 for i in seed), padded_shape))
    queued = bytearray(len(allowed_flat))
    queued[start] = 1
    heap = [(-score_flat[start], start)]
    members = []
    while heap and len(members) < num_voxels:
        _, index = heapq.heappop(heap)
        members.append(index)
        for offset in offsets:
            neighbour = index + offset
            if allowed_flat[neighbour] and not queued[neighbour]:
                queued[neighbour] = 1
                heapq.heappush(heap, (-score_flat[neighbour], neighbour))
    region = np.zeros(padded_shape, dtype=bool)
    region.ravel()[members] = True
    return region[1:-1, 1:-1, 1:-1]


def _add_lesion(
    image: np.ndarray,
    label: np.ndarray,
    domain: np.ndarray,
    rng: np.random.Generator,
    resolution_mm: int,
    params: SyntheticAtlasParams,
) -> dict[str, Any] | None:
    """Grow one lesion into ``label`` (in place) and darken ``image`` (in place) accordingly.

    Args:
        image: float32 (X, Y, Z) anatomy in [0, 1].
        label: bool (X, Y, Z) lesions so far; the new lesion does not overlap them.
        domain: bool (X, Y, Z) where lesions may lie (grey/white matter inside the brain).

    Returns:
        The lesion record ``{"voxels", "contrast", "centroid_vox"}``, or None when no room is left.
    """
    candidates = np.flatnonzero(domain & ~label)
    if candidates.size == 0:
        return None
    seed = np.array(np.unravel_index(rng.choice(candidates), image.shape))
    log_low, log_high = np.log(params.lesion_volume_mm3)
    volume_mm3 = float(np.exp(rng.uniform(log_low, log_high)))
    num_voxels = max(1, int(round(volume_mm3 / resolution_mm**3)))
    contrast = float(rng.uniform(*params.lesion_contrast))
    roughness = float(rng.uniform(0.5, 1.5))

    radius = (3.0 * num_voxels / (4.0 * math.pi)) ** (1.0 / 3.0)
    half = int(math.ceil(2.5 * radius)) + 2  # room for irregular, elongated shapes
    lo = np.maximum(seed - half, 0)
    hi = np.minimum(seed + half + 1, image.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    crop_shape = tuple(int(b - a) for a, b in zip(lo, hi))

    noise = ndimage.gaussian_filter(
        rng.standard_normal(crop_shape, dtype=np.float32), sigma=max(1.0, 0.4 * radius), mode="reflect"
    )
    noise /= max(float(noise.std()), 1e-6)
    axes = [np.arange(n, dtype=np.float32) - float(c) for n, c in zip(crop_shape, seed - lo)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    distance = np.sqrt(sum(g**2 for g in grids))
    score = roughness * noise - distance / max(radius, 1.0)
    allowed = domain[crop] & ~label[crop]
    lesion = _grow_region(score, allowed, tuple(seed - lo), num_voxels)

    # Partial-volume edge: blur the mask, then keep blurred values on the right side of 0.5
    # so that the binary mask is exactly the 50 % iso-surface of the occupancy.
    sigma_vox = params.lesion_edge_sigma_mm / resolution_mm
    occupancy = ndimage.gaussian_filter(lesion.astype(np.float32), sigma=sigma_vox, mode="constant")
    occupancy = np.where(lesion, np.maximum(occupancy, 0.5), np.minimum(occupancy, 0.49)).astype(np.float32)
    image[crop] *= 1.0 - np.float32(contrast) * occupancy
    label[crop] |= lesion

    centroid = np.array(np.nonzero(lesion)).mean(axis=1) + lo
    return {
        "voxels": int(lesion.sum()),
        "contrast": round(contrast, 4),
        "centroid_vox": [round(float(c), 2) for c in centroid],
    }


# --------------------------------------------------------------------------- one subject


def _cohort_appearance(seed: int, cohort_index: int, params: SyntheticAtlasParams) -> _Cohort:
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_COHORT, cohort_index]))
    return _Cohort(
        intensity_scale=float(rng.uniform(*params.intensity_scale)),
        noise_fraction=float(rng.uniform(*params.noise_fraction)),
        bias_strength=float(rng.uniform(*params.bias_strength)),
    )


def _is_lesion_free(index: int, fraction: float, offset: float) -> bool:
    """Stratified choice: the first n subjects hold floor(n * fraction + offset) lesion-free ones."""
    return math.floor((index + 1) * fraction + offset) > math.floor(index * fraction + offset)


def _synthesize_subject(
    template: MNITemplate, seed: int, index: int, cohort: _Cohort, lesion_free: bool, params: SyntheticAtlasParams
) -> _Subject:
    """Make subject ``index`` (0-based) on the template grid; see the module docstring."""
    # Separate streams, so that a subject's anatomy and scanner do not depend on its lesions.
    streams = np.random.SeedSequence([seed, _STREAM_SUBJECT, index]).spawn(3)
    anatomy_rng, lesion_rng, scanner_rng = (np.random.default_rng(s) for s in streams)
    sex = str(anatomy_rng.choice(["F", "M"]))
    age = int(anatomy_rng.integers(30, 86))
    jitter = scanner_rng.uniform(1.0 - params.subject_jitter, 1.0 + params.subject_jitter, size=3)
    scale = cohort.intensity_scale * float(jitter[0])
    noise_fraction = cohort.noise_fraction * float(jitter[1])
    bias_strength = cohort.bias_strength * float(jitter[2])

    anatomy, tissue, region = _deform_anatomy(template, anatomy_rng, params)
    label = np.zeros(template.shape, dtype=bool)
    lesions: list[dict[str, Any]] = []
    if not lesion_free:
        domain = (tissue >= 0.5) & template.brain_mask
        probs = np.asarray(params.lesion_count_probs, dtype=float)
        num_lesions = int(lesion_rng.choice(np.arange(1, probs.size + 1), p=probs / probs.sum()))
        for _ in range(num_lesions):
            record = _add_lesion(anatomy, label, domain, lesion_rng, template.resolution_mm, params)
            if record is not None:
                lesions.append(record)

    # Scanner: bias field and scale where there is signal, then Rician noise everywhere.
    res = template.resolution_mm
    bias = _SmoothField(scanner_rng, template.shape, params.bias_spacing_mm / res, bias_strength)
    anatomy[region] *= np.exp(bias.evaluate(region)) * np.float32(scale)
    sigma = np.float32(noise_fraction * scale)
    real = anatomy + sigma * scanner_rng.standard_normal(template.shape, dtype=np.float32)
    imag = sigma * scanner_rng.standard_normal(template.shape, dtype=np.float32)
    image = np.rint(np.sqrt(real * real + imag * imag)).astype(np.float32)
    return _Subject(image=image, label=label.astype(np.uint8), lesions=lesions, sex=sex, age=age)


# --------------------------------------------------------------------------- writing


def _participants_tsv(records: list[dict[str, Any]], demographics: dict[str, tuple[str, int]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["participant_id", "cohort", "sex", "age", "num_lesions", "lesion_voxels", "lesion_contrast_mean"])
    for rec in records:
        contrasts = [les["contrast"] for les in rec["lesions"]]
        mean_contrast = f"{np.mean(contrasts):.4f}" if contrasts else "n/a"  # BIDS: n/a for missing
        sex, age = demographics[rec["subject"]]
        writer.writerow(
            [rec["subject"], rec["cohort"], sex, age, rec["num_lesions"], rec["lesion_voxels"], mean_contrast]
        )
    return buffer.getvalue()


def _previous_subject_dirs(root: Path) -> list[Path]:
    """Subject folders listed in an earlier index at ``root`` (ours to delete on overwrite)."""
    index = root / ATLAS_LESION_INDEX
    try:
        with open(index, encoding="utf-8") as f:
            subjects = [rec["subject"] for rec in json.load(f)["subjects"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    dirs = []
    for subject in subjects:
        try:
            dirs.append(atlas_subject_paths(root, subject)["image"].parents[2])
        except ValueError:
            continue
    return dirs


# --------------------------------------------------------------------------- public API


def _check_arguments(
    output_dir: str | os.PathLike,
    num_subjects: int,
    num_cohorts: int,
    lesion_free_fraction: float,
    resolution_mm: int,
    seed: int,
    overwrite: bool,
) -> Path:
    def is_int(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(num_subjects) or num_subjects < 1:
        raise ValueError(f"num_subjects must be an integer >= 1, got {num_subjects!r}.")
    if not is_int(num_cohorts) or not 1 <= num_cohorts <= num_subjects:
        raise ValueError(
            f"num_cohorts must be an integer between 1 and num_subjects={num_subjects}, got {num_cohorts!r}."
        )
    is_number = isinstance(lesion_free_fraction, (int, float, np.floating))
    if isinstance(lesion_free_fraction, bool) or not is_number:
        raise ValueError(f"lesion_free_fraction must be a number in [0, 1), got {lesion_free_fraction!r}.")
    if not 0.0 <= float(lesion_free_fraction) < 1.0:
        raise ValueError(f"lesion_free_fraction must be in [0, 1), got {lesion_free_fraction}.")
    if not is_int(resolution_mm) or resolution_mm not in SUPPORTED_RESOLUTIONS_MM:
        raise ValueError(f"resolution_mm must be one of {SUPPORTED_RESOLUTIONS_MM}, got {resolution_mm!r}.")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    root = Path(output_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"output_dir {root} exists and is not a directory.")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output_dir {root} is not empty; pass overwrite=True (--overwrite) to write into it, "
            "or choose another folder."
        )
    return root


def generate_atlas_like_dataset(
    output_dir: str | os.PathLike,
    num_subjects: int = 20,
    num_cohorts: int = 4,
    lesion_free_fraction: float = 0.2,
    resolution_mm: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    params: SyntheticAtlasParams | None = None,
) -> list[dict[str, Any]]:
    """Write a synthetic ATLAS v2.0 look-alike data set (see the module docstring).

    Args:
        output_dir: data set root; created if missing. Must be empty unless ``overwrite``.
        num_subjects: number of subjects (>= 1).
        num_cohorts: number of cohorts ``r001..`` (1 .. num_subjects); subjects round-robin.
        lesion_free_fraction: fraction of subjects without any lesion, in [0, 1).
        resolution_mm: voxel size, one of 1, 2, 3, 4 (1 = the ATLAS grid 197 x 233 x 189).
        seed: non-negative random seed; same seed, same data.
        overwrite: write into a non-empty folder, replacing files of the same name and the
            subject folders of a data set generated there before.
        progress: show a progress bar (tqdm, on stderr).
        params: appearance parameters; defaults to :class:`SyntheticAtlasParams()`.

    Returns:
        One record per subject, in subject order::

            {"subject": "sub-r001s002", "cohort": "r001", "image": abs path, "label": abs path,
             "num_lesions": int, "lesion_voxels": int,
             "lesions": [{"voxels": int, "contrast": float, "centroid_vox": [x, y, z]}]}

        ``contrast`` is the fractional darkening, ``centroid_vox`` in voxel indices.

    Raises:
        ValueError: bad arguments, ``output_dir`` is a file.
        FileExistsError: ``output_dir`` is not empty and ``overwrite`` is False.
        ImportError: nilearn (the template) is missing: ``pip install ".[demo]"``.
    """
    root = _check_arguments(output_dir, num_subjects, num_cohorts, lesion_free_fraction, resolution_mm, seed, overwrite)
    params = SyntheticAtlasParams() if params is None else params
    if not isinstance(params, SyntheticAtlasParams):
        raise ValueError(f"params must be a SyntheticAtlasParams, got {type(params).__name__}.")
    start_time = time.perf_counter()
    template = load_mni152_template(resolution_mm)

    stale = _previous_subject_dirs(root) if overwrite else []
    root.mkdir(parents=True, exist_ok=True)
    offset = float(np.random.default_rng(np.random.SeedSequence([seed, _STREAM_DATASET])).uniform())
    cohorts = [_cohort_appearance(seed, c, params) for c in range(num_cohorts)]

    indices: Sequence[int] = range(num_subjects)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="synthetic ATLAS subjects", unit="subject")
    records, demographics = [], {}
    for i in indices:
        cohort_index = i % num_cohorts
        subject_id = atlas_subject_id(cohort_index, i // num_cohorts + 1)
        lesion_free = _is_lesion_free(i, float(lesion_free_fraction), offset)
        subject = _synthesize_subject(template, seed, i, cohorts[cohort_index], lesion_free, params)
        paths = atlas_subject_paths(root, subject_id)
        save_nifti(subject.image, template.affine, paths["image"], overwrite, _NIFTI_DESCRIPTION, NIFTI_XFORM_MNI_152)
        save_nifti(subject.label, template.affine, paths["label"], overwrite, _NIFTI_DESCRIPTION, NIFTI_XFORM_MNI_152)
        demographics[subject_id] = (subject.sex, subject.age)
        records.append(
            {
                "subject": subject_id,
                "cohort": parse_atlas_subject_id(subject_id)[0],
                "image": str(paths["image"]),
                "label": str(paths["label"]),
                "num_lesions": len(subject.lesions),
                "lesion_voxels": int(sum(les["voxels"] for les in subject.lesions)),
                "lesions": subject.lesions,
            }
        )

    # Subject folders of an earlier data set that this one does not replace would otherwise
    # linger beside the new index.
    current = {atlas_subject_paths(root, rec["subject"])["image"].parents[2] for rec in records}
    for folder in stale:
        if folder not in current and folder.is_dir():
            shutil.rmtree(folder)

    generator_parameters = {
        "num_subjects": num_subjects,
        "num_cohorts": num_cohorts,
        "lesion_free_fraction": float(lesion_free_fraction),
        "resolution_mm": int(resolution_mm),
        "seed": int(seed),
        "params": asdict(params),
    }
    index = {
        "format_version": _INDEX_FORMAT_VERSION,
        "generator": _GENERATOR_NAME,
        "generator_parameters": generator_parameters,
        # Paths relative to the root, so that the folder can be moved.
        "subjects": [
            {**rec, **{key: Path(rec[key]).relative_to(root).as_posix() for key in ("image", "label")}}
            for rec in records
        ],
    }
    description = {
        "Name": "Synthetic ATLAS v2.0 look-alike (demo data, not real patients)",
        "BIDSVersion": "1.8.0",
        "DatasetType": "raw",
        "License": "Derived from the MNI-152 ICBM 2009a template (see docs/data_license.txt)",
        "GeneratedBy": [{"Name": _GENERATOR_NAME, "Description": "bundle.data.generate_atlas_like_dataset"}],
        "GeneratorParameters": generator_parameters,
        "SourceDatasets": [{"URL": "http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009"}],
        "GenerationTimeSeconds": round(time.perf_counter() - start_time, 2),
    }
    write_text(_participants_tsv(records, demographics), root / "participants.tsv", overwrite)
    write_text(json.dumps(index, indent=1) + "\n", root / ATLAS_LESION_INDEX, overwrite)
    write_text(json.dumps(description, indent=2) + "\n", root / "dataset_description.json", overwrite)
    return records


def load_atlas_like_records(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Read the subject records of a data set written by :func:`generate_atlas_like_dataset`.

    Args:
        root: the data set root (holding ``lesions.json`` and ``Training``).

    Returns:
        The records as :func:`generate_atlas_like_dataset` returned them (absolute paths).

    Raises:
        FileNotFoundError: ``root``, its ``lesions.json`` or a listed image/label is missing.
        ValueError: ``lesions.json`` is not a valid index.
    """
    root_path = Path(root).expanduser().resolve()
    index_path = root_path / ATLAS_LESION_INDEX
    if not root_path.is_dir():
        raise FileNotFoundError(f"{root_path} is not a directory.")
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{index_path} is missing: {root_path} is not a generated ATLAS-like data set "
            "(make one with scripts/make_demo_data.py)."
        )
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        subjects = index["subjects"]
        version = index["format_version"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{index_path} is not a valid ATLAS-like lesion index: {err}") from err
    if version != _INDEX_FORMAT_VERSION:
        raise ValueError(f"{index_path} has format_version {version!r}; this code reads {_INDEX_FORMAT_VERSION}.")

    records = []
    required = ("subject", "cohort", "image", "label", "num_lesions", "lesion_voxels", "lesions")
    for rec in subjects:
        missing = [k for k in required if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ValueError(f"{index_path}: a subject record lacks {missing}.")
        parse_atlas_subject_id(rec["subject"])
        out = dict(rec)
        for key in ("image", "label"):
            path = root_path / rec[key]
            if not path.is_file():
                raise FileNotFoundError(f"{path}, listed in {index_path}, does not exist.")
            out[key] = str(path)
        records.append(out)
    return records


def ensure_demo_dataset(
    dataset_dir: str | os.PathLike,
    num_subjects: int = 20,
    num_cohorts: int = 4,
    resolution_mm: int = 3,
    seed: int = 0,
    progress: Any = True,
) -> str:
    """The demo data set in ``dataset_dir``: made there when the folder is missing or empty, reused
    when it holds a look-alike made with these settings; returns the folder.

    Raises:
        DatasetError: the folder holds something else (files but no look-alike index), or a
            look-alike made with other settings (the message names them): nothing is overwritten.
    """
    root = Path(dataset_dir).expanduser().resolve()
    index_path = root / ATLAS_LESION_INDEX
    wanted = {
        "num_subjects": int(num_subjects),
        "num_cohorts": int(num_cohorts),
        "resolution_mm": int(resolution_mm),
        "seed": int(seed),
        "params": json.loads(json.dumps(asdict(SyntheticAtlasParams()))),
    }
    if index_path.is_file():
        try:
            made = json.loads(index_path.read_text())["generator_parameters"]
        except (ValueError, KeyError, TypeError) as err:
            raise DatasetError(
                f"{index_path}: not a valid look-alike index ({err}); delete {root} to remake it."
            ) from err
        changed = sorted(k for k, v in wanted.items() if made.get(k) != v)
        if changed:
            raise DatasetError(
                f"{root}: the demo data there was made with other settings ({', '.join(changed)} differ); "
                "delete the folder to remake it, or pass another dataset_dir."
            )
        return str(root)
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"{root}: not empty and not a generated look-alike; pass another dataset_dir.")
    generate_atlas_like_dataset(
        root,
        num_subjects=num_subjects,
        num_cohorts=num_cohorts,
        resolution_mm=resolution_mm,
        seed=seed,
        progress=as_flag(progress, "progress"),
    )
    return str(root)
