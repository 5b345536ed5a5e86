"""Evaluation of a trained GRCSF on a labelled set (``configs/evaluate.json``, docs/method.md §8).

:class:`EvaluationRunner` predicts every subject with the inference pipeline of
``configs/inference.json`` (a :class:`~bundle.engines.inference.SegmentationRunner`, so the masks
are the ones inference writes, in the input's space), compares them with the labels in that same
space using :func:`bundle.metrics.segmentation_metrics`, and writes into ``output_dir``:

- ``predictions/``: the predicted masks (the inference postprocessing's ``output_dir``);
- ``metrics.csv``: one row per subject (ids, every metric, seconds per subject end to end);
- ``summary.json``: means over subjects and, when records carry a subset (ATLAS), the mean per
  subset and the mean over subsets; failed subjects with their error;
- ``overlays/``: PNGs of the worst and best subjects by Dice (:mod:`bundle.visualize.overlay`).

A subject whose files are bad (unreadable, label not matching the image's shape or grid, label not
binary, ...) is reported with its error and left out of the means; the others are evaluated. The
image/label pair is checked before the residual maps and the inference, so a bad pair fails fast.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from bundle.metrics import SEGMENTATION_METRIC_KEYS, aggregate_metrics, segmentation_metrics
from bundle.transforms.io import LoadVolumed, ValidateVolumed
from bundle.utils.errors import DatasetError, FolderRunError, InvalidVolumeError, describe_error
from bundle.utils.flags import as_flag
from bundle.utils.geometry import voxel_spacing
from bundle.utils.io import write_csv, write_json
from bundle.visualize.overlay import OverlaySlices, save_overlay
from monai.transforms import Compose, EnsureChannelFirstd, Invertd

from .inference import SegmentationRunner

__all__ = ["ID_COLUMNS", "EvaluationRunner", "check_label"]

#: record entries copied into ``metrics.csv`` before the metrics, when present
ID_COLUMNS: tuple[str, ...] = ("subject", "subset", "cohort", "image", "label", "prediction")

logger = logging.getLogger(__name__)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.as_tensor() if hasattr(x, "as_tensor") else x).numpy()
    return np.asarray(x)


def check_label(label: np.ndarray | torch.Tensor, label_path: str) -> np.ndarray:
    """Check that a (channel-first) label is one binary mask; return it as a bool array (X, Y, Z).

    Shape, grid and finiteness against the image are checked by
    :class:`~bundle.transforms.io.ValidateVolumed`; training binarises labels silently
    (any value > 0 is lesion), but an evaluation must not score against a label it misreads.

    Args:
        label: (1, X, Y, Z) or (X, Y, Z).
        label_path: label file (named in the errors).

    Raises:
        ValueError: more than one channel, or values other than 0 and 1.
    """
    arr = _to_numpy(label)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise InvalidVolumeError(f"{label_path}: the label has {arr.shape[0]} channels; expected one 3D mask.")
        arr = arr[0]
    values = np.unique(arr)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise InvalidVolumeError(
            f"{label_path}: the label is not binary: values {shown}; expected 0 (background) and 1 (lesion)."
        )
    return arr != 0


class EvaluationRunner:
    """Predict and score a labelled set; write ``metrics.csv``, ``summary.json`` and overlays.

    Args:
        runner: the inference runner of ``configs/inference.json``; its postprocessing must invert
            the prediction to the input's space and save it (the saved files are the ones scored).
        output_dir: evaluation folder (``metrics.csv``, ``summary.json``, ``overlays/``).
        residual_names: a title per residual-map channel of the network input (after the image
            channel), e.g. one per MAE mask ratio.
        group_key: record entry naming the subset (ATLAS); used when every record has it.
        num_overlays: overlays of that many worst and that many best subjects by Dice.
        overwrite: replace earlier outputs; otherwise existing outputs stop the run before any work.
        checkpoint: the evaluated checkpoint, recorded in ``summary.json``.
        reader: MONAI image reader (name or instance) of the images and labels, None for MONAI's
            choice (the ``reader`` of the inference preprocessing).
        connectivity: lesion connectivity of the lesion-wise scores (None: full).
        min_overlap: overlap fraction for a lesion to count as detected.
        progress: show a tqdm progress bar.
        extra_metrics: optional data-set specific scores of one subject,
            ``extra_metrics(pred, truth, image, spacing) -> dict[str, float]`` with the prediction and
            label as bool arrays ``(X, Y, Z)`` and the image as loaded (e.g. in HU for CT, no
            windowing), e.g. :func:`bundle.metrics.orcascore_metrics` for orCaScore. Its entries are
            written to ``metrics.csv`` and averaged in ``summary.json`` with ``extra_prefix`` before
            their names.
        extra_prefix: prefix of the ``extra_metrics`` names (keeps e.g. orCaScore's ``vose`` apart
            from the voxel-wise one).

    """

    def __init__(
        self,
        runner: SegmentationRunner,
        output_dir: str | os.PathLike,
        residual_names: Sequence[str] = (),
        group_key: str | None = "subset",
        num_overlays: int = 2,
        overwrite: Any = False,
        checkpoint: str | None = None,
        reader: Any = None,
        connectivity: int | None = None,
        min_overlap: float = 0.0,
        progress: Any = True,
        extra_metrics: Callable[..., Mapping[str, float]] | None = None,
        extra_prefix: str = "",
    ) -> None:
        self.runner = runner
        self.extra_metrics = extra_metrics
        self.extra_prefix = extra_prefix
        self.output_dir = os.fspath(output_dir)
        self.residual_names = list(residual_names)
        self.group_key = group_key
        self.num_overlays = int(num_overlays)
        self.overwrite = as_flag(overwrite, "overwrite")
        self.split_rule: str | None = None
        self.checkpoint = checkpoint
        # image and label files as they are (no reorientation, no binarisation), checked against each
        # other before the costly residual maps and inference: the label is scored in the image's grid
        self.load_pair = Compose(
            [
                LoadVolumed(["image", "label"], reader=reader),
                EnsureChannelFirstd(["image", "label"]),
                ValidateVolumed(image_key="image", label_key="label"),
            ]
        )
        self.connectivity = connectivity
        self.min_overlap = min_overlap
        self.progress = as_flag(progress, "progress")
        key = runner.image_key
        # the image channels (image + residual maps) back in the input's space, for the overlays
        self.invert_image = Invertd(keys=key, transform=runner.preprocessing, orig_keys=key, nearest_interp=False)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.output_dir, "metrics.csv")

    @property
    def summary_path(self) -> str:
        return os.path.join(self.output_dir, "summary.json")

    @property
    def overlay_dir(self) -> str:
        return os.path.join(self.output_dir, "overlays")

    def _check_outputs_free(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Refuse to start when outputs of an earlier run would be replaced (unless ``overwrite``)."""
        if self.overwrite:
            return
        existing = [p for p in (self.metrics_path, self.summary_path) if os.path.exists(p)]
        if os.path.isdir(self.overlay_dir):
            existing += sorted(os.path.join(self.overlay_dir, n) for n in os.listdir(self.overlay_dir))
        for record in records:
            existing += [p for p in self.runner.output_paths(record["image"]) if os.path.exists(p)]
        if existing:
            shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
            raise FileExistsError(f"evaluation outputs exist: {shown}; set overwrite=true to replace them.")

    def evaluate_one(self, record: Mapping[str, Any]) -> tuple[dict[str, Any], OverlaySlices]:
        """Check one record's image/label pair, predict the image and score the prediction.

        Returns:
            (row, slices): the CSV row (ids, metrics, ``time_s``) and the overlay slices.
        """
        image_path, label_path = os.fspath(record["image"]), os.fspath(record["label"])
        pair = self.load_pair({"image": image_path, "label": label_path})
        truth = check_label(pair["label"], label_path)
        image_affine = _to_numpy(pair["image"].affine)
        image_shape = tuple(pair["image"].shape[1:])
        start = time.perf_counter()
        item = self.runner.predict({self.runner.image_key: image_path})
        seconds = time.perf_counter() - start  # end to end: loading, residual maps, inference, saving
        pred = item[self.runner.pred_key]
        if tuple(pred.shape[1:]) != image_shape or not np.allclose(_to_numpy(pred.affine), image_affine, atol=1e-3):
            raise RuntimeError(
                f"{image_path}: the postprocessing did not bring the prediction back to the image's grid "
                f"(shape {tuple(pred.shape[1:])} vs {image_shape}); check its Invertd."
            )
        pred_mask = _to_numpy(pred)[0]
        metrics = segmentation_metrics(
            pred_mask,
            truth,
            spacing=voxel_spacing(image_affine),
            connectivity=self.connectivity,
            min_overlap=self.min_overlap,
        )
        if self.extra_metrics is not None:
            extra = self.extra_metrics(
                pred_mask.astype(bool), truth, _to_numpy(pair["image"])[0], voxel_spacing(image_affine)
            )
            extra = {f"{self.extra_prefix}{k}": float(v) for k, v in extra.items()}
            clash = sorted(set(extra) & set(metrics))
            if clash:
                raise ValueError(f"extra_metrics names {clash} clash with the segmentation metrics; set extra_prefix.")
            metrics.update(extra)
        saved = pred.meta.get("saved_to")
        row: dict[str, Any] = {
            "subject": record.get("subject", os.path.basename(image_path)),
            **{k: record[k] for k in ID_COLUMNS if k in record and k not in ("subject", "image", "label")},
            "image": image_path,
            "label": label_path,
            "prediction": "" if saved is None else os.fspath(saved),
            **metrics,
            "time_s": seconds,
            "warnings": list(item.get("warnings", [])),
            "_extra": [k for k in metrics if k not in SEGMENTATION_METRIC_KEYS],
        }
        channels = _to_numpy(self.invert_image(item)[self.runner.image_key])
        slices = OverlaySlices.from_volumes(
            image=channels[0],
            truth=truth,
            pred=pred_mask,
            residual_maps=channels[1 : 1 + len(self.residual_names)],
            residual_names=self.residual_names,
            affine=image_affine,
            title=f"{row['subject']}  Dice {metrics['dice']:.3f}",
        )
        return row, slices

    def run(self, records: Sequence[Mapping[str, Any]], split_rule: str | None = None) -> dict[str, Any]:
        """Evaluate ``records`` (dicts with ``image``, ``label`` and optionally ``subject``, ``subset``,
        ``cohort``); write the outputs and return the summary (also in ``summary.json``).

        Args:
            records: the subjects.
            split_rule: how they were chosen (``bundle.data.load_split``'s ``rule``), for the summary.

        Raises:
            FileExistsError: outputs of an earlier run exist and ``overwrite`` is false.
            FolderRunError: some subjects failed (after the others' results are written), or all did.
        """
        records = [dict(r) for r in records]
        self.split_rule = split_rule
        if not records:
            raise DatasetError("no records to evaluate.")
        missing = [i for i, r in enumerate(records) if "image" not in r or "label" not in r]
        if missing:
            raise ValueError(f"records {missing[:5]} lack an 'image' or 'label' entry.")
        self._check_outputs_free(records)
        if self.runner.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.runner.device)
        rows: list[dict[str, Any]] = []
        slices: list[OverlaySlices] = []
        failed: list[dict[str, Any]] = []
        iterator: Any = records
        if self.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(records, desc="evaluation", unit="subject")
        for record in iterator:
            try:
                row, subject_slices = self.evaluate_one(record)
            except Exception as e:
                message = describe_error(e)
                if record["image"] not in message and record["label"] not in message:
                    message = f"{record['image']}: {message}"
                logger.warning(f"evaluation failed: {message}")
                failed.append(
                    {
                        "subject": record.get("subject"),
                        "image": record["image"],
                        "label": record["label"],
                        "error": message,
                    }
                )
                continue
            rows.append(row)
            slices.append(subject_slices)
        if not rows:
            details = "; ".join(f["error"] for f in failed[:5])
            raise FolderRunError(f"evaluation: all {len(failed)} subjects failed: {details}")

        columns = [c for c in ID_COLUMNS if any(c in r for r in rows)] + self._metric_keys(rows) + ["time_s"]
        write_csv(rows, columns, self.metrics_path, overwrite=self.overwrite)
        overlays = self._write_overlays(rows, slices)
        summary = self._summary(rows, failed, overlays)
        write_json(summary, self.summary_path, overwrite=self.overwrite)
        logger.info(
            f"evaluation of {len(rows)} subjects ({len(failed)} failed): mean Dice "
            f"{summary['mean_over_subjects']['dice']:.4f}; {self.metrics_path}, {self.summary_path}"
        )
        if failed:
            raise FolderRunError(
                f"evaluation: {len(failed)} of {len(records)} subjects failed (first: {failed[0]['error']}); "
                f"the others are in {self.summary_path}"
            )
        return summary

    def _metric_keys(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """The segmentation metrics, then the extra metrics in the order they first appear."""
        keys = list(SEGMENTATION_METRIC_KEYS)
        for row in rows:
            keys += [k for k in row.get("_extra", ()) if k not in keys]
        return keys

    def _summary(
        self, rows: Sequence[Mapping[str, Any]], failed: Sequence[Mapping[str, Any]], overlays: Sequence[str]
    ) -> dict[str, Any]:
        keys = self._metric_keys(rows) + ["time_s"]
        # ids such as a numeric cohort must not be averaged: aggregate the metric columns only
        metric_rows = [{k: r[k] for k in keys} for r in rows]
        overall = aggregate_metrics(metric_rows)
        summary: dict[str, Any] = {
            "checkpoint": self.checkpoint,
            "n_subjects": len(rows),
            "n_failed": len(failed),
            "mean_over_subjects": overall["mean"],
            "std_over_subjects": overall["std"],
            "count_over_subjects": overall["count"],
            "time_per_subject_s": overall["mean"]["time_s"],
            "split_rule": self.split_rule,
            # docs/method.md §8 also reports the model size and the peak memory of the whole pipeline
            "network_parameters": sum(p.numel() for p in self.runner.network.parameters()),
            "peak_gpu_memory_mib": (
                torch.cuda.max_memory_allocated(self.runner.device) / 2**20
                if self.runner.device.type == "cuda"
                else None
            ),
        }
        key = self.group_key
        if key is not None and all(key in r for r in rows):
            grouped = aggregate_metrics(
                [{**m, key: r[key]} for m, r in zip(metric_rows, rows, strict=True)], group_key=key
            )
            summary["group_key"] = key
            summary["mean_over_subsets"] = grouped["mean"]
            summary["std_over_subsets"] = grouped["std"]
            summary["per_subset"] = {
                str(g): {"n_subjects": s["n_subjects"], "mean": s["mean"], "std": s["std"]}
                for g, s in sorted(grouped["groups"].items(), key=lambda gs: str(gs[0]))
            }
        summary.update(
            failed=list(failed),
            warnings=[{"subject": r["subject"], "warnings": r["warnings"]} for r in rows if r.get("warnings")],
            metrics_csv=self.metrics_path,
            overlays=list(overlays),
        )
        return summary

    def _write_overlays(self, rows: Sequence[Mapping[str, Any]], slices: Sequence[OverlaySlices]) -> list[str]:
        """Overlay PNGs of the ``num_overlays`` worst and best subjects by Dice (each subject once)."""
        if self.num_overlays <= 0:
            return []
        dice = [r["dice"] if not math.isnan(r["dice"]) else -1.0 for r in rows]
        order = sorted(range(len(rows)), key=lambda i: (dice[i], str(rows[i]["subject"])))
        n = min(self.num_overlays, len(rows))
        worst = order[:n]
        best = [i for i in reversed(order) if i not in worst][:n]
        paths = []
        for kind, chosen in (("worst", worst), ("best", best)):
            for rank, i in enumerate(chosen, start=1):
                # subject ids come from data lists: keep file-name-safe characters only
                subject = re.sub(r"[^A-Za-z0-9._-]+", "_", str(rows[i]["subject"]))
                name = f"{kind}{rank}_{subject}.png"
                paths.append(save_overlay(slices[i], os.path.join(self.overlay_dir, name), overwrite=self.overwrite))
        return paths
