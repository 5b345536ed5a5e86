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
"""Synthetic CT look-alikes of MSD Task06 Lung and orCaScore (chest phantoms in Hounsfield units).

Nothing here is a real patient: every volume is a seeded geometric chest phantom. The
look-alikes exist so that the CT workflows (loading, windowing, splitting, calcium scoring)
can be run and tested without the real downloads; their *layouts* copy the real data sets so
that the same adapters (:mod:`bundle.data.msd_lung`) read both.

MSD Task06 Lung look-alike (:func:`generate_msd_lung_like`)::

    <root>/dataset.json            MSD fields: name, description, reference, licence, release,
                                   tensorImageSize, modality {"0": "CT"},
                                   labels {"0": "background", "1": "cancer"}, numTraining,
                                   numTest, training [{"image": "./imagesTr/lung_001.nii.gz",
                                   "label": "./labelsTr/lung_001.nii.gz"}, ...],
                                   test ["./imagesTs/lung_013.nii.gz", ...] (strings, as MSD)
    <root>/imagesTr/lung_XXX.nii.gz   int16 CT in HU
    <root>/labelsTr/lung_XXX.nii.gz   uint8 tumour mask {0, 1}
    <root>/imagesTs/lung_YYY.nii.gz   int16 CT in HU, no label (the MSD test part)
    <root>/nodules.json               per case: the nodules (centre voxel, radius, HU, voxels)
    <root>/README.md                  says it is synthetic, how it was made, the licence

orCaScore look-alike (:func:`generate_orcascore_like`), the layout of the real training set
plus a DICOM copy of every image::

    <root>/Training Set/Images/TRV1P1CTI.mhd (+ .raw)            int16 CT in HU (ITK MetaImage)
    <root>/Training Set/Reference standard/TRV1P1CTR.mhd (+ .raw) uint8 calcium mask {0, 1}
    <root>/Training Set/DICOM/TRV1P1/                            the same CT as a DICOM series
    <root>/reference_scores.json      per case: the lesions and Agatston scores BY CONSTRUCTION
    <root>/README.md

Case ``i`` (0-based) is ``TRV{i % 4 + 1}P{i // 4 + 1}`` (orCaScore: 4 vendors, patients
numbered per vendor). The real reference standard may use other label values than 1 (e.g. per
artery); :mod:`bundle.data.msd_lung` only lists the files.

Geometry. Arrays are ``(X, Y, Z)`` with Z axial, stored in DICOM order (i towards the
patient's left, j posterior, k superior), so the RAS affine is ``diag(-sx, -sy, sz)`` plus the
position of voxel (0, 0, 0); the MetaImage header has the identity direction and the LPS
offset of that voxel, as scanners write it.

The chest phantom (both data sets; lengths in mm, jittered per case): air (-1000 HU) outside
an elliptic body; a subcutaneous fat layer (-100); muscle / soft tissue (40); ribs (tilted,
periodic along z, ~700), sternum (~450) and a vertebra (cortical shell ~800, cancellous ~230,
spinal canal, posterior arch); two lungs (ellipsoids, ~-850 with a posterior density
gradient) with branching-looking vessels (40 HU, partial volume); a mediastinum, a heart
(~42 HU, blood pool ~36) in a pericardial fat shell, the aorta and the trachea (-1000).
Edges get a slight partial-volume blur, then correlated Gaussian noise (sigma 10-20 HU,
clipped at 4 sigma) is added and values are rounded to int16 in [-1024, 3071].

Lung tumours (MSD): 1-3 lobulated nodules per case inside a lung (the nodule, grown by its
radius plus a voxel, fits in the lung), radius 2-5 in-plane voxels, HU 0-60 with a partial-volume
edge; the label is the 50 % iso-surface of the nodule's occupancy (always within the lung mask).
Every case ``i`` with ``i % 4 == 3`` instead holds a single tiny nodule (radius 1.3-1.7 voxels).

Coronary calcium (orCaScore). Case ``i`` follows the burden pattern ``i % 4``:
0 "moderate" (one lesion in each Agatston density band, then 0-1 more, 1.5-3.5 mm wide,
1-2 slices), 1 "minimal" (one lesion of the fewest pixels that reach 1.5 mm^2, band 1 or 2:
category I unless pixels exceed ~3 mm), 2 "none" (no calcium), 3 "severe" (one lesion per
band, then 2-3 more, 3-5.5 mm wide, 2-3 slices). A lesion is a stack of axis-aligned boxes
(one per slice; end slices of 3-slice lesions possibly smaller) of known pixel counts on a
coronary artery (a segment winding along the heart wall) in the pericardial fat. Within a
slice the HU is constant, except in "peaked" lesions where the centre pixel is brighter (it
sets the slice's peak); end slices of some lesions are one band lower than the lesion's band.
The boxes are inserted after blur and noise, and only where all 26 neighbours of the box are
below 130 HU and not bone, at least one voxel away from other lesions, so that the calcium
above 130 HU is exactly the boxes. The Agatston score of each lesion is then known
in closed form: sum over its slices of ``pixels x sx x sy x weight(peak HU of the slice)``,
``weight`` = 1 (130-199), 2 (200-299), 3 (300-399), 4 (>= 400); every slice area is >= 1.5 mm^2,
above the usual 1 mm^2 minimum. ``reference_scores.json`` holds these numbers (and the risk
category of the total: 0 / I <= 10 / II <= 100 / III <= 400 / IV), computed here without
any scorer, to check :func:`bundle.metrics.calcium.agatston_scores` against.

Randomness: case ``i`` draws from generators seeded by ``(seed, data set, i)``, so a case does
not depend on how many others are made.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bundle.data.dicom import write_dicom_series
from bundle.data.writers import save_nifti
from bundle.utils.io import atomic_output, write_json, write_text
from scipy import ndimage

__all__ = [
    "CT_TISSUE_NAMES",
    "MSD_LUNG_NODULE_INDEX",
    "ORCASCORE_REFERENCE_SCORES",
    "ORCASCORE_TRAINING_DIR",
    "ORCASCORE_IMAGE_DIR",
    "ORCASCORE_REFERENCE_DIR",
    "ORCASCORE_DICOM_DIR",
    "SyntheticCTCase",
    "msd_lung_case_id",
    "orcascore_case_id",
    "make_msd_lung_case",
    "make_orcascore_case",
    "write_metaimage",
    "generate_msd_lung_like",
    "generate_orcascore_like",
]

#: Tissue codes of :attr:`SyntheticCTCase.tissues`.
CT_TISSUE_NAMES: dict[int, str] = {
    0: "air",
    1: "fat",
    2: "soft tissue",
    3: "lung",
    4: "blood vessel",
    5: "heart",
    6: "bone",
    7: "airway",
    8: "lesion",
}
_AIR, _FAT, _SOFT, _LUNG, _VESSEL, _HEART, _BONE, _AIRWAY, _LESION = range(9)

#: Per-case nodule index at the root of the MSD look-alike.
MSD_LUNG_NODULE_INDEX = "nodules.json"
#: Per-case lesion and Agatston index at the root of the orCaScore look-alike.
ORCASCORE_REFERENCE_SCORES = "reference_scores.json"
#: orCaScore folders, relative to the data set root (the real download's names).
ORCASCORE_TRAINING_DIR = "Training Set"
ORCASCORE_IMAGE_DIR = f"{ORCASCORE_TRAINING_DIR}/Images"
ORCASCORE_REFERENCE_DIR = f"{ORCASCORE_TRAINING_DIR}/Reference standard"
ORCASCORE_DICOM_DIR = f"{ORCASCORE_TRAINING_DIR}/DICOM"

_LUNG_GENERATOR = "grcsf-bundle synthetic MSD Task06 Lung look-alike"
_ORCA_GENERATOR = "grcsf-bundle synthetic orCaScore look-alike"
_INDEX_FORMAT_VERSION = 1
_STREAM_LUNG, _STREAM_ORCA = 10, 11  # SeedSequence tags: independent of the ATLAS look-alike
_HU_MIN, _HU_MAX = -1024, 3071  # the 12-bit CT range
_CALCIUM_HU = 130.0
# peak HU ranges drawn for the Agatston density bands 1..4 (kept off the band edges)
_BAND_PEAK_HU = {1: (135, 195), 2: (205, 295), 3: (305, 395), 4: (405, 950)}
_MIN_SLICE_AREA_MM2 = 1.5  # every constructed slice area, above the usual 1 mm^2 minimum


@dataclass
class SyntheticCTCase:
    """One synthetic CT in memory.

    Attributes:
        subject: case id, e.g. ``"lung_001"`` or ``"TRV1P1"``.
        image: int16 ``(X, Y, Z)`` CT in HU.
        label: uint8 ``(X, Y, Z)`` lesion mask {0, 1} (tumour or calcium).
        affine: float64 (4, 4) voxel -> RAS mm.
        tissues: uint8 ``(X, Y, Z)`` tissue codes (:data:`CT_TISSUE_NAMES`); lesions are 8.
        lungs: bool ``(X, Y, Z)`` lung mask (parenchyma and its vessels) before lesions were added.
        lesions: per-lesion records (module docstring; nodules or calcifications).
        info: case-level facts (burden pattern, noise sigma, ...).
    """

    subject: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    tissues: np.ndarray
    lungs: np.ndarray
    lesions: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm per array axis."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


# --------------------------------------------------------------------------- naming


def msd_lung_case_id(number: int) -> str:
    """MSD case id, e.g. ``msd_lung_case_id(1) == "lung_001"`` (1-based)."""
    if number < 1:
        raise ValueError(f"MSD case numbers start at 1, got {number}.")
    return f"lung_{number:03d}"


def orcascore_case_id(index: int) -> str:
    """orCaScore training case id of case ``index`` (0-based): ``TRV{index % 4 + 1}P{index // 4 + 1}``."""
    if index < 0:
        raise ValueError(f"case index must be >= 0, got {index}.")
    return f"TRV{index % 4 + 1}P{index // 4 + 1}"


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class _Grid:
    """A CT grid in the patient frame (LPS mm, origin at the chest centre)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    centre_mm: tuple[float, float, float]  # patient-frame position of the grid centre

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse patient-frame coordinates ``u`` (X, 1, 1), ``v`` (1, Y, 1), ``w`` (1, 1, Z), float32."""
        out = []
        for axis, (n, s, c) in enumerate(zip(self.shape, self.spacing, self.centre_mm)):
            coord = ((np.arange(n) - (n - 1) / 2.0) * s + c).astype(np.float32)
            view = [1, 1, 1]
            view[axis] = n
            out.append(coord.reshape(view))
        return out[0], out[1], out[2]

    def affine(self, table_offset_mm: Sequence[float]) -> np.ndarray:
        """RAS affine of the grid: i -> patient left, j -> posterior, k -> superior (DICOM order)."""
        lps_origin = np.array(
            [c - (n - 1) / 2.0 * s + t for n, s, c, t in zip(self.shape, self.spacing, self.centre_mm, table_offset_mm)]
        )
        affine = np.eye(4)
        affine[:3, :3] = np.diag([-self.spacing[0], -self.spacing[1], self.spacing[2]])
        affine[:3, 3] = lps_origin * np.array([-1.0, -1.0, 1.0])
        return affine


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float) -> np.ndarray:
    """Squared normalised elliptic radius in the (u, v) plane (<= 1 inside)."""
    return ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2


def _rotated_ellipsoid(
    u: np.ndarray, v: np.ndarray, w: np.ndarray, centre: Sequence[float], axes: Sequence[float], angle: float
) -> np.ndarray:
    """Squared normalised radius of an ellipsoid rotated by ``angle`` (rad) about the w axis."""
    du, dv, dw = u - centre[0], v - centre[1], w - centre[2]
    ca, sa = math.cos(angle), math.sin(angle)
    a = (ca * du + sa * dv) / axes[0]
    b = (-sa * du + ca * dv) / axes[1]
    return a**2 + b**2 + (dw / axes[2]) ** 2


# --------------------------------------------------------------------------- chest anatomy


@dataclass
class _Chest:
    """Anatomy of one case before noise: HU (float32), tissue codes and a few masks/landmarks."""

    hu: np.ndarray
    tissues: np.ndarray
    lungs: np.ndarray
    pericardial_fat: np.ndarray
    heart_centre: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    heart_angle: float


def _draw_chest_layout(rng: np.random.Generator, scale: float) -> dict[str, Any]:
    """Random sizes and positions (mm, patient frame) of the chest structures."""

    def jitter(value: float, rel: float = 0.08) -> float:
        return float(value * scale * rng.uniform(1.0 - rel, 1.0 + rel))

    layout = {
        "body_axes": (jitter(150.0), jitter(105.0)),
        "fat_mm": jitter(12.0, 0.4),
        "rib_period_mm": jitter(28.0, 0.1),
        "rib_phase_mm": float(rng.uniform(0.0, 28.0 * scale)),
        "lung_hu": float(rng.uniform(-870.0, -830.0)),
        "heart_axes": (jitter(50.0), jitter(40.0), jitter(48.0)),
        "heart_angle": math.radians(float(rng.uniform(25.0, 40.0))),
        "heart_shift": (float(rng.uniform(-5.0, 5.0)) * scale, float(rng.uniform(-5.0, 5.0)) * scale),
        "pericardial_fat_mm": jitter(6.0, 0.2),
        "rib_hu": float(rng.uniform(600.0, 800.0)),
    }
    body_a, body_b = layout["body_axes"]
    fat = layout["fat_mm"]
    rib_a, rib_b = body_a - fat - 6.0 * scale, body_b - fat - 6.0 * scale
    layout["rib_axes"] = (rib_a, rib_b)
    cav_a, cav_b = rib_a - 8.0 * scale, rib_b - 8.0 * scale
    layout["cavity_axes"] = (cav_a, cav_b)
    layout["spine_v"] = rib_b - 38.0 * scale
    hu, hv = layout["heart_shift"]
    layout["heart_centre"] = (22.0 * scale + hu, -0.32 * cav_b + hv, -45.0 * scale)
    return layout


def _chest_anatomy(grid: _Grid, layout: dict[str, Any], scale: float) -> _Chest:
    """Paint the chest phantom (module docstring) on ``grid``; no lesions, no noise."""
    u, v, w = grid.axes()
    shape = grid.shape
    hu = np.full(shape, -1000.0, dtype=np.float32)
    tissues = np.zeros(shape, dtype=np.uint8)

    def paint(mask: np.ndarray, value: float | np.ndarray, code: int) -> None:
        mask = np.broadcast_to(mask, shape)
        hu[mask] = value if np.isscalar(value) else np.broadcast_to(value, shape)[mask]
        tissues[mask] = code

    body_a, body_b = layout["body_axes"]
    fat = layout["fat_mm"]
    rib_a, rib_b = layout["rib_axes"]
    cav_a, cav_b = layout["cavity_axes"]
    s = scale

    paint(_ellipse(u, v, 0, 0, body_a, body_b) <= 1, -100.0, _FAT)
    paint(_ellipse(u, v, 0, 0, body_a - fat, body_b - fat) <= 1, 40.0, _SOFT)

    # ribs: an elliptic band, periodic along z and tilted (lower in front), with an anterior gap
    band = (_ellipse(u, v, 0, 0, rib_a, rib_b) <= 1) & (_ellipse(u, v, 0, 0, rib_a - 9 * s, rib_b - 9 * s) > 1)
    rib_z = np.mod(w - 0.3 * v + layout["rib_phase_mm"], layout["rib_period_mm"]) < 10.0 * s
    cartilage = (v < -0.5 * rib_b) & (np.abs(u) < 30.0 * s)
    paint(band & rib_z & ~cartilage, layout["rib_hu"], _BONE)
    # sternum
    sternum = (np.abs(u) < 16.0 * s) & (v > -rib_b - 2.0 * s) & (v < -rib_b + 10.0 * s)
    paint(sternum & (_ellipse(u, v, 0, 0, body_a - fat, body_b - fat) <= 1), 450.0, _BONE)

    # vertebra: body (cortical shell + cancellous), canal, posterior arch
    spine_v = layout["spine_v"]
    r_vert = 17.0 * s
    r2 = (u / r_vert) ** 2 + ((v - spine_v) / r_vert) ** 2
    paint(r2 <= 1, 800.0, _BONE)
    paint(r2 <= ((r_vert - 2.5 * s) / r_vert) ** 2, 230.0, _BONE)
    canal_v = spine_v + r_vert + 9.0 * s
    rc2 = u**2 + (v - canal_v) ** 2
    paint((rc2 <= (12.0 * s) ** 2) & (v > spine_v + r_vert - 2 * s), 600.0, _BONE)
    paint(rc2 <= (7.0 * s) ** 2, 20.0, _SOFT)
    spine_zone = (u**2 + (v - spine_v) ** 2 <= (r_vert + 6 * s) ** 2) | (v > spine_v)

    # heart in its pericardial fat shell
    hc, ha, angle = layout["heart_centre"], layout["heart_axes"], layout["heart_angle"]
    pf = layout["pericardial_fat_mm"]
    heart = _rotated_ellipsoid(u, v, w, hc, ha, angle) <= 1
    shell_axes = tuple(a + pf for a in ha)
    heart_and_fat = _rotated_ellipsoid(u, v, w, hc, shell_axes, angle) <= 1
    cavity = _ellipse(u, v, 0, 0, cav_a, cav_b) <= 1

    # lungs: ellipsoids on both sides, cut by mediastinum, heart, spine and the cavity wall
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        lung = _ellipse(u, v, side * 0.5 * cav_a, 0.05 * cav_b, 0.46 * cav_a, 0.88 * cav_b)
        lungs |= (lung + ((w - 20.0 * s) / (170.0 * s)) ** 2) <= 1
    mediastinum = (np.abs(u - 5.0 * s) < 0.12 * cav_a) & (v < spine_v - r_vert)
    near_heart = _rotated_ellipsoid(u, v, w, hc, tuple(a + pf + 2 * s for a in ha), angle) <= 1
    lungs &= np.broadcast_to(cavity & ~spine_zone & ~mediastinum, shape) & ~near_heart
    gradient = layout["lung_hu"] + 40.0 * np.clip(v / cav_b, -1.0, 1.0)  # denser posteriorly
    paint(lungs, gradient, _LUNG)

    # mediastinal soft tissue already is 40 HU; heart, fat shell, blood pool
    paint(heart_and_fat & np.broadcast_to(cavity, shape), -90.0, _FAT)
    paint(heart & np.broadcast_to(cavity, shape), 42.0, _HEART)
    blood_pool = _rotated_ellipsoid(u, v, w, hc, tuple(0.6 * a for a in ha), angle) <= 1
    paint(blood_pool, 36.0, _HEART)
    pericardial_fat = np.broadcast_to(heart_and_fat & cavity, shape) & ~heart

    # aorta: descending beside the spine, ascending above the heart; trachea above the carina
    desc = ((u - 26.0 * s) ** 2 + (v - (spine_v - 4.0 * s)) ** 2 <= (11.0 * s) ** 2) & ~spine_zone
    paint(np.broadcast_to(desc, shape) & (w > hc[2] - ha[2]), 40.0, _VESSEL)
    heart_top = hc[2] + 0.6 * ha[2]
    asc = ((u + 12.0 * s) ** 2 + (v - (hc[1] + 12.0 * s)) ** 2 <= (14.0 * s) ** 2) & (w > heart_top)
    paint(asc, 40.0, _VESSEL)
    trachea = (u**2 + (v - (spine_v - r_vert - 22.0 * s)) ** 2 <= (8.0 * s) ** 2) & (w > heart_top + 15.0 * s)
    paint(trachea, -1000.0, _AIRWAY)
    lungs &= tissues == _LUNG

    return _Chest(
        hu=hu,
        tissues=tissues,
        lungs=lungs,
        pericardial_fat=pericardial_fat & (tissues == _FAT),
        heart_centre=tuple(float(c) for c in hc),
        heart_axes=tuple(float(a) for a in ha),
        heart_angle=float(angle),
    )


def _lung_vessels(chest: _Chest, grid: _Grid, rng: np.random.Generator) -> None:
    """Add branching-looking vessels (40 HU, partial-volume edge) inside the lungs, in place.

    A vessel is where two independent smooth random fields are both near zero: the
    intersection of two random surfaces, i.e. random tubes.
    """
    sigma_vox = [6.0 / s for s in grid.spacing]
    fields = []
    for _ in range(2):
        g = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32), sigma_vox, mode="wrap")
        fields.append(np.abs(g / max(float(g.std()), 1e-6)))
    tube = np.maximum(fields[0], fields[1])
    width = 0.35
    occupancy = np.clip((width - tube) / (0.5 * width), 0.0, 1.0) * chest.lungs
    chest.hu += occupancy * (40.0 - chest.hu)
    chest.tissues[(occupancy >= 0.5) & chest.lungs] = _VESSEL


def _finish(hu: np.ndarray, grid: _Grid, rng: np.random.Generator, sigma_hu: float) -> np.ndarray:
    """Partial-volume blur, correlated noise clipped at 4 sigma, rounding to int16 HU."""
    blur = [0.5 * min(grid.spacing) / s for s in grid.spacing]
    out = ndimage.gaussian_filter(hu, blur, mode="nearest")
    noise = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32), 0.6, mode="wrap")
    noise *= np.float32(sigma_hu / max(float(noise.std()), 1e-6))
    out += np.clip(noise, -4.0 * sigma_hu, 4.0 * sigma_hu)
    return np.clip(np.rint(out), _HU_MIN, _HU_MAX).astype(np.int16)


def _check_geometry(shape: Sequence[int], spacing: Sequence[float], min_size: Sequence[int], name: str) -> None:
    if len(shape) != 3 or any(not isinstance(n, (int, np.integer)) or isinstance(n, bool) for n in shape):
        raise ValueError(f"{name}: shape must be 3 integers (X, Y, Z), got {tuple(shape)!r}.")
    if any(n < m for n, m in zip(shape, min_size)):
        raise ValueError(f"{name}: shape {tuple(shape)} is too small; each axis needs at least {tuple(min_size)}.")
    sp = np.asarray(spacing, dtype=float)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"{name}: spacing must be 3 positive numbers in mm, got {tuple(spacing)!r}.")


# --------------------------------------------------------------------------- MSD Task06 Lung


def _add_nodule(
    chest: _Chest, label: np.ndarray, grid: _Grid, rng: np.random.Generator, radius_vox: float, free: np.ndarray
) -> dict[str, Any] | None:
    """Put one lobulated nodule in a lung (in place); None when it does not fit anywhere.

    Args:
        label: bool tumour mask so far (the new nodule is added to it).
        free: bool, where the centre may lie (lungs minus the neighbourhood of other nodules).
    """
    spacing = np.asarray(grid.spacing)
    radius_mm = float(radius_vox * min(spacing[:2]))
    # distance (mm) to the nearest non-lung voxel: the nodule plus a voxel must fit in the lung
    depth = ndimage.distance_transform_edt(chest.lungs, sampling=spacing)
    candidates = np.flatnonzero(free & (depth > radius_mm * 1.15 + float(spacing.max())))
    if candidates.size == 0:
        return None
    centre = np.array(np.unravel_index(int(rng.choice(candidates)), grid.shape))
    hu = float(rng.uniform(0.0, 60.0))

    half = np.ceil(1.3 * radius_mm / spacing).astype(int) + 2
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, grid.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    rel = [((np.arange(a, b) - c) * s).astype(np.float32) for a, b, c, s in zip(lo, hi, centre, spacing)]
    du, dv, dw = np.meshgrid(*rel, indexing="ij", sparse=True)
    dist = np.sqrt(du**2 + dv**2 + dw**2) / np.float32(radius_mm)
    # lobulation: low-order angular modulation of the radius
    k = rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
    lobes = 0.12 * np.tanh(k[0] * du / radius_mm + k[1] * dv / radius_mm + k[2] * dw / radius_mm)
    lobes = lobes * np.minimum(dist, 1.0)  # keeps the centre voxel inside
    signed = dist * (1.0 + lobes) - 1.0  # < 0 inside (in radii)
    edge = max(0.35 * float(spacing.min()) / radius_mm, 0.05)
    occupancy = np.clip(0.5 - signed / (2.0 * edge), 0.0, 1.0) * chest.lungs[crop]
    inside = (signed <= 0) & chest.lungs[crop]
    chest.hu[crop] += occupancy * (np.float32(hu) - chest.hu[crop])
    chest.tissues[crop][inside] = _LESION
    label[crop] |= inside
    return {
        "centre_vox": [int(c) for c in centre],
        "radius_mm": round(radius_mm, 3),
        "hu": round(hu, 2),
        "voxels": int(inside.sum()),
    }


def make_msd_lung_case(
    index: int,
    seed: int = 0,
    shape: Sequence[int] = (96, 96, 48),
    spacing: Sequence[float] = (3.0, 3.0, 5.0),
    subject: str | None = None,
) -> SyntheticCTCase:
    """Make chest CT ``index`` (0-based) of the MSD Task06 Lung look-alike in memory.

    Args:
        index: case index; ``index % 4 == 3`` gives a single tiny nodule.
        seed: non-negative random seed.
        shape: ``(X, Y, Z)`` voxels; the anatomy is scaled to fit the field of view.
        spacing: voxel size in mm.
        subject: case id (default ``lung_{index + 1:03d}``).

    Returns:
        :class:`SyntheticCTCase` whose ``lesions`` are the nodules.
    """
    _check_geometry(shape, spacing, (32, 32, 8), "make_msd_lung_case")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    streams = np.random.SeedSequence([seed, _STREAM_LUNG, index]).spawn(3)
    anatomy_rng, lesion_rng, noise_rng = (np.random.default_rng(s) for s in streams)

    fov = [n * s for n, s in zip(shape, spacing)]
    scale = min(1.0, 0.46 * fov[0] / 160.0, 0.46 * fov[1] / 115.0)  # the body fits in the FOV
    layout = _draw_chest_layout(anatomy_rng, scale)
    grid = _Grid(shape, spacing, (0.0, float(anatomy_rng.uniform(-5, 5)), float(anatomy_rng.uniform(-10, 10))))
    chest = _chest_anatomy(grid, layout, scale)
    _lung_vessels(chest, grid, anatomy_rng)

    tiny = index % 4 == 3
    label = np.zeros(shape, dtype=bool)
    nodules: list[dict[str, Any]] = []
    num = 1 if tiny else int(lesion_rng.integers(1, 4))
    for _ in range(num):
        radius_vox = float(lesion_rng.uniform(1.3, 1.7)) if tiny else float(lesion_rng.uniform(2.0, 5.0))
        # centres at least (r1 + r2 + 2 voxels) apart: nodules never touch
        keep_out = ndimage.distance_transform_edt(~label, sampling=spacing) if label.any() else None
        free = chest.lungs.copy()
        if keep_out is not None:
            free &= keep_out > radius_vox * min(spacing[:2]) * 1.15 + 2.0 * max(spacing)
        while True:
            record = _add_nodule(chest, label, grid, lesion_rng, radius_vox, free)
            if record is not None or radius_vox <= 1.0:
                break
            radius_vox = max(1.0, radius_vox * 0.7)  # no room: try smaller
        if record is not None:
            nodules.append(record)
    if not nodules:
        raise RuntimeError(
            f"make_msd_lung_case: no room for a nodule in the lungs of a {shape} grid at {spacing} mm; "
            "use a larger shape."
        )

    sigma = float(noise_rng.uniform(10.0, 20.0))
    image = _finish(chest.hu, grid, noise_rng, sigma)
    table = (0.0, float(noise_rng.uniform(-20, 20)), float(noise_rng.uniform(-400, -200)))
    return SyntheticCTCase(
        subject=subject or msd_lung_case_id(index + 1),
        image=image,
        label=label.astype(np.uint8),
        affine=grid.affine(table),
        tissues=chest.tissues,
        lungs=chest.lungs,
        lesions=nodules,
        info={"tiny_nodule": tiny, "noise_sigma_hu": round(sigma, 2), "anatomy_scale": round(scale, 4)},
    )


# --------------------------------------------------------------------------- orCaScore


_BURDEN_PATTERNS = ("moderate", "minimal", "none", "severe")


def _density_weight(hu: float) -> int:
    """Agatston density weight of a peak HU, written out independently of bundle.metrics."""
    if hu >= 400:
        return 4
    if hu >= 300:
        return 3
    if hu >= 200:
        return 2
    return 1 if hu >= 130 else 0


def _risk_category(total: float) -> str:
    """Agatston risk category of a total score: 0, I (<= 10), II (<= 100), III (<= 400), IV."""
    for code, upper in (("0", 0.0), ("I", 10.0), ("II", 100.0), ("III", 400.0)):
        if total <= upper:
            return code
    return "IV"


_ARTERY_ARC_RAD = 0.35  # half the angular extent of an artery's segment within one slice


def _coronary_paths(chest: _Chest) -> list[Callable[[float, float], tuple[float, float]]]:
    """Three coronary arteries (LAD, LCX, RCA) in the pericardial fat.

    Each is a function ``(w, delta) -> (u, v)``: in the slice at height ``w`` the artery runs
    along the heart wall over the angles ``phi(w) + delta``, ``|delta| <= _ARTERY_ARC_RAD``
    (arteries wind around the heart, so an axial slice cuts a segment of them).
    """
    hc, ha, angle = chest.heart_centre, chest.heart_axes, chest.heart_angle
    ca, sa = math.cos(angle), math.sin(angle)
    paths = []
    # angles in the heart's own frame: LAD front-left, LCX back-left, RCA right
    for phi0, twist in ((2.3, 0.004), (0.6, -0.004), (-2.4, 0.003)):

        def at(w: float, delta: float = 0.0, phi0: float = phi0, twist: float = twist) -> tuple[float, float]:
            radial = math.sqrt(max(0.0, 1.0 - ((w - hc[2]) / ha[2]) ** 2))
            phi = phi0 + twist * (w - hc[2]) + delta
            # just outside the heart wall, inside the fat shell
            a = (ha[0] * radial + 2.5) * math.cos(phi)
            b = (ha[1] * radial + 2.5) * math.sin(phi)
            return hc[0] + ca * a - sa * b, hc[1] + sa * a + ca * b

        paths.append(at)
    return paths


def _paint_coronaries(chest: _Chest, grid: _Grid) -> list[Callable[[float, float], tuple[float, float]]]:
    """Draw the three arteries (1.8 mm radius, 40 HU) where they run in the fat shell."""
    u, v, w = grid.axes()
    u2, v2 = u[:, :, 0], v[:, :, 0]
    paths = _coronary_paths(chest)
    deltas = np.linspace(-_ARTERY_ARC_RAD, _ARTERY_ARC_RAD, 15)
    for k in range(grid.shape[2]):
        allowed = chest.pericardial_fat[:, :, k] | (chest.tissues[:, :, k] == _HEART)
        vessel = np.zeros(allowed.shape, dtype=bool)
        for path in paths:
            for delta in deltas:
                cu, cv = path(float(w[0, 0, k]), float(delta))
                vessel |= (u2 - cu) ** 2 + (v2 - cv) ** 2 <= 1.8**2
        vessel &= allowed
        chest.hu[:, :, k][vessel] = 40.0
        chest.tissues[:, :, k][vessel] = _VESSEL
    return paths


def _lesion_plan(pattern: str, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Bands, slice counts and sizes of the calcifications of a burden pattern."""
    if pattern == "none":
        return []
    if pattern == "minimal":
        return [{"band": int(rng.integers(1, 3)), "slices": 1, "side_mm": (0.0, 0.0), "smallest": True}]
    bands = [int(b) for b in rng.permutation([1, 2, 3, 4])]  # every band at least once
    extra = int(rng.integers(0, 2)) if pattern == "moderate" else int(rng.integers(2, 4))
    bands += [int(b) for b in rng.integers(1, 5, size=extra)]
    plans = []
    for band in bands:
        if pattern == "moderate":
            plans.append({"band": band, "slices": int(rng.integers(1, 3)), "side_mm": (1.5, 3.5)})
        else:
            plans.append({"band": band, "slices": int(rng.integers(2, 4)), "side_mm": (3.0, 5.5)})
    return plans


def _place_calcification(
    image: np.ndarray,
    tissues: np.ndarray,
    calcium: np.ndarray,
    grid: _Grid,
    paths: list[Callable[[float, float], tuple[float, float]]],
    plan: dict[str, Any],
    rng: np.random.Generator,
    max_tries: int = 300,
) -> dict[str, Any] | None:
    """Insert one box-stack calcification (module docstring) into ``image`` in place.

    Returns:
        The lesion record with its closed-form Agatston score, or None if no place was found.
    """
    sx, sy, sz = grid.spacing
    pixel_area = sx * sy
    # smallest square whose area is >= _MIN_SLICE_AREA_MM2 (a "smallest" lesion instead has
    # the fewest pixels that reach that area)
    side_min = math.ceil(math.sqrt(math.ceil(_MIN_SLICE_AREA_MM2 / pixel_area)))
    nz = plan["slices"]
    _, _, w = grid.axes()
    band = plan["band"]
    peaked = bool(rng.random() < 0.5)
    lower_ends = nz >= 2 and band >= 2 and bool(rng.random() < 0.4)
    nx = max(side_min, round(float(rng.uniform(*plan["side_mm"])) / sx))
    ny = max(side_min, round(float(rng.uniform(*plan["side_mm"])) / sy))
    if plan.get("smallest", False):  # the fewest pixels that reach the minimum area
        min_pixels = max(1, math.ceil(_MIN_SLICE_AREA_MM2 / pixel_area))
        nx = math.ceil(math.sqrt(min_pixels))
        ny = math.ceil(min_pixels / nx)
        if band * nx * ny * pixel_area > 10.0:  # keep a minimal burden in category I where pixels allow
            band = 1
    # per slice: end slices of thick lesions lose a row or a column (never below side_min)
    sizes = []
    for s in range(nz):
        end = nz >= 3 and s in (0, nz - 1)
        shrink_y = end and bool(rng.random() < 0.5)
        sizes.append((max(min(side_min, nx), nx - int(end)), max(min(side_min, ny), ny - int(shrink_y))))

    for _ in range(max_tries):
        k0 = int(rng.integers(1, grid.shape[2] - nz))  # a free slice above and below
        path = paths[int(rng.integers(len(paths)))]
        cu, cv = path(float(w[0, 0, k0]), float(rng.uniform(-_ARTERY_ARC_RAD, _ARTERY_ARC_RAD)))
        # patient frame -> voxel index (the grid's u axis runs with i, v with j)
        ci = (cu - grid.centre_mm[0]) / sx + (grid.shape[0] - 1) / 2.0
        cj = (cv - grid.centre_mm[1]) / sy + (grid.shape[1] - 1) / 2.0
        i0, j0 = int(round(ci - nx / 2.0)), int(round(cj - ny / 2.0))
        if i0 < 1 or j0 < 1 or i0 + nx + 1 >= grid.shape[0] or j0 + ny + 1 >= grid.shape[1]:
            continue
        box = np.zeros((nx, ny, nz), dtype=bool)
        for s, (bx, by) in enumerate(sizes):
            box[:bx, :by, s] = True
        region = (slice(i0 - 1, i0 + nx + 1), slice(j0 - 1, j0 + ny + 1), slice(k0 - 1, k0 + nz + 1))
        inner = np.zeros((nx + 2, ny + 2, nz + 2), dtype=bool)
        inner[1:-1, 1:-1, 1:-1] = box
        ring = ndimage.binary_dilation(inner, np.ones((3, 3, 3), dtype=bool)) & ~inner
        if calcium[region].any():  # at least one voxel of other tissue between two lesions
            continue
        if (image[region][ring] >= _CALCIUM_HU).any() or (tissues[region][ring] == _BONE).any():
            continue
        if not np.isin(tissues[region][inner], (_FAT, _VESSEL, _HEART, _SOFT)).all():
            continue
        # HU per slice: the peak sets the slice weight
        slices = []
        for s, (bx, by) in enumerate(sizes):
            slice_band = band - 1 if lower_ends and s in (0, nz - 1) else band
            peak = int(rng.integers(*_BAND_PEAK_HU[slice_band]))
            base = int(rng.integers(_BAND_PEAK_HU[1][0], min(peak, _BAND_PEAK_HU[1][1]) + 1)) if peaked else peak
            plane = np.full((bx, by), base, dtype=np.int16)
            plane[bx // 2, by // 2] = peak
            k = k0 + s
            image[i0 : i0 + bx, j0 : j0 + by, k] = plane
            pixels = bx * by
            weight = _density_weight(peak)
            slices.append(
                {
                    "slice": k,
                    "pixels": pixels,
                    "area_mm2": pixels * pixel_area,
                    "peak_hu": peak,
                    "weight": weight,
                    "agatston": pixels * pixel_area * weight,
                }
            )
        voxels = np.zeros(grid.shape, dtype=bool)
        voxels[region] = inner
        calcium |= voxels
        tissues[voxels] = _LESION
        n_voxels = int(sum(sl["pixels"] for sl in slices))
        return {
            "band": band,
            "peaked": peaked,
            "bbox_vox": [[i0, i0 + nx - 1], [j0, j0 + ny - 1], [k0, k0 + nz - 1]],
            "n_voxels": n_voxels,
            "volume_mm3": n_voxels * sx * sy * sz,
            "peak_hu": max(sl["peak_hu"] for sl in slices),
            "n_slices": nz,
            "agatston": float(sum(sl["agatston"] for sl in slices)),
            "slices": slices,
        }
    return None


def make_orcascore_case(
    index: int,
    seed: int = 0,
    shape: Sequence[int] = (192, 192, 24),
    spacing: Sequence[float] = (0.9, 0.9, 3.0),
    subject: str | None = None,
) -> SyntheticCTCase:
    """Make cardiac calcium-scoring CT ``index`` (0-based) of the orCaScore look-alike in memory.

    The field of view is centred on the heart (a cardiac scan). Burden pattern ``index % 4``:
    module docstring.

    Args:
        index: case index.
        seed: non-negative random seed.
        shape: ``(X, Y, Z)`` voxels; the field of view should hold the heart (>= ~150 mm in-plane).
        spacing: voxel size in mm (orCaScore: 0.4-0.7 in-plane, 3 mm slices).
        subject: case id (default :func:`orcascore_case_id`).

    Returns:
        :class:`SyntheticCTCase` whose ``lesions`` are the calcifications (with Agatston scores
        by construction) and ``info`` the total and the risk category.
    """
    _check_geometry(shape, spacing, (48, 48, 8), "make_orcascore_case")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    streams = np.random.SeedSequence([seed, _STREAM_ORCA, index]).spawn(3)
    anatomy_rng, lesion_rng, noise_rng = (np.random.default_rng(s) for s in streams)

    layout = _draw_chest_layout(anatomy_rng, 1.0)
    hc = layout["heart_centre"]
    centre = (hc[0] + float(anatomy_rng.uniform(-8, 8)), hc[1] + float(anatomy_rng.uniform(-8, 8)), hc[2])
    grid = _Grid(shape, spacing, centre)
    chest = _chest_anatomy(grid, layout, 1.0)
    _lung_vessels(chest, grid, anatomy_rng)
    paths = _paint_coronaries(chest, grid)

    sigma = float(noise_rng.uniform(10.0, 18.0))
    image = _finish(chest.hu, grid, noise_rng, sigma)
    pattern = _BURDEN_PATTERNS[index % 4]
    calcium = np.zeros(shape, dtype=bool)
    lesions = []
    for plan in _lesion_plan(pattern, lesion_rng):
        record = _place_calcification(image, chest.tissues, calcium, grid, paths, plan, lesion_rng)
        if record is None:
            raise RuntimeError(
                f"make_orcascore_case: no room for a calcification of {plan['slices']} slice(s) on the "
                f"coronary arteries of a {shape} grid at {spacing} mm; use more slices or a finer grid."
            )
        lesions.append(record)
    # lesion numbers in a fixed spatial order (first voxel in C order), as connected-component labelling
    lesions.sort(key=lambda les: (les["bbox_vox"][0][0], les["bbox_vox"][1][0], les["bbox_vox"][2][0]))
    for number, les in enumerate(lesions, start=1):
        les["lesion"] = number
    total = float(sum(les["agatston"] for les in lesions))
    table = (float(noise_rng.uniform(-10, 10)), float(noise_rng.uniform(-30, 30)), float(noise_rng.uniform(-200, 0)))
    return SyntheticCTCase(
        subject=subject or orcascore_case_id(index),
        image=image,
        label=calcium.astype(np.uint8),
        affine=grid.affine(table),
        tissues=chest.tissues,
        lungs=chest.lungs,
        lesions=lesions,
        info={
            "burden": pattern,
            "agatston_total": total,
            "category": _risk_category(total),
            "noise_sigma_hu": round(sigma, 2),
        },
    )


# --------------------------------------------------------------------------- writing


_MET_TYPES = {np.dtype(np.int16): "MET_SHORT", np.dtype(np.uint8): "MET_UCHAR", np.dtype(np.float32): "MET_FLOAT"}


def write_metaimage(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, overwrite: bool = False) -> str:
    """Write an ``(X, Y, Z)`` array as an ITK MetaImage ``.mhd`` header plus a ``.raw`` data file.

    The data file is written first, then the header, each atomically, so that a complete
    header always has its data. Only axis-aligned affines (possibly flipped axes) are supported.

    Args:
        array: 3D int16, uint8 or float32 array, axis 0 fastest on disk (MetaImage order).
        affine: (4, 4) voxel -> RAS mm.
        path: the ``.mhd`` file; the data goes to the same name with ``.raw``.
        overwrite: replace existing files.

    Returns:
        The ``.mhd`` path.
    """
    path = Path(path)
    if path.suffix.lower() != ".mhd":
        raise ValueError(f"{path}: a MetaImage header must end with .mhd.")
    array = np.asarray(array)
    if array.ndim != 3 or array.dtype not in _MET_TYPES:
        raise ValueError(f"{path}: need a 3D int16/uint8/float32 array, got {array.dtype} {array.shape}.")
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction_ras = affine[:3, :3] / spacing
    if not np.allclose(np.abs(direction_ras), np.round(np.abs(direction_ras)), atol=1e-6):
        raise ValueError(f"{path}: only axis-aligned affines are supported, got\n{affine}.")
    lps = np.diag([-1.0, -1.0, 1.0])
    direction = lps @ direction_ras  # MetaImage / ITK geometry is LPS
    offset = lps @ affine[:3, 3]
    raw = path.with_suffix(".raw")

    def fmt(values: np.ndarray) -> str:
        return " ".join(f"{float(x):.10g}" for x in np.ravel(values) + 0.0)  # + 0.0: no "-0"

    # TransformMatrix lists the direction cosine of each axis (a column of ``direction``) in turn
    header = "\n".join(
        [
            "ObjectType = Image",
            "NDims = 3",
            "BinaryData = True",
            "BinaryDataByteOrderMSB = False",
            "CompressedData = False",
            f"TransformMatrix = {fmt(direction.T)}",
            f"Offset = {fmt(offset)}",
            "CenterOfRotation = 0 0 0",
            f"ElementSpacing = {fmt(spacing)}",
            f"DimSize = {' '.join(str(n) for n in array.shape)}",
            f"ElementType = {_MET_TYPES[array.dtype]}",
            f"ElementDataFile = {raw.name}",
            "",
        ]
    )
    data = np.asarray(array, dtype=array.dtype.newbyteorder("<")).tobytes(order="F")

    def write_raw(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    with atomic_output(raw, overwrite=overwrite) as tmp:
        write_raw(tmp)
    write_text(header, path, overwrite)
    return str(path)


def _check_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    root = Path(output_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"output_dir {root} exists and is not a directory.")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output_dir {root} is not empty; pass overwrite=True (--overwrite) to write into it, "
            "or choose another folder."
        )
    return root


def _check_counts(num_cases: int, seed: int, name: str, minimum: int = 1) -> None:
    def is_int(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(num_cases) or num_cases < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {num_cases!r}.")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def _previous_index(root: Path, name: str, generator: str) -> dict[str, Any] | None:
    """An index this module wrote at ``root`` earlier (None for anything else, e.g. real data)."""
    try:
        with open(root / name, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and index.get("generator") == generator else None


def _remove_stale(root: Path, old_paths: Sequence[str], new_paths: set[str]) -> None:
    """Delete files/folders an earlier look-alike listed that the new one does not write."""
    for rel in old_paths:
        if rel in new_paths or not isinstance(rel, str):
            continue
        path = (root / rel).resolve()
        if root not in path.parents:  # never outside the data set
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()


def _progress(iterable: Sequence[int], enabled: bool, desc: str) -> Sequence[int]:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="case")


def _readme(title: str, body: str, parameters: dict[str, Any]) -> str:
    params = "\n".join(f"- `{k}`: `{v}`" for k, v in parameters.items())
    return (
        f"# {title}\n\n"
        "**Synthetic data.** Every volume in this folder is a generated geometric chest phantom\n"
        "(grcsf-bundle, `bundle/data/synthetic/ct.py`). There are no patients and no real images here;\n"
        "the layout only copies the real data set's so that the same code reads both.\n\n"
        f"{body}\n\n"
        "## Generator parameters\n\n"
        f"{params}\n\n"
        "## Licence\n\n"
        "Generated data without any third-party content: CC0 1.0 (public domain dedication).\n"
        "Not for clinical use.\n"
    )


def generate_msd_lung_like(
    output_dir: str | os.PathLike,
    num_cases: int = 12,
    shape: Sequence[int] = (96, 96, 48),
    spacing: Sequence[float] = (3.0, 3.0, 5.0),
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    num_test: int = 2,
) -> str:
    """Write a synthetic MSD Task06 Lung look-alike (layout: module docstring).

    Args:
        output_dir: data set root (like ``Task06_Lung``); created if missing, must be empty
            unless ``overwrite``.
        num_cases: labelled cases (``imagesTr``/``labelsTr``), >= 1.
        shape: ``(X, Y, Z)`` voxels per case.
        spacing: voxel size in mm.
        seed: non-negative random seed; same seed, same bytes.
        overwrite: write into a non-empty folder, replacing files of the same name and the
            cases of a look-alike generated there before.
        progress: show a progress bar (tqdm, on stderr).
        num_test: unlabelled cases in ``imagesTs`` (numbered after the labelled ones), >= 0.

    Returns:
        The root folder (absolute).

    Raises:
        ValueError: bad arguments, ``output_dir`` is a file.
        FileExistsError: ``output_dir`` is not empty and ``overwrite`` is False.
    """
    _check_counts(num_cases, seed, "num_cases")
    _check_counts(num_test, seed, "num_test", minimum=0)
    _check_geometry(shape, spacing, (32, 32, 8), "generate_msd_lung_like")
    root = _check_output_dir(output_dir, overwrite)
    start = time.perf_counter()
    previous = _previous_index(root, MSD_LUNG_NODULE_INDEX, _LUNG_GENERATOR) if overwrite else None
    root.mkdir(parents=True, exist_ok=True)

    training, test, cases = [], [], []
    description = f"synthetic MSD Task06 Lung look-alike, seed {seed}"
    for i in _progress(range(num_cases + num_test), progress, "synthetic MSD lung cases"):
        case = make_msd_lung_case(i, seed=seed, shape=shape, spacing=spacing)
        image_rel = f"imagesTr/{case.subject}.nii.gz" if i < num_cases else f"imagesTs/{case.subject}.nii.gz"
        save_nifti(case.image, case.affine, root / image_rel, overwrite, description)
        entry: dict[str, Any] = {"subject": case.subject, "image": image_rel}
        if i < num_cases:
            label_rel = f"labelsTr/{case.subject}.nii.gz"
            save_nifti(case.label, case.affine, root / label_rel, overwrite, description)
            training.append({"image": f"./{image_rel}", "label": f"./{label_rel}"})
            entry.update(split="training", label=label_rel)
        else:
            test.append(f"./{image_rel}")
            entry.update(split="test", label=None)
        entry.update(tiny_nodule=case.info["tiny_nodule"], nodules=case.lesions)
        cases.append(entry)

    if previous is not None:
        old = [c.get(k) for c in previous.get("cases", []) if isinstance(c, dict) for k in ("image", "label")]
        new = {c[k] for c in cases for k in ("image", "label") if c[k]}
        _remove_stale(root, [p for p in old if p], new)

    parameters = {
        "num_cases": int(num_cases),
        "num_test": int(num_test),
        "shape": [int(n) for n in shape],
        "spacing": [float(s) for s in spacing],
        "seed": int(seed),
    }
    dataset = {
        "name": "Lung",
        "description": "Lung and cancer segmentation (SYNTHETIC look-alike, not patient data)",
        "reference": "grcsf-bundle synthetic data (bundle/data/synthetic/ct.py)",
        "licence": "CC0 1.0",
        "release": "synthetic 1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    index = {
        "format_version": _INDEX_FORMAT_VERSION,
        "generator": _LUNG_GENERATOR,
        "generator_parameters": parameters,
        "generation_time_s": round(time.perf_counter() - start, 2),
        "cases": cases,
    }
    body = (
        "Layout of the Medical Segmentation Decathlon Task06 Lung: `dataset.json`, `imagesTr/`, "
        "`labelsTr/`, `imagesTs/`.\nImages are int16 CT in Hounsfield units; labels are uint8 "
        "tumour masks (1 = cancer).\n`nodules.json` lists every case's nodules "
        "(centre voxel, radius, HU, voxels)."
    )
    write_json(dataset, root / "dataset.json", overwrite)
    write_json(index, root / MSD_LUNG_NODULE_INDEX, overwrite)
    write_text(_readme("Synthetic MSD Task06 Lung look-alike", body, parameters), root / "README.md", overwrite)
    return str(root)


def _dicom_series_uid(seed: int, subject: str) -> str:
    """A deterministic DICOM UID (``2.25.<128-bit integer>``, the UUID-derived form) per case."""
    digest = hashlib.sha256(f"grcsf-bundle synthetic orCaScore/{seed}/{subject}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def generate_orcascore_like(
    output_dir: str | os.PathLike,
    num_cases: int = 8,
    shape: Sequence[int] = (192, 192, 24),
    spacing: Sequence[float] = (0.9, 0.9, 3.0),
    seed: int = 0,
    formats: Sequence[str] = ("mhd", "dicom"),
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Write a synthetic orCaScore look-alike (layout and calcium construction: module docstring).

    Args:
        output_dir: data set root (the folder holding ``Training Set``); created if missing,
            must be empty unless ``overwrite``.
        num_cases: cases ``TRV1P1, TRV2P1, ...`` (>= 1).
        shape: ``(X, Y, Z)`` voxels per case (the field of view is centred on the heart).
        spacing: voxel size in mm.
        seed: non-negative random seed; same seed, same bytes (.mhd/.raw and JSON).
        formats: image formats, any of ``"mhd"`` (``Images/<case>CTI.mhd``) and ``"dicom"``
            (``DICOM/<case>/``, via :func:`bundle.data.dicom.write_dicom_series`); the reference
            mask is always a ``.mhd``.
        overwrite: write into a non-empty folder, replacing files of the same name and the
            cases of a look-alike generated there before.
        progress: show a progress bar (tqdm, on stderr).

    Returns:
        The root folder (absolute).

    Raises:
        ValueError: bad arguments, ``output_dir`` is a file.
        FileExistsError: ``output_dir`` is not empty and ``overwrite`` is False.
    """
    _check_counts(num_cases, seed, "num_cases")
    _check_geometry(shape, spacing, (48, 48, 8), "generate_orcascore_like")
    formats = tuple(formats) if not isinstance(formats, str) else (formats,)
    unknown = sorted(set(formats) - {"mhd", "dicom"})
    if not formats or unknown:
        raise ValueError(f"formats must be a non-empty subset of ('mhd', 'dicom'), got {formats!r}.")
    root = _check_output_dir(output_dir, overwrite)
    start = time.perf_counter()
    previous = _previous_index(root, ORCASCORE_REFERENCE_SCORES, _ORCA_GENERATOR) if overwrite else None
    root.mkdir(parents=True, exist_ok=True)

    cases = []
    for i in _progress(range(num_cases), progress, "synthetic orCaScore cases"):
        case = make_orcascore_case(i, seed=seed, shape=shape, spacing=spacing)
        entry: dict[str, Any] = {"subject": case.subject, "burden": case.info["burden"]}
        if "mhd" in formats:
            rel = f"{ORCASCORE_IMAGE_DIR}/{case.subject}CTI.mhd"
            write_metaimage(case.image, case.affine, root / rel, overwrite)
            entry["image"] = rel
        if "dicom" in formats:
            rel = f"{ORCASCORE_DICOM_DIR}/{case.subject}"
            write_dicom_series(
                case.image,
                case.affine,
                str(root / rel),
                modality="CT",
                series_uid=_dicom_series_uid(seed, case.subject),
                patient_id=case.subject,
                overwrite=overwrite,
            )
            entry["image_dicom"] = rel
        rel = f"{ORCASCORE_REFERENCE_DIR}/{case.subject}CTR.mhd"
        write_metaimage(case.label, case.affine, root / rel, overwrite)
        entry.update(
            reference=rel,
            total=case.info["agatston_total"],
            category=case.info["category"],
            n_lesions=len(case.lesions),
            lesions=case.lesions,
        )
        cases.append(entry)

    if previous is not None:
        old, new = [], set()
        for c in previous.get("cases", []):
            if isinstance(c, dict):
                for key in ("image", "reference"):
                    if isinstance(c.get(key), str):
                        old += [c[key], str(Path(c[key]).with_suffix(".raw"))]
                old.append(c.get("image_dicom"))
        for c in cases:
            for key in ("image", "reference"):
                if key in c:
                    new |= {c[key], str(Path(c[key]).with_suffix(".raw"))}
            if "image_dicom" in c:
                new.add(c["image_dicom"])
        _remove_stale(root, [p for p in old if p], new)

    parameters = {
        "num_cases": int(num_cases),
        "shape": [int(n) for n in shape],
        "spacing": [float(s) for s in spacing],
        "seed": int(seed),
        "formats": list(formats),
    }
    index = {
        "format_version": _INDEX_FORMAT_VERSION,
        "generator": _ORCA_GENERATOR,
        "generator_parameters": parameters,
        "agatston_definition": {
            "threshold_hu": _CALCIUM_HU,
            "connectivity": 6,
            "slice_axis": 2,
            "min_area_mm2": 1.0,
            "density_weights": {"130-199": 1, "200-299": 2, "300-399": 3, ">=400": 4},
            "categories": {"0": "0", "I": "(0, 10]", "II": "(10, 100]", "III": "(100, 400]", "IV": "> 400"},
            "lesion_order": "by the first voxel of the lesion in C order of the (X, Y, Z) array",
        },
        "generation_time_s": round(time.perf_counter() - start, 2),
        "cases": cases,
    }
    body = (
        "Layout of the orCaScore training set: `Training Set/Images/<case>CTI.mhd` (CT, int16 HU) and\n"
        "`Training Set/Reference standard/<case>CTR.mhd` (calcium mask, uint8 0/1), plus\n"
        "`Training Set/DICOM/<case>/`, the same CT as a DICOM series.\n"
        "`reference_scores.json` gives every calcification (bounding box in voxels, per-slice pixels,\n"
        "peak HU and weight) and the Agatston scores per lesion and per case, computed by construction."
    )
    write_json(index, root / ORCASCORE_REFERENCE_SCORES, overwrite)
    write_text(_readme("Synthetic orCaScore look-alike", body, parameters), root / "README.md", overwrite)
    return str(root)
