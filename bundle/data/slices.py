"""3D volumes as a data set of 2D slices (docs/method.md §1), for MAE pre-training and segmentation.

:class:`VolumeSliceDataset` runs the volume-level transform (e.g.
:func:`bundle.transforms.brain.brain_preprocessing`) once per volume, with the result kept
by a MONAI :class:`~monai.data.CacheDataset` (``cache="memory"``) or
:class:`~monai.data.PersistentDataset` (``cache="disk"``), indexes the (volume, slice) pairs that
pass the selection rule, and serves each slice as a dict of channel-first 2D MetaTensors
``(C, H, W)`` with ``subject``, ``volume_index`` and ``slice_index`` entries, after an optional
slice-level transform.

:func:`slice_sampling_weights` gives per-slice weights for a
:class:`~torch.utils.data.WeightedRandomSampler` that over-samples slices holding lesion.

Distributed training (DDP):

- Uniform sampling: wrap the data set in :class:`~monai.data.DistributedSampler` as usual.
- Lesion over-sampling: use :class:`~monai.data.DistributedWeightedRandomSampler` with
  ``weights=slice_sampling_weights(dataset, factor)`` and ``num_samples_per_rank``; every rank
  builds the same index (it is deterministic), so the weights agree across ranks.
- Memory: with ``cache="memory"`` every rank holds every volume. Either give each rank only its
  share of the records (``monai.data.partition_dataset`` on the records before building the data
  set, then a plain sampler), or use ``cache="disk"`` with one shared ``cache_dir``: fill it once
  (e.g. on rank 0 before the others start, or in a separate preprocessing run); ranks then read
  the volumes lazily.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NoReturn

import numpy as np
import torch
from bundle.utils.errors import find_volume_error
from bundle.utils.flags import as_flag
from bundle.utils.geometry import voxel_spacing
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
from monai.transforms import Compose, Randomizable, Transform, apply_transform
from torch.utils.data import Dataset as TorchDataset

from .cache import PackMetaTensors, record_fingerprint, transform_fingerprint, unpack_meta_tensors
from .checks import residual_map_statistic, summarise_residual_statistics

__all__ = [
    "SELECTIONS",
    "VolumeSliceDataset",
    "common_spacing",
    "num_slices_per_epoch",
    "residual_map_reference",
    "slice_sampling_weights",
    "volume_spacings",
]

logger = logging.getLogger(__name__)

SELECTIONS = ("all", "lesion_free", "lesion")
CACHE_MODES = ("memory", "disk", None)


def _slice_affine(affine: torch.Tensor, axis: int, index: int) -> torch.Tensor:
    """The 2D voxel-to-world affine (3, 3) of slice ``index`` along spatial ``axis`` of a 3D volume.

    The in-plane axes keep their rows/columns of the 3D affine; the translation is the world
    position of the slice's first voxel, restricted to the in-plane world axes. The full 3D
    position stays in the slice's ``meta["volume_affine"]`` and ``meta["slice_index"]``.
    """
    affine = torch.as_tensor(affine, dtype=torch.float64)
    keep = [a for a in range(3) if a != axis]
    origin = affine[:3, 3] + affine[:3, axis] * index
    out = torch.eye(3, dtype=torch.float64)
    out[:2, :2] = affine[keep][:, keep]
    out[:2, 2] = origin[keep]
    return out


class VolumeSliceDataset(TorchDataset):
    """2D slices of 3D volumes, each volume loaded and preprocessed once.

    Selection of the slices (in this order):

    1. every ``slice_stride``-th slice along ``slice_axis`` (1: all);
    2. slices whose fraction of foreground pixels (``foreground_key`` > ``foreground_threshold``
       in any channel) is below ``min_foreground_fraction`` are dropped (0: none dropped);
    3. ``select``: ``"all"``; ``"lesion_free"``: slices whose ``label_key`` slice is empty,
       from lesion-free and lesion subjects alike (what the MAE is trained on, docs/method.md §5);
       ``"lesion"``: slices holding at least one lesion voxel.

    Args:
        data: records, e.g. ``{"subject": "sub-1", "image": path, "label": path}``.
        volume_transform: deterministic volume-level transform turning a record into a dict of
            channel-first 3D tensors ``(C, X, Y, Z)``; random augmentation belongs in
            ``slice_transform`` (cached volumes are shared between the slices).
        slice_transform: transform applied to every slice dict, None for none.
        keys: keys sliced into the output; keys a record does not have (e.g. the label of
            unlabeled data) are skipped.
        label_key: key of the lesion mask used by ``select`` and :func:`slice_sampling_weights`;
            it need not be in ``keys`` (the MAE only outputs the image). None: no labels.
        slice_axis: spatial axis (0, 1, 2 or negative) to slice along; -1 is axial for RAS volumes.
        select: one of :data:`SELECTIONS`.
        foreground_key: key of the image that defines the foreground.
        foreground_threshold: pixels above it are foreground.
        min_foreground_fraction: slices with a smaller foreground fraction are dropped.
        slice_stride: keep every ``slice_stride``-th slice (e.g. a lighter validation set).
        cache: ``"memory"`` (CacheDataset: fast, needs RAM for all volumes), ``"disk"``
            (PersistentDataset in ``cache_dir``: a slice access reads its volume from disk) or
            None (no cache: a slice access re-runs the volume transform; for small or debug
            runs). Without the memory cache the last volume is kept, so ordered access
            (validation, inference) reads or computes each volume once per process.
        cache_dir: directory of the disk cache (``cache="disk"``).
        cache_num_workers: threads filling the memory cache.
        progress: show a progress bar while the volumes are loaded.

    Each item is a dict with, for every key of ``keys`` that the volume has, a MetaTensor
    ``(C, H, W)`` (the two remaining spatial axes in volume order) whose ``meta`` holds
    ``filename_or_obj``, ``slice_index``, ``slice_axis``, ``volume_affine`` (4x4) and
    ``volume_spatial_shape``, and whose ``affine`` is the in-plane 3x3 affine; plus the
    record's string/number entries (``subject``, ``cohort``, ...), ``volume_index`` and
    ``slice_index``. Then ``slice_transform`` is applied.

    Attributes:
        volume_index: (N,) int64 tensor, the volume of every slice of the data set.
        slice_index: (N,) int64 tensor, the slice position along ``slice_axis``.
        lesion_voxels: (N,) int64 tensor, lesion voxels per slice (0 without label).
        has_lesion: (N,) bool tensor, ``lesion_voxels > 0``.
        subjects: the subject of every volume (the record's ``subject``, else the image file name).
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        volume_transform: Callable,
        slice_transform: Callable | None = None,
        keys: Sequence[str] = ("image", "label"),
        label_key: str | None = "label",
        slice_axis: int = -1,
        select: str = "all",
        foreground_key: str = "image",
        foreground_threshold: float = 0.0,
        min_foreground_fraction: float = 0.0,
        slice_stride: int = 1,
        cache: str | None = "memory",
        cache_dir: str | os.PathLike | None = None,
        cache_num_workers: int = 1,
        progress: bool = False,
    ) -> None:
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}.")
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}.")
        if cache == "disk" and cache_dir is None:
            raise ValueError('cache="disk" needs a cache_dir.')
        if not -3 <= slice_axis <= 2:
            raise ValueError(f"slice_axis must be a spatial axis of a 3D volume (-3..2), got {slice_axis}.")
        if slice_stride < 1:
            raise ValueError(f"slice_stride must be >= 1, got {slice_stride}.")
        if not 0.0 <= min_foreground_fraction <= 1.0:
            raise ValueError(f"min_foreground_fraction must be in [0, 1], got {min_foreground_fraction}.")
        self.records = [dict(r) for r in data]
        if not self.records:
            raise ValueError("VolumeSliceDataset: no records (the datalist is empty).")
        self._check_deterministic(volume_transform)
        self.volume_transform = volume_transform
        self.slice_transform = slice_transform
        self.keys = tuple(keys)
        self.label_key = label_key
        self.slice_axis = slice_axis % 3
        self.select = select
        self.foreground_key = foreground_key
        self.foreground_threshold = foreground_threshold
        self.min_foreground_fraction = min_foreground_fraction
        self.slice_stride = slice_stride
        self.cache = cache
        progress = as_flag(progress, "progress")
        self.volumes = self._volume_dataset(cache, cache_dir, cache_num_workers, progress)
        self._last: tuple[int, dict] | None = None
        self._build_index(progress)

    @staticmethod
    def _check_deterministic(transform: Callable) -> None:
        parts = transform.flatten().transforms if isinstance(transform, Compose) else (transform,)
        random_parts = [type(t).__name__ for t in parts if isinstance(t, Randomizable)]
        if random_parts:
            raise ValueError(
                f"volume_transform must be deterministic (its result is cached and shared by all slices), "
                f"but holds random transforms {random_parts}: move them to slice_transform."
            )

    @staticmethod
    def _cacheable(transform: Callable, *extra: Transform) -> Compose:
        """One flat Compose: MONAI caches a Compose only up to its first Randomizable part, and a
        nested Compose counts as one (Compose is Randomizable), which would silently cache nothing."""
        flat = Compose([transform, *extra]).flatten()
        others = [type(t).__name__ for t in flat.transforms if not isinstance(t, Transform)]
        if others:
            raise ValueError(
                f"volume_transform parts {others} are not MONAI Transforms, so MONAI would not cache their "
                "result: wrap them in a monai.transforms.Transform or use cache=None."
            )
        return flat

    def _volume_dataset(
        self, cache: str | None, cache_dir: str | os.PathLike | None, num_workers: int, progress: bool
    ) -> Dataset:
        if cache == "memory":
            # copy_cache=False: slices are copied out of the cached volume, which is never modified
            transform = self._cacheable(self.volume_transform)
            try:  # CacheDataset runs the transforms now
                return CacheDataset(
                    self.records,
                    transform,
                    cache_rate=1.0,
                    num_workers=num_workers,
                    progress=progress,
                    copy_cache=False,
                )
            except RuntimeError as e:  # MONAI wraps every transform error into a RuntimeError
                self._reraise(e)
        if cache == "disk":
            # torch.load(weights_only=True) refuses MetaTensors (and the numpy header fields in their
            # meta), so the volumes are cached as plain tensors + affine + file name and unpacked on
            # access; the file names hold the record with its files' contents and the transforms'
            # fingerprint, so an edited file or other settings miss the stale entries.
            return PersistentDataset(
                self.records,
                self._cacheable(self.volume_transform, PackMetaTensors()),
                cache_dir=cache_dir,
                hash_func=record_fingerprint,
                hash_transform=transform_fingerprint,
            )
        return Dataset(self.records, self.volume_transform)

    @staticmethod
    def _reraise(error: Exception) -> NoReturn:
        """Re-raise the error naming the file (see ``find_volume_error``) without MONAI's wrappers."""
        cause = find_volume_error(error)
        if cause is not None and cause is not error:
            raise cause from None
        raise error

    def volume(self, index: int) -> dict:
        """The preprocessed volume ``index`` (a dict of channel-first tensors), from the cache."""
        return self._load_volume(index)

    def _load_volume(self, index: int) -> dict:
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        try:
            volume = self.volumes[index]
        except RuntimeError as e:  # MONAI wraps every transform error into a RuntimeError
            self._reraise(e)
        if not isinstance(volume, Mapping):
            raise TypeError(f"volume_transform must return a dict, got {type(volume).__name__} for record {index}.")
        volume = unpack_meta_tensors(volume)
        # without the memory cache keep the last volume: ordered access (validation, inference)
        # then reads or computes each volume once
        if self.cache != "memory":
            self._last = (index, volume)
        return volume

    def _subject(self, index: int) -> str:
        record = self.records[index]
        if "subject" in record:
            return str(record["subject"])
        image = record.get(self.foreground_key, record.get(self.keys[0], index))
        return os.path.basename(str(image)) if isinstance(image, (str, os.PathLike)) else f"volume_{index}"

    def _volume_tensor(self, volume: Mapping[Hashable, Any], key: str, index: int) -> torch.Tensor:
        value = volume[key]
        if not isinstance(value, torch.Tensor) or value.ndim != 4:
            shape = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
            raise ValueError(
                f"volume {index} ({self._subject(index)}): {key!r} must be a channel-first 3D tensor "
                f"(C, X, Y, Z) after volume_transform, got {shape}."
            )
        return value

    def _build_index(self, progress: bool) -> None:
        volume_index: list[int] = []
        slice_index: list[int] = []
        lesion_voxels: list[int] = []
        self.subjects = [self._subject(i) for i in range(len(self.records))]
        self.num_slices_per_volume: list[int] = []
        axis = 1 + self.slice_axis  # tensor axis of the slice direction (after the channel)
        iterator: Any = range(len(self.records))
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="indexing slices")
        for v in iterator:
            volume = self._load_volume(v)
            image = self._volume_tensor(volume, self.foreground_key, v)
            other = [a for a in range(1, 4) if a != axis]
            fg = (torch.as_tensor(image) > self.foreground_threshold).any(dim=0, keepdim=True)
            fg_fraction = fg.float().mean(dim=other).flatten()
            if self.label_key is not None and self.label_key in volume:
                label = self._volume_tensor(volume, self.label_key, v)
                if label.shape[1:] != image.shape[1:]:
                    raise ValueError(
                        f"volume {v} ({self.subjects[v]}): {self.label_key} spatial shape {tuple(label.shape[1:])} "
                        f"differs from {self.foreground_key} {tuple(image.shape[1:])}."
                    )
                lesion = (torch.as_tensor(label) > 0).any(dim=0, keepdim=True).sum(dim=other).flatten().long()
            elif self.select != "all":
                raise ValueError(
                    f"select={self.select!r} needs labels, but volume {v} ({self.subjects[v]}) has no "
                    f"{self.label_key!r}; use select='all' for unlabeled data."
                )
            else:
                lesion = torch.zeros(image.shape[axis], dtype=torch.long)
            self.num_slices_per_volume.append(int(image.shape[axis]))
            for k in range(0, int(image.shape[axis]), self.slice_stride):
                if float(fg_fraction[k]) < self.min_foreground_fraction:
                    continue
                if self.select == "lesion_free" and lesion[k] > 0:
                    continue
                if self.select == "lesion" and lesion[k] == 0:
                    continue
                volume_index.append(v)
                slice_index.append(k)
                lesion_voxels.append(int(lesion[k]))
        self.volume_index = torch.tensor(volume_index, dtype=torch.long)
        self.slice_index = torch.tensor(slice_index, dtype=torch.long)
        self.lesion_voxels = torch.tensor(lesion_voxels, dtype=torch.long)
        self.has_lesion = self.lesion_voxels > 0

    def __len__(self) -> int:
        return int(self.volume_index.numel())

    def _slice(self, value: torch.Tensor, k: int) -> MetaTensor:
        array = torch.as_tensor(value).select(1 + self.slice_axis, k).clone()
        meta: dict[str, Any] = {"slice_index": k, "slice_axis": self.slice_axis}
        if isinstance(value, MetaTensor):
            affine = value.affine
            for name in ("filename_or_obj", "space"):
                if name in value.meta:
                    meta[name] = value.meta[name]
        else:
            affine = torch.eye(4, dtype=torch.float64)
        meta["volume_affine"] = torch.as_tensor(affine, dtype=torch.float64).clone()
        meta["volume_spatial_shape"] = torch.tensor(value.shape[1:])
        meta["spatial_shape"] = torch.tensor(array.shape[1:])
        return MetaTensor(array, affine=_slice_affine(affine, self.slice_axis, k), meta=meta)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"slice {index} out of range for {len(self)} slices.")
        v = int(self.volume_index[index])
        k = int(self.slice_index[index])
        volume = self._load_volume(v)
        # record entries that the volume transform loaded (image/label paths) are not passed on
        volume_keys = set(self.keys) | {name for name, value in volume.items() if isinstance(value, torch.Tensor)}
        item: dict[str, Any] = {
            name: value
            for name, value in self.records[v].items()
            if name not in volume_keys and isinstance(value, (str, int, float, bool))
        }
        for key in self.keys:
            if key in volume:
                item[key] = self._slice(self._volume_tensor(volume, key, v), k)
        item["subject"] = self.subjects[v]
        item["volume_index"] = v
        item["slice_index"] = k
        if self.slice_transform is not None:
            item = apply_transform(self.slice_transform, item)
        return item


def slice_sampling_weights(dataset: VolumeSliceDataset, lesion_oversampling: float = 1.0) -> torch.Tensor:
    """Sampling weight of every slice: 1 for slices without lesion, ``lesion_oversampling`` with.

    Use with ``torch.utils.data.WeightedRandomSampler(weights, num_samples=len(dataset))`` (one
    process) or ``monai.data.DistributedWeightedRandomSampler(dataset, weights,
    num_samples_per_rank=...)`` (DDP; the index and so the weights are identical on every rank).
    A slice holding lesion is then drawn ``lesion_oversampling`` times as often as one without.

    Args:
        dataset: a :class:`VolumeSliceDataset` (anything with a ``has_lesion`` (N,) bool tensor).
        lesion_oversampling: relative weight of slices with lesion, > 0 (1: uniform).

    Returns:
        (N,) float64 tensor of non-negative weights (not normalised).
    """
    if not lesion_oversampling > 0:
        raise ValueError(f"lesion_oversampling must be > 0, got {lesion_oversampling}.")
    has_lesion = torch.as_tensor(np.asarray(dataset.has_lesion), dtype=torch.bool)
    if has_lesion.numel() == 0:
        raise ValueError("the data set holds no slices: nothing to sample.")
    weights = torch.ones(has_lesion.numel(), dtype=torch.float64)
    weights[has_lesion] = float(lesion_oversampling)
    return weights


def num_slices_per_epoch(num_slices: int, max_slices_per_epoch: int | None = None, world_size: int = 1) -> int:
    """Slices drawn per epoch and per rank: all of them, or at most ``max_slices_per_epoch``.

    Args:
        num_slices: slices in the training set.
        max_slices_per_epoch: cap for the whole epoch (all ranks together), None for no cap.
        world_size: number of distributed ranks sharing the epoch.
    """
    if num_slices < 1:
        raise ValueError("the training set holds no slices: check the datalist and the slice selection.")
    total = num_slices if max_slices_per_epoch is None else min(num_slices, int(max_slices_per_epoch))
    return max(1, math.ceil(total / world_size))


def volume_spacings(dataset: VolumeSliceDataset, key: str = "image") -> list[tuple[float, ...] | None]:
    """The voxel spacing (mm) of every preprocessed volume of ``dataset`` (None where unknown)."""
    spacings: list[tuple[float, ...] | None] = []
    for v in range(len(dataset.records)):
        value = dataset.volume(v).get(key)
        spacings.append(voxel_spacing(value.affine) if isinstance(value, MetaTensor) else None)
    return spacings


def common_spacing(dataset: VolumeSliceDataset, key: str = "image", atol: float = 1e-3) -> list[float] | None:
    """The voxel spacing all preprocessed volumes of ``dataset`` share, None when they differ (or are
    unknown); recorded in the weights file so that inference resamples scans to it."""
    spacings = volume_spacings(dataset, key)
    if not spacings or any(s is None for s in spacings):
        return None
    first = np.asarray(spacings[0])
    if all(np.allclose(np.asarray(s), first, atol=atol) for s in spacings):
        return [float(s) for s in first]
    logger.info("the training volumes have different voxel spacings: inference keeps each scan's grid.")
    return None


def residual_map_reference(
    dataset: VolumeSliceDataset, image_key: str = "image", maps_key: str = "residual_maps"
) -> dict[str, Any] | None:
    """The residual-map statistic (:func:`~bundle.data.checks.residual_map_statistic`) of the
    training volumes, None when they hold no maps."""
    values = []
    for v in range(len(dataset.records)):
        volume = dataset.volume(v)
        if maps_key in volume and image_key in volume:
            values.append(residual_map_statistic(volume[image_key], volume[maps_key]))
    return summarise_residual_statistics(values)
