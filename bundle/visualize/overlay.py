"""Overlay figures for the evaluation: image, ground truth, prediction and residual maps of one slice.

Everything draws with matplotlib's object API on the Agg canvas (no pyplot global state, no
display needed) and writes PNGs atomically (:func:`bundle.engines.inference.atomic_output`).

Volumes are channel-less 3D arrays ``(X, Y, Z)`` in one voxel grid; the slice shown is the axial
one (the voxel axis closest to the superior-inferior direction of the affine) that holds the most
lesion.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from bundle.utils.io import atomic_output

__all__ = ["axial_axis", "lesion_slice_index", "take_slice", "OverlaySlices", "overlay_figure", "save_overlay"]


def axial_axis(affine: np.ndarray) -> int:
    """Index (0-2) of the voxel axis pointing most along superior-inferior in ``affine`` (4x4)."""
    codes = nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64))
    for axis, code in enumerate(codes):
        if code in ("S", "I"):
            return axis
    return 2


def lesion_slice_index(truth: np.ndarray, pred: np.ndarray, axis: int) -> int:
    """The slice along ``axis`` with the most ground-truth voxels.

    Without ground-truth lesion the slice with the most predicted voxels is used (false positives
    are what there is to see), and the middle slice when both masks are empty.

    Args:
        truth: binary ground truth (X, Y, Z).
        pred: binary prediction (X, Y, Z).
        axis: slicing axis.
    """
    other = tuple(a for a in range(truth.ndim) if a != axis)
    for mask in (truth, pred):
        counts = np.asarray(mask != 0).sum(axis=other)
        if counts.max() > 0:
            return int(np.argmax(counts))
    return truth.shape[axis] // 2


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` of ``volume`` (X, Y, Z) along ``axis``, transposed for ``imshow(origin="lower")``.

    For a RAS volume and the axial axis this shows the first remaining axis (left-right)
    horizontally and the second (posterior-anterior) vertically.
    """
    return np.take(np.asarray(volume), index, axis=axis).T


class OverlaySlices:
    """The 2D slices of one subject that an overlay figure shows.

    Args:
        image: image slice (h, w).
        truth: ground-truth slice (h, w), binary.
        pred: prediction slice (h, w), binary.
        residual_maps: residual-map slices (R, h, w).
        residual_names: a title per residual map, e.g. ``"RM 0.50"``.
        title: figure title, e.g. subject and Dice.
    """

    def __init__(
        self,
        image: np.ndarray,
        truth: np.ndarray,
        pred: np.ndarray,
        residual_maps: np.ndarray,
        residual_names: Sequence[str],
        title: str,
    ) -> None:
        self.image = np.asarray(image, dtype=np.float32)
        self.truth = np.asarray(truth) != 0
        self.pred = np.asarray(pred) != 0
        self.residual_maps = np.asarray(residual_maps, dtype=np.float32).reshape(-1, *self.image.shape)
        if len(residual_names) != len(self.residual_maps):
            raise ValueError(f"{len(self.residual_maps)} residual maps but {len(residual_names)} names.")
        self.residual_names = list(residual_names)
        self.title = title

    @classmethod
    def from_volumes(
        cls,
        image: np.ndarray,
        truth: np.ndarray,
        pred: np.ndarray,
        residual_maps: np.ndarray,
        residual_names: Sequence[str],
        affine: np.ndarray,
        title: str,
    ) -> OverlaySlices:
        """Cut the axial slice with the most lesion out of volumes in one grid, shown in RAS
        orientation whatever the grid's (patient's right on the right, anterior at the top), so that
        an LPS scan (NRRD, DICOM) looks like a RAS one.

        Args:
            image: (X, Y, Z).
            truth: (X, Y, Z) binary.
            pred: (X, Y, Z) binary.
            residual_maps: (R, X, Y, Z).
            residual_names: R titles.
            affine: the grid's 4x4 voxel-to-world affine (it tells how to reach RAS).
            title: figure title; the slice index (of the grid's own axial axis) is appended.
        """
        axis = axial_axis(affine)
        to_ras = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64)),
            nib.orientations.axcodes2ornt(("R", "A", "S")),
        )

        def ras(volume: np.ndarray) -> np.ndarray:
            return nib.orientations.apply_orientation(np.asarray(volume), to_ras)

        index = lesion_slice_index(truth, pred, axis)
        # the same slice in RAS: its index along S counts from the other end when the grid runs I
        ras_index = index if to_ras[axis, 1] > 0 else truth.shape[axis] - 1 - index
        maps = np.asarray(residual_maps)
        return cls(
            image=take_slice(ras(image), 2, ras_index),
            truth=take_slice(ras(truth), 2, ras_index),
            pred=take_slice(ras(pred), 2, ras_index),
            residual_maps=(
                np.stack([take_slice(ras(rm), 2, ras_index) for rm in maps])
                if len(maps)
                else np.zeros((0, *take_slice(ras(image), 2, ras_index).shape), dtype=np.float32)
            ),
            residual_names=residual_names,
            title=f"{title} (slice {index} of axis {axis})",
        )


def _contour(ax, mask: np.ndarray, color: str) -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.8, origin="lower")


def overlay_figure(slices: OverlaySlices, dpi: int = 100):
    """A one-row figure: image, truth overlay, prediction overlay (+ truth contour), residual maps.

    Returns:
        a ``matplotlib.figure.Figure`` attached to an Agg canvas.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_cols = 3 + len(slices.residual_maps)
    fig = Figure(figsize=(2.6 * n_cols, 3.0), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_cols, squeeze=False)[0]
    shown = {"origin": "lower", "interpolation": "nearest"}
    axes[0].imshow(slices.image, cmap="gray", **shown)
    axes[0].set_title("image")
    axes[1].imshow(slices.image, cmap="gray", **shown)
    axes[1].imshow(np.ma.masked_where(~slices.truth, slices.truth), cmap="autumn", alpha=0.5, **shown)
    axes[1].set_title(f"truth ({int(slices.truth.sum())} px)")
    axes[2].imshow(slices.image, cmap="gray", **shown)
    axes[2].imshow(np.ma.masked_where(~slices.pred, slices.pred), cmap="winter", alpha=0.5, **shown)
    _contour(axes[2], slices.truth, "red")  # the truth outline makes misses visible on the prediction
    axes[2].set_title(f"prediction ({int(slices.pred.sum())} px)")
    for ax, rm, name in zip(axes[3:], slices.residual_maps, slices.residual_names, strict=True):
        im = ax.imshow(rm, cmap="magma", **shown)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(name)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(slices.title, fontsize=9)
    fig.tight_layout()
    return fig


def save_overlay(slices: OverlaySlices, path: str | os.PathLike, overwrite: bool = False, dpi: int = 100) -> str:
    """Draw :func:`overlay_figure` and write it to ``path`` (PNG) atomically; returns the path."""
    fig = overlay_figure(slices, dpi=dpi)
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png")
    return os.fspath(path)
