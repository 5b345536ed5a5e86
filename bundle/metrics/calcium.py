"""Coronary calcium post-processing, Agatston scoring and orCaScore metrics (docs/method.md §7-8).

Arrays are 3D CT volumes ``(H, W, D)`` (optionally channel-first ``(1, H, W, D)``) with the
axial slice axis given by ``slice_axis`` (default: the last axis, MONAI's channel-first RAS
layout); ``spacing`` lists the voxel size in mm per spatial axis in the same order.
Images must be in Hounsfield units (HU).

Calcium (orCaScore, paper Sec. 4.2): a connected voxel group (3D 6-connectivity) at or above
130 HU. Post-processing keeps the predicted voxels that are >= 130 HU and regroups them into
6-connected lesions (:func:`calcium_candidates`).

Agatston score (:func:`agatston_scores`), per lesion and axial slice: the lesion's area in
that slice (pixel count x in-plane pixel area, mm²) times a weight from the peak HU of the
lesion within that slice (130-199: 1, 200-299: 2, 300-399: 3, >= 400: 4), summed over the
slices of the lesion. Classic Agatston works on 2D regions per slice, so the minimum lesion
area (1 mm² by default) applies per slice: a slice part of a lesion smaller than it adds
nothing. The score is defined for 3 mm slices; with thinner slices the plain sum counts each
calcification on more slices, so ``scale_by_thickness=True`` multiplies by slice spacing / 3
mm. It is off by default because orCaScore scans are 2.5-3 mm and the challenge's
reference scores are the plain per-slice sum.

Risk categories of the total score (:func:`agatston_category`): ``"0"`` (0, no detectable
calcium), ``"I"`` (0 < s <= 10, minimal), ``"II"`` (10 < s <= 100, mild), ``"III"``
(100 < s <= 400, moderate), ``"IV"`` (> 400, severe). Scores are real numbers (areas in
mm²), hence the half-open intervals; on integers they are the usual 0, 1-10, 11-100, 101-400, > 400.

Hounsfield check (``check_hu=True``): an image whose values all lie in [-1, 1] or all in
[0, 255] is refused as "not HU": a [0, 1] / [-1, 1] normalised or an 8-bit windowed image.
A CT in HU holds air or fat below 0 HU next to tissue above 1 HU, so real scans pass;
synthetic or cropped inputs that legitimately fail the test can set ``check_hu=False``.

Volume and lesion metrics (:func:`orcascore_metrics`) follow the empty conventions of
:mod:`bundle.metrics.segmentation`: both empty gives 1 (and VOSE 0); otherwise a ratio with a
zero denominator is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from .segmentation import (
    _binary,
    _check_not_empty_or_nan,
    _detection_scores,
    _drop_channel,
    _match_lesions,
    _overlap_scores,
    _to_numpy,
    connectivity_structure,
)

__all__ = [
    "AGATSTON_CATEGORY_NAMES",
    "CalciumLesion",
    "AgatstonResult",
    "agatston_density_weight",
    "agatston_category",
    "calcium_candidates",
    "agatston_scores",
    "orcascore_metrics",
]

#: Risk category code -> description (category boundaries: module docstring).
AGATSTON_CATEGORY_NAMES: dict[str, str] = {
    "0": "no detectable calcium",
    "I": "minimal",
    "II": "mild",
    "III": "moderate",
    "IV": "severe",
}
_CATEGORY_CODES = ("0", "I", "II", "III", "IV")
_CATEGORY_UPPER = (0.0, 10.0, 100.0, 400.0)  # right-closed upper bounds of categories 0..III
_DENSITY_EDGES = (130.0, 200.0, 300.0, 400.0)  # peak HU at which weights 1, 2, 3, 4 start


@dataclass(frozen=True)
class CalciumLesion:
    """One 3D calcium lesion of :func:`agatston_scores`.

    Attributes:
        label: lesion number in :attr:`AgatstonResult.labels`.
        agatston: the lesion's Agatston score (summed over its slices).
        volume_mm3: voxel count x voxel volume.
        n_voxels: voxel count.
        peak_hu: highest HU in the lesion.
        n_slices: number of axial slices the lesion spans.
    """

    label: int
    agatston: float
    volume_mm3: float
    n_voxels: int
    peak_hu: float
    n_slices: int


@dataclass(frozen=True, eq=False)
class AgatstonResult:
    """Agatston scoring of one patient.

    Attributes:
        lesions: per-lesion results in label order.
        total: sum of the lesion scores.
        category: risk category code of ``total`` (``"0"``, ``"I"``..``"IV"``).
        labels: int32 ``(H, W, D)`` map of the scored lesions (0 = background).
    """

    lesions: tuple[CalciumLesion, ...]
    total: float
    category: str
    labels: np.ndarray = field(repr=False)

    @property
    def category_name(self) -> str:
        """Description of :attr:`category`, e.g. ``"mild"``."""
        return AGATSTON_CATEGORY_NAMES[self.category]


def agatston_density_weight(peak_hu: float | np.ndarray) -> np.ndarray:
    """Agatston density weight of a peak HU: < 130: 0, 130-199: 1, 200-299: 2, 300-399: 3, >= 400: 4.

    Args:
        peak_hu: scalar or array of peak intensities in HU.

    Returns:
        int array of the same shape.
    """
    return np.digitize(np.asarray(peak_hu, dtype=np.float64), _DENSITY_EDGES, right=False)


def agatston_category(total: float) -> str:
    """Risk category code of a total Agatston score (boundaries: module docstring)."""
    total = float(total)
    if not np.isfinite(total) or total < 0:
        raise ValueError(f"an Agatston score is finite and >= 0, got {total}.")
    k = int(np.searchsorted(_CATEGORY_UPPER, total, side="left"))
    return _CATEGORY_CODES[k]


def _check_hounsfield(image: np.ndarray) -> None:
    lo, hi = float(image.min()), float(image.max())
    if (lo >= -1.0 and hi <= 1.0) or (lo >= 0.0 and hi <= 255.0):
        raise ValueError(
            f"image_hu ranges over [{lo:g}, {hi:g}], which looks like a normalised or 8-bit image, "
            "not Hounsfield units; pass the CT in HU (or check_hu=False for synthetic data)."
        )


def _image(image_hu: np.ndarray | torch.Tensor, shape: tuple[int, ...], check_hu: bool) -> np.ndarray:
    img = _drop_channel(_to_numpy(image_hu), "image_hu", None)
    _check_not_empty_or_nan(img, "image_hu")
    if img.shape != shape:
        raise ValueError(f"image_hu shape {img.shape} differs from the mask shape {shape}.")
    if not np.all(np.isfinite(img)):
        raise ValueError("image_hu contains infinite values.")
    if check_hu:
        _check_hounsfield(img)
    return img.astype(np.float64, copy=False)


def _mask3d(mask: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    m = _binary(_drop_channel(_to_numpy(mask), name, None), name)
    if m.ndim != 3:
        raise ValueError(f"{name} must be a 3D CT volume (H, W, D), got shape {m.shape}.")
    return m


def _spacing3d(spacing: Sequence[float] | np.ndarray | None) -> np.ndarray:
    if spacing is None:
        raise ValueError("spacing (mm per axis) is required for calcium scoring.")
    sp = np.asarray(_to_numpy(spacing), dtype=np.float64).ravel()
    if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be 3 finite positive values in mm, got {tuple(sp.tolist())}.")
    return sp


def calcium_candidates(
    pred: np.ndarray | torch.Tensor,
    image_hu: np.ndarray | torch.Tensor,
    threshold: float = 130.0,
    connectivity: int = 6,
    min_voxels: int = 1,
    check_hu: bool = True,
) -> np.ndarray:
    """orCaScore post-processing: predicted voxels at or above ``threshold`` HU, in 3D lesions.

    Args:
        pred: binary prediction ``(H, W, D)`` (or ``(1, H, W, D)``).
        image_hu: CT of the same shape in HU.
        threshold: calcium threshold in HU; a voxel is kept when ``image_hu >= threshold``.
        connectivity: connectivity of the lesions (6 = faces, see
            :func:`~bundle.metrics.segmentation.connectivity_structure`).
        min_voxels: lesions (connected groups of kept voxels) smaller than this are dropped;
            1 keeps all.
        check_hu: refuse images that do not look like HU (module docstring).

    Returns:
        bool ``(H, W, D)`` calcium mask.
    """
    p = _mask3d(pred, "pred")
    img = _image(image_hu, p.shape, check_hu)
    cand = p & (img >= threshold)
    if min_voxels > 1:
        labels, n = ndimage.label(cand, structure=connectivity_structure(3, connectivity))
        size = np.bincount(labels.ravel(), minlength=n + 1)
        keep = size >= min_voxels
        keep[0] = False
        cand = keep[labels]
    return cand


def agatston_scores(
    mask: np.ndarray | torch.Tensor,
    image_hu: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | np.ndarray,
    threshold: float = 130.0,
    connectivity: int = 6,
    slice_axis: int = -1,
    min_area_mm2: float = 1.0,
    scale_by_thickness: bool = False,
    reference_thickness_mm: float = 3.0,
    check_hu: bool = True,
) -> AgatstonResult:
    """Agatston score per lesion, total and risk category of one patient.

    The mask is first restricted to voxels >= ``threshold`` HU (so a raw prediction or an
    annotation can be passed directly) and split into ``connectivity``-connected 3D lesions.

    Args:
        mask: binary calcium mask ``(H, W, D)`` (or ``(1, H, W, D)``).
        image_hu: CT of the same shape in HU.
        spacing: voxel size in mm per spatial axis, in array order.
        threshold: calcium threshold in HU.
        connectivity: lesion connectivity (6 = faces).
        slice_axis: the axial (slice) axis of the spatial array.
        min_area_mm2: per slice, a lesion part with a smaller area scores 0 (up to float rounding).
        scale_by_thickness: multiply scores by slice spacing / ``reference_thickness_mm``.
        reference_thickness_mm: the slice thickness the score is defined on (3 mm).
        check_hu: refuse images that do not look like HU (module docstring).

    Returns:
        :class:`AgatstonResult`.
    """
    m = _mask3d(mask, "mask")
    img = _image(image_hu, m.shape, check_hu)
    sp = _spacing3d(spacing)
    if slice_axis not in (-3, -2, -1, 0, 1, 2):
        raise ValueError(f"slice_axis must index one of the 3 spatial axes, got {slice_axis}.")
    axis = slice_axis % 3
    in_plane_area = float(np.prod(np.delete(sp, axis)))
    labels, n = ndimage.label(m & (img >= threshold), structure=connectivity_structure(3, connectivity))
    labels = labels.astype(np.int32, copy=False)
    if n == 0:
        return AgatstonResult(lesions=(), total=0.0, category=agatston_category(0.0), labels=labels)

    # one group per (lesion, slice): sort the lesion voxels by group key and reduce per run
    lab_s = np.moveaxis(labels, axis, -1)
    img_s = np.moveaxis(img, axis, -1)
    fg = lab_s > 0
    n_slices_total = lab_s.shape[-1]
    slice_idx = np.broadcast_to(np.arange(n_slices_total), lab_s.shape)[fg]
    lesion = lab_s[fg].astype(np.int64)
    key = lesion * n_slices_total + slice_idx
    order = np.argsort(key, kind="stable")
    key_sorted, hu_sorted = key[order], img_s[fg][order]
    starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
    group_peak = np.maximum.reduceat(hu_sorted, starts)
    group_count = np.diff(np.r_[starts, key_sorted.size])
    group_lesion = key_sorted[starts] // n_slices_total

    area = group_count * in_plane_area
    # a relative tolerance so that e.g. 4 pixels of 0.5 x 0.5 mm reach 1 mm² despite rounding
    big_enough = area >= min_area_mm2 * (1.0 - 1e-9)
    slice_score = area * agatston_density_weight(group_peak) * big_enough
    if scale_by_thickness:
        if not reference_thickness_mm > 0:
            raise ValueError(f"reference_thickness_mm must be > 0, got {reference_thickness_mm}.")
        slice_score = slice_score * (sp[axis] / reference_thickness_mm)

    score = np.bincount(group_lesion, weights=slice_score, minlength=n + 1)[1:]
    n_vox = np.bincount(group_lesion, weights=group_count, minlength=n + 1)[1:].astype(np.int64)
    n_sl = np.bincount(group_lesion, minlength=n + 1)[1:]
    # groups are sorted by lesion then slice, and every lesion 1..n has at least one group
    peak = np.maximum.reduceat(group_peak, np.flatnonzero(np.r_[True, group_lesion[1:] != group_lesion[:-1]]))
    voxel_volume = float(np.prod(sp))
    lesions = tuple(
        CalciumLesion(
            label=i + 1,
            agatston=float(score[i]),
            volume_mm3=float(n_vox[i] * voxel_volume),
            n_voxels=int(n_vox[i]),
            peak_hu=float(peak[i]),
            n_slices=int(n_sl[i]),
        )
        for i in range(n)
    )
    total = float(score.sum())
    return AgatstonResult(lesions=lesions, total=total, category=agatston_category(total), labels=labels)


def orcascore_metrics(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    image_hu: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | np.ndarray,
    threshold: float = 130.0,
    connectivity: int = 6,
    post_process: bool = True,
    min_overlap: float = 0.0,
    slice_axis: int = -1,
    min_area_mm2: float = 1.0,
    check_hu: bool = True,
) -> dict[str, float]:
    """orCaScore volume and lesion metrics of one patient, with Agatston totals.

    The reference is restricted to voxels >= ``threshold`` HU (its definition of calcium);
    the prediction is too when ``post_process`` (the paper reports both, Table 2). Lesions
    of both are ``connectivity``-connected components (6 = faces).

    - volume: ``f1_vol`` = 2 |P ∩ R| / (|P| + |R|), ``sens_vol`` = |P ∩ R| / |R|,
      ``ppv_vol`` = |P ∩ R| / |P|, ``vose`` = |P \\ R| / |R| (voxel overlap; ratios of volumes);
    - lesion: ``sens_lesion`` = reference lesions overlapped by the prediction / reference
      lesions; ``ppv_lesion`` = predicted lesions overlapping the reference / predicted
      lesions (``min_overlap`` as in :func:`~bundle.metrics.segmentation.segmentation_metrics`).

    Args:
        pred: binary prediction ``(H, W, D)`` (or ``(1, H, W, D)``).
        truth: binary reference of the same shape.
        image_hu: CT of the same shape in HU.
        spacing: voxel size in mm per spatial axis (required: volumes and Agatston).
        threshold: calcium threshold in HU.
        connectivity: lesion connectivity.
        post_process: apply :func:`calcium_candidates` to the prediction.
        min_overlap: fraction of a lesion that must be overlapped to count as matched.
        slice_axis: axial axis, for the Agatston scores.
        min_area_mm2: minimum per-slice lesion area of the Agatston scores.
        check_hu: refuse images that do not look like HU (module docstring).

    Returns:
        dict of floats: ``f1_vol, sens_vol, ppv_vol, vose, sens_lesion, ppv_lesion,
        n_ref_lesions, n_pred_lesions, volume_pred_mm3, volume_ref_mm3, agatston_pred,
        agatston_ref, category_pred, category_ref`` (categories as indices 0..4 for "0".."IV").
    """
    p = _mask3d(pred, "pred")
    r = _mask3d(truth, "truth")
    if p.shape != r.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {r.shape}.")
    img = _image(image_hu, p.shape, check_hu)
    sp = _spacing3d(spacing)
    calcium = img >= threshold
    r = r & calcium
    if post_process:
        p = p & calcium

    n_p, n_r = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    tp = int(np.count_nonzero(p & r))
    scores = _overlap_scores(tp, n_p - tp, n_r - tp, int(p.size) - n_p - n_r + tp)
    match = _match_lesions(p, r, connectivity_structure(3, connectivity), min_overlap)
    ppv_lesion, sens_lesion, _ = _detection_scores(
        match.n_true, match.n_pred, int(match.true_detected.sum()), int(match.pred_tp.sum())
    )
    # Agatston of the prediction counts only voxels >= threshold whether or not post-processed
    kwargs = dict(
        spacing=sp,
        threshold=threshold,
        connectivity=connectivity,
        slice_axis=slice_axis,
        min_area_mm2=min_area_mm2,
        check_hu=False,
    )
    ag_p = agatston_scores(p, img, **kwargs)
    ag_r = agatston_scores(r, img, **kwargs)
    voxel_volume = float(np.prod(sp))
    return {
        "f1_vol": scores["dice"],
        "sens_vol": scores["recall"],
        "ppv_vol": scores["precision"],
        "vose": scores["vose"],
        "sens_lesion": sens_lesion,
        "ppv_lesion": ppv_lesion,
        "n_ref_lesions": float(match.n_true),
        "n_pred_lesions": float(match.n_pred),
        "volume_pred_mm3": n_p * voxel_volume,
        "volume_ref_mm3": n_r * voxel_volume,
        "agatston_pred": ag_p.total,
        "agatston_ref": ag_r.total,
        "category_pred": float(_CATEGORY_CODES.index(ag_p.category)),
        "category_ref": float(_CATEGORY_CODES.index(ag_r.category)),
    }
