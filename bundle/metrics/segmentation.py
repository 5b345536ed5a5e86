"""Per-subject binary lesion-segmentation metrics (GRCSF paper Sec. 4.2, docs/method.md §8).

Everything here works on one subject at a time: a binary prediction and a binary ground
truth of the same spatial shape, 2D ``(H, W)`` or 3D ``(H, W, D)``, given as numpy arrays or
torch tensors, optionally with a leading channel axis of size 1 (``(1, H, W, D)``; for
``(1, H, W)`` see :func:`segmentation_metrics`). Masks must already be binarised (values 0/1
or bool); probabilities are refused rather than silently thresholded.

Definitions (P = predicted voxels, G = ground-truth voxels, TP/FP/FN/TN voxel counts):

- ``dice`` = 2 TP / (2 TP + FP + FN), ``iou`` = TP / (TP + FP + FN)
- ``precision`` = TP / (TP + FP), ``recall`` = TP / (TP + FN)
- ``fpr`` = FP / (FP + TN): over-segmentation relative to the background
- ``vose`` (volume over-segmentation error) = FP / |G|: the falsely predicted volume relative
  to the ground-truth lesion volume. It is the paper's "over-segmentation relative to the
  ground-truth lesion volume"; the signed volume error (|P| - |G|) / |G| was rejected
  because over- and under-segmentation cancel in it. FP / |G| is also what the paper's
  Table 2 reports: for its single validation patient VOE = Sens / PPV - Sens holds on every
  row (e.g. U-Net 0.808 / 0.687 - 0.808 = 0.368), which is FP / |G|, whereas
  (|P| - |G|) / |G| = Sens / PPV - 1 would be negative there.

Empty-mask conventions (applied the same way everywhere in :mod:`bundle.metrics`):

- both P and G empty: the prediction is perfect, so dice = iou = precision = recall = 1 and
  vose = 0 (fpr is 0 as usual);
- otherwise a ratio whose denominator is 0 is undefined and reported as ``NaN``:
  precision when nothing is predicted, recall and vose when the subject has no lesion,
  fpr when the lesion fills the whole image. Dice and IoU are always defined (0 when
  exactly one mask is empty). :func:`aggregate_metrics` and :class:`LesionMetrics` average
  with NaNs ignored, so an undefined value does not count as a 0 or a 1.

Lesion-wise detection (connected components of each mask, ``scipy.ndimage.label``):

- a ground-truth lesion is *detected* if the prediction covers at least one of its voxels
  and at least ``min_overlap`` (a fraction, default 0) of its voxels;
- a predicted component is a *true positive* if at least one of its voxels, and at least
  ``min_overlap`` of them, lie inside the ground truth (any lesion); otherwise it is a
  false-positive component;
- ``lesion_precision`` = TP components / predicted components,
  ``lesion_recall`` = detected lesions / ground-truth lesions,
  ``lesion_f1`` = their harmonic mean. Both counts zero gives 1, 1, 1; when exactly one
  side has no components the defined one of precision/recall is 0, the other NaN, and
  lesion_f1 is 0 (the subject holds only errors), mirroring pixel Dice.

Per-lesion Dice (used by the size/attribute bins) uses the component-overlap definition:
for ground-truth lesion G_j let P_j be the union of all predicted components that touch
G_j; Dice_j = 2 |G_j ∩ P_j| / (|G_j| + |P_j|) (0 for a missed lesion). A predicted component
touching two lesions counts in both. The geometric Dice_j ignores ``min_overlap``.

Connectivity is given either as scipy's rank (1 = face neighbours ... ndim = all
neighbours) or as a neighbour count (4/8 in 2D, 6/18/26 in 3D); ``None`` means full
connectivity (8 in 2D, 26 in 3D), the usual choice for lesion counting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from scipy import ndimage

__all__ = [
    "SEGMENTATION_METRIC_KEYS",
    "DEFAULT_LESION_SIZE_BINS",
    "connectivity_structure",
    "label_lesions",
    "segmentation_metrics",
    "lesion_size_bins",
    "summarise_lesion_bins",
    "dice_by_lesion_size",
    "dice_by_lesion_attribute",
    "aggregate_metrics",
    "LesionMetrics",
]

#: Keys of :func:`segmentation_metrics`, in the column order of :class:`LesionMetrics` buffers.
SEGMENTATION_METRIC_KEYS: tuple[str, ...] = (
    "dice",
    "iou",
    "precision",
    "recall",
    "fpr",
    "vose",
    "lesion_precision",
    "lesion_recall",
    "lesion_f1",
    "n_true_lesions",
    "n_pred_lesions",
    "tp",
    "fp",
    "fn",
    "tn",
    "pred_volume",
    "truth_volume",
)

#: Lesion-size bin edges in voxels; bins are right-closed: 1-100, 101-1000, > 1000 voxels.
DEFAULT_LESION_SIZE_BINS: tuple[float, ...] = (0.0, 100.0, 1000.0, float("inf"))

# neighbour counts accepted as connectivity, mapped to scipy's structuring-element rank
_NEIGHBOUR_COUNTS = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}


# --------------------------------------------------------------------------- input checks


def _to_numpy(x: np.ndarray | torch.Tensor | Any) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors, MetaTensors included, go through the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.as_tensor() if hasattr(x, "as_tensor") else x  # MetaTensor -> plain tensor
        # numpy has no bfloat16 dtype, so .numpy() would fail on e.g. autocast outputs
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _check_not_empty_or_nan(arr: np.ndarray, name: str) -> None:
    """Refuse empty, non-numeric and NaN-containing arrays with a message naming ``name``."""
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}).")
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric or bool, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.inexact) and np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN.")


def _binary(arr: np.ndarray, name: str) -> np.ndarray:
    """Validate that ``arr`` holds only 0/1 (or bool) values and return it as a bool array."""
    _check_not_empty_or_nan(arr, name)
    if arr.dtype == bool:
        return arr
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(
            f"{name} must be a binary mask with values 0/1, got values in [{arr.min()}, {arr.max()}]; "
            "threshold probabilities first (e.g. monai.transforms.AsDiscrete(threshold=0.5))."
        )
    return arr != 0


def _drop_channel(arr: np.ndarray, name: str, n_spacing: int | None) -> np.ndarray:
    """Remove a leading channel axis of size 1 and check that 2 or 3 spatial axes remain.

    A 4D array is channel-first 3D; a 3D array is taken as channel-first 2D only when the
    spacing has 2 entries (otherwise it is a 3D volume, which for a leading axis of size 1
    gives the same metrics).
    """
    if arr.ndim == 4 or (arr.ndim == 3 and n_spacing == 2):
        if arr.shape[0] != 1:
            raise ValueError(
                f"{name} has shape {arr.shape}: a leading channel axis must have size 1 "
                "(select the foreground channel first)."
            )
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2D (H, W) or 3D (H, W, D), optionally channel-first; got {arr.shape}.")
    return arr


def _check_spacing(spacing: Sequence[float] | np.ndarray | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    sp = np.asarray(_to_numpy(spacing), dtype=np.float64).ravel()
    if sp.size != ndim:
        raise ValueError(f"spacing needs {ndim} entries for a {ndim}D mask, got {sp.size}.")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be finite and positive, got {tuple(sp.tolist())}.")
    return tuple(float(s) for s in sp)


def _prepare_pair(
    pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, spacing: Sequence[float] | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...] | None]:
    """Convert and validate a (prediction, truth) pair; returns bool arrays of equal spatial shape."""
    n_spacing = None if spacing is None else int(np.asarray(_to_numpy(spacing)).size)
    p = _to_numpy(pred)
    t = _to_numpy(truth)
    p = _drop_channel(p, "pred", n_spacing)
    t = _drop_channel(t, "truth", n_spacing)
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}.")
    return _binary(p, "pred"), _binary(t, "truth"), _check_spacing(spacing, p.ndim)


def connectivity_structure(ndim: int, connectivity: int | None = None) -> np.ndarray:
    """Structuring element for ``scipy.ndimage.label``.

    Args:
        ndim: number of spatial dimensions, 2 or 3.
        connectivity: scipy rank (1..ndim), a neighbour count (4/8 in 2D, 6/18/26 in 3D),
            or ``None`` for full connectivity.

    Returns:
        bool array of shape ``(3,) * ndim``.
    """
    if ndim not in _NEIGHBOUR_COUNTS:
        raise ValueError(f"connected components are defined here for 2D or 3D masks, got {ndim}D.")
    if connectivity is None:
        rank = ndim
    elif connectivity in _NEIGHBOUR_COUNTS[ndim]:
        rank = _NEIGHBOUR_COUNTS[ndim][connectivity]
    elif isinstance(connectivity, (int, np.integer)) and 1 <= connectivity <= ndim:
        rank = int(connectivity)
    else:
        allowed = sorted(list(range(1, ndim + 1)) + list(_NEIGHBOUR_COUNTS[ndim]))
        raise ValueError(f"connectivity for {ndim}D must be one of {allowed} or None, got {connectivity!r}.")
    return ndimage.generate_binary_structure(ndim, rank)


def label_lesions(mask: np.ndarray | torch.Tensor, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """Connected components of a binary mask.

    Args:
        mask: binary mask, 2D/3D, optionally with a leading channel axis of size 1.
        connectivity: see :func:`connectivity_structure`.

    Returns:
        ``(labels, n)``: int32 array of the mask's spatial shape with lesions numbered 1..n in
        scipy's raster order (this is the order :func:`dice_by_lesion_attribute` expects),
        and the number of lesions.
    """
    m = _binary(_drop_channel(_to_numpy(mask), "mask", None), "mask")
    labels, n = ndimage.label(m, structure=connectivity_structure(m.ndim, connectivity), output=np.int32)
    return labels, int(n)


# ------------------------------------------------------------------------------ scores


def _ratio(num: float, den: float) -> float:
    """``num / den``, NaN when the denominator is 0 (an undefined score)."""
    return float(num) / float(den) if den > 0 else float("nan")


def _overlap_scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Voxel-count scores with the module's empty-mask conventions (see module docstring)."""
    if tp + fp + fn == 0:  # both masks empty: a perfect prediction
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "fpr": _ratio(fp, fp + tn), "vose": 0.0}
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "fpr": _ratio(fp, fp + tn),
        "vose": _ratio(fp, tp + fn),
    }


def _detection_scores(n_true: int, n_pred: int, n_detected: int, n_pred_tp: int) -> tuple[float, float, float]:
    """Lesion-wise (precision, recall, F1) with the module's empty conventions."""
    if n_true == 0 and n_pred == 0:
        return 1.0, 1.0, 1.0
    precision = _ratio(n_pred_tp, n_pred)
    recall = _ratio(n_detected, n_true)
    if np.isnan(precision) or np.isnan(recall) or precision + recall == 0:
        return precision, recall, 0.0
    return precision, recall, 2 * precision * recall / (precision + recall)


class _LesionMatch(NamedTuple):
    """Component matching of one subject (arrays indexed by lesion label - 1)."""

    n_true: int
    n_pred: int
    true_size: np.ndarray  # (n_true,) voxels per ground-truth lesion
    true_detected: np.ndarray  # (n_true,) bool
    true_dice: np.ndarray  # (n_true,) component-overlap Dice
    pred_tp: np.ndarray  # (n_pred,) bool: predicted component overlaps the truth


def _match_lesions(pred: np.ndarray, truth: np.ndarray, structure: np.ndarray, min_overlap: float) -> _LesionMatch:
    """Label both bool masks and match components by voxel overlap (all vectorised with bincount)."""
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap is a fraction in [0, 1], got {min_overlap}.")
    t_lab, n_t = ndimage.label(truth, structure=structure)
    p_lab, n_p = ndimage.label(pred, structure=structure)
    t_size = np.bincount(t_lab.ravel(), minlength=n_t + 1)[1:]
    p_size = np.bincount(p_lab.ravel(), minlength=n_p + 1)[1:]
    # voxels of each true lesion covered by the prediction, and of each predicted component inside the truth
    t_cover = np.bincount(t_lab[pred], minlength=n_t + 1)[1:]
    p_cover = np.bincount(p_lab[truth], minlength=n_p + 1)[1:]
    t_detected = (t_cover > 0) & (t_cover >= min_overlap * t_size)
    p_tp = (p_cover > 0) & (p_cover >= min_overlap * p_size)
    # |P_j|: summed sizes of the distinct predicted components touching true lesion j
    both = pred & truth
    pairs = np.unique(t_lab[both].astype(np.int64) * (n_p + 1) + p_lab[both])
    pair_t, pair_p = pairs // (n_p + 1), pairs % (n_p + 1)
    touching = np.bincount(pair_t, weights=p_size[pair_p - 1], minlength=n_t + 1)[1:]
    t_dice = 2.0 * t_cover / (t_size + touching)  # t_size >= 1, so never 0/0
    return _LesionMatch(int(n_t), int(n_p), t_size, t_detected, t_dice, p_tp)


def segmentation_metrics(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | np.ndarray | None = None,
    connectivity: int | None = None,
    min_overlap: float = 0.0,
) -> dict[str, float]:
    """Pixel-wise and lesion-wise metrics of one subject.

    Args:
        pred: binary prediction, ``(H, W)``, ``(H, W, D)`` or the same with a leading channel
            axis of size 1; numpy array or torch tensor. A ``(1, H, W)`` array is read as 2D
            channel-first when ``spacing`` has 2 entries, otherwise as a one-slice volume
            (same metrics either way).
        truth: binary ground truth of the same shape.
        spacing: voxel size per spatial axis (e.g. mm); only the volumes use it. ``None``
            reports volumes in voxels.
        connectivity: connected-component connectivity for the lesion-wise scores, see
            :func:`connectivity_structure` (``None``: full connectivity).
        min_overlap: fraction of a component that must be overlapped for it to count as
            detected / true positive (0: any voxel), see the module docstring.

    Returns:
        dict with the keys of :data:`SEGMENTATION_METRIC_KEYS`, all floats: the scores defined
        in the module docstring, the lesion counts, the voxel counts ``tp, fp, fn, tn`` and
        ``pred_volume`` / ``truth_volume`` (in spacing units, voxels without spacing).
    """
    p, t, sp = _prepare_pair(pred, truth, spacing)
    n_p, n_t = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    tp = int(np.count_nonzero(p & t))
    fp, fn = n_p - tp, n_t - tp
    tn = int(p.size) - tp - fp - fn
    out = _overlap_scores(tp, fp, fn, tn)

    match = _match_lesions(p, t, connectivity_structure(p.ndim, connectivity), min_overlap)
    l_prec, l_rec, l_f1 = _detection_scores(
        match.n_true, match.n_pred, int(match.true_detected.sum()), int(match.pred_tp.sum())
    )
    voxel_volume = float(np.prod(sp)) if sp is not None else 1.0
    out.update(
        lesion_precision=l_prec,
        lesion_recall=l_rec,
        lesion_f1=l_f1,
        n_true_lesions=float(match.n_true),
        n_pred_lesions=float(match.n_pred),
        tp=float(tp),
        fp=float(fp),
        fn=float(fn),
        tn=float(tn),
        pred_volume=n_p * voxel_volume,
        truth_volume=n_t * voxel_volume,
    )
    return {k: float(out[k]) for k in SEGMENTATION_METRIC_KEYS}


# ------------------------------------------------------------------------- binned scores


def _check_bins(bins: Sequence[float]) -> np.ndarray:
    edges = np.asarray(bins, dtype=np.float64).ravel()
    if edges.size < 2 or np.isnan(edges).any() or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must be >= 2 strictly increasing edges without NaN, got {tuple(edges.tolist())}.")
    return edges


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index of the right-closed bin ``edges[k] < v <= edges[k + 1]`` per value, -1 outside all bins."""
    k = np.searchsorted(edges, values, side="left") - 1
    return np.where((k >= 0) & (k < edges.size - 1), k, -1)


def lesion_size_bins(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    bins: Sequence[float] = DEFAULT_LESION_SIZE_BINS,
    connectivity: int | None = None,
    min_overlap: float = 0.0,
) -> dict[str, np.ndarray]:
    """Per ground-truth lesion: size, detection, per-lesion Dice and size bin.

    Args:
        pred: binary prediction (as in :func:`segmentation_metrics`).
        truth: binary ground truth of the same shape.
        bins: increasing size edges in voxels; bin k holds ``bins[k] < size <= bins[k + 1]``
            (default: 1-100, 101-1000, > 1000 voxels).
        connectivity: see :func:`connectivity_structure`.
        min_overlap: see :func:`segmentation_metrics`.

    Returns:
        dict of arrays of shape ``(n_true_lesions,)`` in label order of :func:`label_lesions`:
        ``label`` (1..n), ``size`` (voxels), ``detected`` (bool), ``dice`` (component-overlap
        Dice, module docstring) and ``bin`` (bin index, -1 when outside all bins). Concatenate
        several subjects' arrays and pass them to :func:`summarise_lesion_bins` for pooled bins.
    """
    edges = _check_bins(bins)
    p, t, _ = _prepare_pair(pred, truth, None)
    match = _match_lesions(p, t, connectivity_structure(p.ndim, connectivity), min_overlap)
    return {
        "label": np.arange(1, match.n_true + 1),
        "size": match.true_size,
        "detected": match.true_detected,
        "dice": match.true_dice,
        "bin": _bin_index(match.true_size.astype(np.float64), edges),
    }


def summarise_lesion_bins(
    attribute: Sequence[float] | np.ndarray,
    detected: Sequence[bool] | np.ndarray,
    dice: Sequence[float] | np.ndarray,
    bins: Sequence[float],
) -> list[dict[str, float]]:
    """Detection rate and mean per-lesion Dice per attribute bin.

    Args:
        attribute: ``(n,)`` value per lesion that is binned (size, contrast, ...).
        detected: ``(n,)`` whether each lesion was detected.
        dice: ``(n,)`` per-lesion Dice.
        bins: increasing edges; bin k holds ``bins[k] < value <= bins[k + 1]``.

    Returns:
        one dict per bin: ``low``, ``high``, ``n_lesions``, ``n_detected``,
        ``detection_rate`` and ``mean_dice`` (NaN for an empty bin).
    """
    edges = _check_bins(bins)
    values = np.asarray(attribute, dtype=np.float64).ravel()
    det = np.asarray(detected, dtype=bool).ravel()
    dsc = np.asarray(dice, dtype=np.float64).ravel()
    if not values.size == det.size == dsc.size:
        raise ValueError(f"attribute, detected and dice lengths differ: {values.size}, {det.size}, {dsc.size}.")
    if np.isnan(values).any() or np.isnan(dsc).any():
        raise ValueError("attribute and dice must not contain NaN.")
    n_bins = edges.size - 1
    idx = _bin_index(values, edges)
    keep = idx >= 0
    count = np.bincount(idx[keep], minlength=n_bins)
    n_det = np.bincount(idx[keep], weights=det[keep], minlength=n_bins)
    dice_sum = np.bincount(idx[keep], weights=dsc[keep], minlength=n_bins)
    return [
        {
            "low": float(edges[k]),
            "high": float(edges[k + 1]),
            "n_lesions": float(count[k]),
            "n_detected": float(n_det[k]),
            "detection_rate": _ratio(n_det[k], count[k]),
            "mean_dice": _ratio(dice_sum[k], count[k]),
        }
        for k in range(n_bins)
    ]


def dice_by_lesion_size(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    bins: Sequence[float] = DEFAULT_LESION_SIZE_BINS,
    connectivity: int | None = None,
    min_overlap: float = 0.0,
) -> list[dict[str, float]]:
    """Per-lesion Dice and detection rate of one subject binned by lesion size in voxels.

    See :func:`lesion_size_bins` for the arguments and :func:`summarise_lesion_bins` for the output.
    """
    rec = lesion_size_bins(pred, truth, bins=bins, connectivity=connectivity, min_overlap=min_overlap)
    return summarise_lesion_bins(rec["size"], rec["detected"], rec["dice"], bins)


def dice_by_lesion_attribute(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    attribute_per_lesion: Sequence[float] | np.ndarray,
    bins: Sequence[float],
    connectivity: int | None = None,
    min_overlap: float = 0.0,
) -> list[dict[str, float]]:
    """Per-lesion Dice and detection rate binned by a caller-supplied value per lesion (e.g. contrast).

    Args:
        pred: binary prediction (as in :func:`segmentation_metrics`).
        truth: binary ground truth of the same shape.
        attribute_per_lesion: ``(n_true_lesions,)`` one value per ground-truth lesion, in the
            label order of ``label_lesions(truth, connectivity)`` (same connectivity).
        bins: increasing edges, right-closed bins as in :func:`summarise_lesion_bins`.
        connectivity: see :func:`connectivity_structure`.
        min_overlap: see :func:`segmentation_metrics`.
    """
    rec = lesion_size_bins(pred, truth, bins=bins, connectivity=connectivity, min_overlap=min_overlap)
    values = np.asarray(_to_numpy(attribute_per_lesion), dtype=np.float64).ravel()
    if values.size != rec["label"].size:
        raise ValueError(
            f"attribute_per_lesion has {values.size} values but the truth has {rec['label'].size} lesions "
            "(order: label_lesions(truth, connectivity))."
        )
    return summarise_lesion_bins(values, rec["detected"], rec["dice"], bins)


# --------------------------------------------------------------------------- aggregation


def _nan_mean_std(values: np.ndarray, ddof: int) -> tuple[float, float, int]:
    """Mean and std ignoring NaN (no RuntimeWarning when all are NaN); returns (mean, std, count)."""
    finite = values[~np.isnan(values)]
    n = int(finite.size)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = float(finite.mean())
    std = float(np.sqrt(((finite - mean) ** 2).sum() / (n - ddof))) if n > ddof else float("nan")
    return mean, std, n


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _summarise(rows: Sequence[Mapping[str, Any]], keys: list[str], ddof: int) -> dict[str, Any]:
    out: dict[str, Any] = {"mean": {}, "std": {}, "count": {}, "n_subjects": len(rows)}
    for k in keys:
        vals = np.array([float(r[k]) if _is_number(r.get(k)) else np.nan for r in rows], dtype=np.float64)
        out["mean"][k], out["std"][k], out["count"][k] = _nan_mean_std(vals, ddof)
    return out


def aggregate_metrics(rows: Sequence[Mapping[str, Any]], group_key: str | None = None, ddof: int = 0) -> dict[str, Any]:
    """Mean and standard deviation of per-subject metric rows, NaNs ignored.

    Args:
        rows: one mapping per subject, e.g. :func:`segmentation_metrics` output plus
            identifiers; non-numeric entries (ids, the group key) are not aggregated, a
            missing numeric entry counts as NaN.
        group_key: name of the entry holding each subject's subset (ATLAS: one of the four
            subsets). When given, the metrics are averaged over the subjects of each subset
            first and then over the subsets (docs/method.md §8, paper Table 1), so every subset
            weighs the same whatever its size.
        ddof: delta degrees of freedom of the standard deviation (0: population std).

    Returns:
        ``{"mean": {metric: value}, "std": {...}, "count": {...}, "n_subjects": int}`` where
        count is the number of non-NaN values. With ``group_key`` the top-level ``mean``/``std``
        are over the subset means, ``count`` is the number of subsets with a defined mean,
        and ``"groups"`` maps each subset to its own summary of the same form.
    """
    if len(rows) == 0:
        raise ValueError("rows is empty: nothing to aggregate.")
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k, v in r.items() if k != group_key and k not in keys and _is_number(v))
    if group_key is None:
        return _summarise(rows, keys, ddof)

    missing = [i for i, r in enumerate(rows) if group_key not in r]
    if missing:
        raise ValueError(f"rows {missing[:5]} lack the group key {group_key!r}.")
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r[group_key], []).append(r)
    per_group = {g: _summarise(g_rows, keys, ddof) for g, g_rows in groups.items()}
    out = _summarise([s["mean"] for s in per_group.values()], keys, ddof)
    out["n_subjects"] = len(rows)
    out["groups"] = per_group
    return out


# ------------------------------------------------------------------------- MONAI metric


class LesionMetrics(CumulativeIterationMetric):
    """:func:`segmentation_metrics` as a MONAI cumulative metric for engines and handlers.

    Each call takes a batch of binarised masks ``y_pred``, ``y`` of shape ``(B, C, H, W[, D])``
    (or lists of channel-first items) with C = 1, or C = 2 one-hot where channel 1 is the
    lesion, and buffers one row of :data:`SEGMENTATION_METRIC_KEYS` per item (``(B, K)``
    float64). :meth:`aggregate` averages the rows over all items with NaNs ignored.

    Example::

        metric = LesionMetrics(metric_name="dice")
        handler = monai.handlers.IgniteMetricHandler(
            metric_fn=metric, output_transform=monai.handlers.from_engine(["pred", "label"])
        )

    Args:
        metric_name: key returned by :meth:`aggregate` as a scalar tensor (a usable key metric);
            ``None`` makes :meth:`aggregate` return a dict of all keys.
        spacing: voxel size used for the volumes (``None``: voxels).
        connectivity: see :func:`connectivity_structure`.
        min_overlap: see :func:`segmentation_metrics`.
    """

    def __init__(
        self,
        metric_name: str | None = "dice",
        spacing: Sequence[float] | None = None,
        connectivity: int | None = None,
        min_overlap: float = 0.0,
    ) -> None:
        super().__init__()
        if metric_name is not None and metric_name not in SEGMENTATION_METRIC_KEYS:
            raise ValueError(f"metric_name must be None or one of {SEGMENTATION_METRIC_KEYS}, got {metric_name!r}.")
        self.metric_name = metric_name
        self.spacing = spacing
        self.connectivity = connectivity
        self.min_overlap = min_overlap

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """Column names of the buffered ``(N, K)`` per-item table."""
        return SEGMENTATION_METRIC_KEYS

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Per-item metrics of a batch: ``(B, C, spatial...)`` masks -> ``(B, K)`` float64 tensor."""
        if y is None:
            raise ValueError("LesionMetrics needs the ground truth y.")
        if y_pred.shape != y.shape:
            raise ValueError(f"y_pred and y shapes differ: {tuple(y_pred.shape)} vs {tuple(y.shape)}.")
        if y_pred.ndim not in (4, 5) or y_pred.shape[1] not in (1, 2):
            raise ValueError(f"expected (B, C, H, W[, D]) with C = 1 (or 2 one-hot), got {tuple(y_pred.shape)}.")
        ch = y_pred.shape[1] - 1  # the lesion channel: 0 for a single channel, 1 for one-hot
        rows = [
            segmentation_metrics(
                y_pred[b, ch],
                y[b, ch],
                spacing=self.spacing,
                connectivity=self.connectivity,
                min_overlap=self.min_overlap,
            )
            for b in range(y_pred.shape[0])
        ]
        return torch.tensor([[r[k] for k in SEGMENTATION_METRIC_KEYS] for r in rows], dtype=torch.float64)

    def _table(self) -> np.ndarray:
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor) or buffer.numel() == 0:
            raise ValueError("LesionMetrics has no buffered results: call it on (y_pred, y) first.")
        return buffer.reshape(-1, len(SEGMENTATION_METRIC_KEYS)).cpu().numpy()

    def aggregate_all(self) -> dict[str, float]:
        """NaN-ignoring mean over all buffered items of every key of :data:`SEGMENTATION_METRIC_KEYS`."""
        table = self._table()
        return {k: _nan_mean_std(table[:, i], 0)[0] for i, k in enumerate(SEGMENTATION_METRIC_KEYS)}

    def aggregate(self) -> torch.Tensor | dict[str, float]:
        """NaN-ignoring mean over all buffered items.

        Returns:
            a 0-dim float64 tensor of ``metric_name``, or the dict of :meth:`aggregate_all`
            when ``metric_name`` is ``None``.
        """
        if self.metric_name is None:
            return self.aggregate_all()
        col = self._table()[:, SEGMENTATION_METRIC_KEYS.index(self.metric_name)]
        return torch.tensor(_nan_mean_std(col, 0)[0], dtype=torch.float64)
