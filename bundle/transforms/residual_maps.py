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
"""Multi-ratio residual maps (MRM) of a masked autoencoder, GRCSF paper Sec. 3.3.1 (docs/method.md §1).

For every 2D slice ``I`` and every mask ratio ``r`` the MAE reconstructs the slice under K
masks; the reconstructions are averaged and the residual map is
``RM_r = |I - (1/K) sum_k R_r^(k)|``. The maps of all ratios form a channel-first
``(num_ratios, *spatial)`` image aligned with the input.

How one slice is reconstructed (:func:`compute_residual_maps`):

1. the slice is clipped to ``clip_range`` when given (the intensity range the MAE was trained
   on; the residual is then measured against the clipped slice too, so that it reports
   reconstruction errors in the MAE's domain, not out-of-range intensities);
2. resized (bilinear, antialiased) to the MAE input size when its size differs;
3. reconstructed by the MAE with one of the K masks (decoder output at all patches);
4. resized back to the slice size (bilinear) and, with ``paste_visible`` (docs/method.md §5
   choice), replaced by the slice's own pixels wherever the patch mask (upsampled to the slice
   grid, nearest) is visible;
5. averaged over the K passes; the absolute difference to the slice is averaged over channels.
   The implementation accumulates the differences ``R^(k) - I`` and takes ``|mean_k (R^(k) - I)|``,
   equal to ``|I - mean_k R^(k)|`` but exactly zero wherever every reconstruction equals the
   slice (a sum of K copies of ``I`` divided by K is not always ``I`` in floating point).

All (pass, slice) pairs of one ratio go through the MAE in batches of ``batch_size``; the
masks of one ratio all hide the same number of patches, so one batch is one dense forward.
:func:`residual_maps_reference` computes the same maps one slice and one pass at a time; with
the same masks both agree to float rounding.

Reproducibility and caching. :class:`ResidualMapd` draws the masks from a ``torch.Generator``
seeded, per call and key, with a hash of ``(seed, key, file name of the image, image shape)``
(the file name is the base name in the MetaTensor's ``filename_or_obj``, empty for in-memory
data). The maps of an item thus do not depend on the order of the data, the worker process or
the device, so the transform is deterministic (with ``seed`` not None) and MONAI's
:class:`~monai.data.PersistentDataset` can cache its output next to the data::

    from monai.data import PersistentDataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from bundle.transforms import ConcatResidualMapsd, ResidualMapd

    pre = Compose([
        LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"),
        ResidualMapd(keys="image", mae="models/mae.pt", mask_ratios=(0.5, 0.75), num_passes=5),
        ConcatResidualMapsd(keys="image"),  # image channels + one channel per ratio
    ])
    ds = PersistentDataset(data=[{"image": "sub-1_T1w.nii.gz"}], transform=pre, cache_dir="cache/mrm")

The first pass computes the maps and writes one ``.pt`` file per item into ``cache_dir``; later
passes (and later runs) read them. By MONAI's defaults (``track_meta=False``, ``weights_only=True``)
the cached items come back as plain tensors; pass ``track_meta=True, weights_only=False`` to
``PersistentDataset`` to keep the MetaTensors (affine, file name) of a cache you trust. The cache
key is the data item (the file names), not the transform's arguments: use one ``cache_dir`` per MAE
and configuration. The transform is picklable (DataLoader workers): a model given as a path or a callable is loaded lazily and not
pickled (use ``functools.partial``, not a lambda, for callables).

The MAE may be any ``nn.Module`` with integer attributes ``img_size``, ``patch_size``,
``in_channels`` and a method ``reconstruct(x, mask=..., paste_visible=False) -> (B, C, H, W)``
taking a ``(B, L)`` bool patch mask (``True`` = masked, patches row-major), such as
:class:`bundle.networks.MaskedAutoencoderViT`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from bundle.networks.mae import load_mae
from bundle.networks.masking import num_masked_patches, random_masks, stratified_masks
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from torch import nn

__all__ = [
    "ConcatResidualMapsd",
    "ResidualMapd",
    "compute_residual_maps",
    "draw_residual_masks",
    "foreground_slice_indices",
    "residual_maps_reference",
]

MaeSource = nn.Module | str | os.PathLike | Callable[[], nn.Module]
MASKINGS = ("random", "stratified")


# --------------------------------------------------------------------------------------- helpers
def _source(value: Any, key: Hashable | None) -> str:
    """``key`` and file of an item, for messages."""
    where = f"key {key!r}" if key is not None else "image"
    if isinstance(value, MetaTensor) and value.meta.get("filename_or_obj"):
        return f"{where} ({value.meta['filename_or_obj']})"
    return where


def _check_mae(mae: Any) -> nn.Module:
    """``mae`` if it offers what the residual maps need (module docstring), else a ValueError."""
    if not isinstance(mae, nn.Module):
        raise ValueError(f"the MAE must be an nn.Module, got {type(mae).__name__}.")
    for name in ("img_size", "patch_size", "in_channels"):
        value = getattr(mae, name, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"the MAE {type(mae).__name__} needs a positive int attribute {name!r}, got {value!r}.")
    if not callable(getattr(mae, "reconstruct", None)):
        raise ValueError(f"the MAE {type(mae).__name__} has no reconstruct(x, mask=..., paste_visible=...) method.")
    return mae


def _module_device(module: nn.Module) -> torch.device:
    """Where the module's first parameter or buffer lives; the CPU for a stateless module."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _input_size(mae: nn.Module, mae_input_size: int | Sequence[int] | None) -> tuple[int, int]:
    """The ``(h, w)`` slices are resized to for the MAE; multiples of its patch size."""
    if mae_input_size is None:
        size = (mae.img_size, mae.img_size)
    elif isinstance(mae_input_size, int) and not isinstance(mae_input_size, bool):
        size = (mae_input_size, mae_input_size)
    else:
        size = tuple(int(s) for s in mae_input_size)  # type: ignore[union-attr]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"mae_input_size must be a positive int or (height, width), got {mae_input_size!r}.")
    p = mae.patch_size
    if size[0] % p or size[1] % p:
        raise ValueError(f"mae_input_size {size} is not divisible by the MAE patch size {p}.")
    return size  # type: ignore[return-value]


def _to_slices(image: torch.Tensor, slice_axis: int) -> tuple[torch.Tensor, int | None]:
    """``(C, H, W)`` -> ``(1, C, H, W)``; ``(C, X, Y, Z)`` -> ``(S, C, a, b)`` along ``slice_axis``."""
    if image.ndim == 3:
        return image.unsqueeze(0), None
    dim = 1 + slice_axis % 3
    return image.movedim(dim, 0), dim


def _from_slices(maps: torch.Tensor, dim: int | None) -> torch.Tensor:
    """``(R, S, a, b)`` -> ``(R, *spatial)``, the inverse of :func:`_to_slices` (channels -> ratios)."""
    return maps[:, 0] if dim is None else maps.movedim(1, dim)


def _as_image(image: Any, name: str, in_channels: int | None = None) -> torch.Tensor:
    """A validated float32 ``(C, H, W)`` or ``(C, X, Y, Z)`` torch tensor (plain, not a MetaTensor)."""
    if isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image))
    elif isinstance(image, torch.Tensor):
        tensor = image.as_tensor() if isinstance(image, MetaTensor) else image
    else:
        raise ValueError(f"{name}: expected a tensor or numpy array, got {type(image).__name__}.")
    if tensor.ndim not in (3, 4):
        raise ValueError(
            f"{name}: expected a channel-first 2D (C, H, W) or 3D (C, H, W, D) image, got shape {tuple(tensor.shape)}; "
            "add the channel with EnsureChannelFirstd."
        )
    if min(tensor.shape) < 1:
        raise ValueError(f"{name}: empty image of shape {tuple(tensor.shape)}.")
    if not (
        tensor.is_floating_point() or tensor.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        raise ValueError(f"{name}: unsupported image dtype {tensor.dtype}.")
    tensor = tensor.detach().to(torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name}: the image holds NaN or infinite values.")
    if in_channels is not None and tensor.shape[0] != in_channels:
        raise ValueError(f"{name}: the image has {tensor.shape[0]} channels, the MAE takes in_channels={in_channels}.")
    return tensor


def _check_slice_axis(slice_axis: int) -> int:
    if isinstance(slice_axis, bool) or not isinstance(slice_axis, int) or not -3 <= slice_axis <= 2:
        raise ValueError(f"slice_axis must be a spatial axis in -3 .. 2, got {slice_axis!r}.")
    return slice_axis


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    # antialias matters when shrinking to the MAE size (no effect when enlarging)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def foreground_slice_indices(slices: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """
    The slices that the residual maps reconstruct; the others get exact-zero maps.

    Args:
        slices: ``(S, ...)``, one slice per index of dim 0.
        threshold: a slice is foreground when its maximum is greater; ``None``: every slice.

    Returns:
        ``(S_fg,)`` int64 indices, on ``slices``' device.
    """
    if threshold is None:
        return torch.arange(slices.shape[0], device=slices.device)
    peak = slices.flatten(1).amax(dim=1)
    return torch.nonzero(peak > float(threshold)).flatten()


def _to_slice_space(
    pred: torch.Tensor, mask: torch.Tensor, slices: torch.Tensor, grid: tuple[int, int], paste_visible: bool
) -> torch.Tensor:
    """
    MAE output ``(n, C, h, w)`` -> reconstruction ``(n, C, a, b)`` on the slices' grid.

    With ``paste_visible`` the slices' own pixels replace the prediction where the patch mask
    ``(n, L)`` (``True`` = masked), upsampled to ``(a, b)`` by nearest neighbour, is visible. At the
    MAE's own size this is exactly the MAE's ``reconstruct(..., paste_visible=True)``.
    """
    size = (slices.shape[-2], slices.shape[-1])
    pred = _resize(pred.float(), size)
    if not paste_visible:
        return pred
    masked = mask.to(device=pred.device, dtype=torch.float32).reshape(-1, 1, grid[0], grid[1])
    masked = F.interpolate(masked, size=size, mode="nearest-exact") > 0.5
    return torch.where(masked, pred, slices)


class _EvalMode:
    """Context: the module in eval mode and without autograd, its previous mode restored afterwards."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.was_training = module.training
        # no_grad, not inference_mode: inference tensors could not be saved for backward when the
        # maps later feed a network that is being trained
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.no_grad.__enter__()
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)
        self.no_grad.__exit__(*exc)


AMP_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def _amp_dtype(amp_dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A validated autocast dtype (None: the device default, float16 on CUDA, bfloat16 elsewhere)."""
    if amp_dtype is None or amp_dtype in (torch.bfloat16, torch.float16):
        return amp_dtype  # type: ignore[return-value]
    if isinstance(amp_dtype, str) and amp_dtype.lower() in AMP_DTYPES:
        return AMP_DTYPES[amp_dtype.lower()]
    raise ValueError(
        f"amp_dtype must be torch.bfloat16, torch.float16, one of {sorted(AMP_DTYPES)} or None, got {amp_dtype!r}."
    )


def _autocast(device: torch.device, enabled: bool, dtype: torch.dtype | None = None) -> Any:
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


class _Prepared:
    """The slices of one image and everything both implementations share."""

    def __init__(
        self,
        mae: nn.Module,
        image: Any,
        masks: torch.Tensor,
        slice_axis: int,
        mae_input_size: int | Sequence[int] | None,
        clip_range: tuple[float, float] | None,
        foreground_threshold: float | None,
        device: torch.device | str | None,
        name: str,
        pad_to_square: bool = True,
    ) -> None:
        self.mae = _check_mae(mae)
        tensor = _as_image(image, name, mae.in_channels)
        self.size = _input_size(mae, mae_input_size)
        self.grid = (self.size[0] // mae.patch_size, self.size[1] // mae.patch_size)
        self.device = torch.device(device) if device is not None else _module_device(mae)
        slices, self.dim = _to_slices(tensor, _check_slice_axis(slice_axis))
        if clip_range is not None:
            slices = slices.clamp(float(clip_range[0]), float(clip_range[1]))
        # The MAE is pre-trained on slices zero-padded to a square before the resize
        # (ResizeSliced, configs/train_mae.json): the same geometry here keeps the anatomy's
        # aspect ratio the MAE learnt; the maps are cropped back to the slice in result().
        self.crop: tuple[slice, slice] | None = None
        if pad_to_square and slices.shape[-2] != slices.shape[-1]:
            h, w = slices.shape[-2:]
            side = max(h, w)
            top, left = (side - h) // 2, (side - w) // 2
            slices = F.pad(slices, (left, side - w - left, top, side - h - top))
            self.crop = (slice(top, top + h), slice(left, left + w))
        self.slices = slices.to(self.device)  # (S, C, a, b)
        num_slices, num_patches = slices.shape[0], self.grid[0] * self.grid[1]
        if (
            not isinstance(masks, torch.Tensor)
            or masks.ndim != 4
            or tuple(masks.shape[2:]) != (num_slices, num_patches)
        ):
            shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise ValueError(
                f"{name}: masks must be (num_ratios, num_passes, {num_slices} slices, {num_patches} patches) bool, "
                f"got {shape}."
            )
        # on the compute device once: the batches below index them there, no copy per batch
        self.masks = masks.to(device=self.device, dtype=torch.bool)
        self.keep = foreground_slice_indices(self.slices, foreground_threshold)
        self.maps = torch.zeros(masks.shape[0], num_slices, *slices.shape[2:], device=self.device)  # (R, S, a, b)

    def result(self, output_device: torch.device | str | None = "cpu") -> torch.Tensor:
        """``(R, *spatial)`` float32 on ``output_device`` (None: the compute device)."""
        maps = self.maps if self.crop is None else self.maps[..., self.crop[0], self.crop[1]]
        maps = _from_slices(maps.contiguous(), self.dim)
        return maps if output_device is None else maps.to(output_device)


# ------------------------------------------------------------------------------------- functions
def draw_residual_masks(
    num_patches: int,
    num_slices: int,
    mask_ratios: Sequence[float],
    num_passes: int,
    masking: str = "random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """
    The masks of all ratios, passes and slices of one image.

    Ratios are drawn in order from ``generator``; ``"random"``: independent masks
    (:func:`~bundle.networks.masking.random_masks`), ``"stratified"``: the K passes of a slice
    cover its patches evenly (:func:`~bundle.networks.masking.stratified_masks`).

    Returns:
        ``(num_ratios, num_passes, num_slices, num_patches)`` bool on the CPU, ``True`` = masked.
    """
    if masking not in MASKINGS:
        raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}.")
    out = []
    for ratio in mask_ratios:
        if masking == "stratified":
            out.append(stratified_masks(num_patches, ratio, num_passes, num_slices, generator=generator))
        else:
            flat = random_masks(num_patches, ratio, num_passes * num_slices, generator=generator)
            out.append(flat.reshape(num_passes, num_slices, num_patches))
    return torch.stack(out)


def compute_residual_maps(
    mae: nn.Module,
    image: torch.Tensor | np.ndarray,
    masks: torch.Tensor,
    slice_axis: int = -1,
    mae_input_size: int | Sequence[int] | None = None,
    batch_size: int = 256,
    paste_visible: bool = True,
    clip_range: tuple[float, float] | None = None,
    foreground_threshold: float | None = None,
    amp: bool = False,
    device: torch.device | str | None = None,
    name: str = "image",
    pad_to_square: bool = True,
    amp_dtype: torch.dtype | str | None = None,
    output_device: torch.device | str | None = "cpu",
) -> torch.Tensor:
    """
    Residual maps of one image, all (pass, slice) reconstructions of a ratio batched (module docstring).

    Args:
        mae: the masked autoencoder (module docstring for what it must offer).
        image: ``(C, H, W)`` or ``(C, X, Y, Z)``, finite, ``C`` = the MAE's ``in_channels``.
        masks: ``(R, K, S, L)`` bool from :func:`draw_residual_masks`: ratios, passes, slices
            (``S`` = 1 for a 2D image) and the patches of the MAE input grid.
        slice_axis: the spatial axis slices are taken along (3D images).
        mae_input_size: MAE input size (int or (h, w)); default the MAE's ``img_size``.
        batch_size: (pass, slice) pairs per MAE forward.
        paste_visible: keep the slice's pixels at visible patches (docs/method.md §5).
        clip_range: clip the slices to ``(low, high)`` first; None: no clipping.
        foreground_threshold: slices whose maximum is <= it are not reconstructed and get zero
            maps; None: every slice is reconstructed.
        amp: autocast the MAE forward (``amp_dtype``).
        device: where the MAE runs; default the MAE's device.
        name: the image's name in error messages.
        pad_to_square: zero-pad non-square slices to a square before resizing them to the MAE
            size (as the MAE pre-training does), crop the maps back afterwards.
        amp_dtype: autocast dtype, ``torch.bfloat16`` / ``"bf16"`` or ``torch.float16`` / ``"fp16"``;
            None: float16 on CUDA, bfloat16 elsewhere.
        output_device: where the maps are returned; None: where they were computed (a GPU
            pipeline keeps them there).

    Returns:
        ``(R, *spatial)`` float32 on ``output_device`` (default the CPU).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    dtype = _amp_dtype(amp_dtype)
    prep = _Prepared(
        mae, image, masks, slice_axis, mae_input_size, clip_range, foreground_threshold, device, name, pad_to_square
    )
    num_kept = int(prep.keep.numel())
    if num_kept == 0:
        return prep.result(output_device)
    slices = prep.slices[prep.keep]  # (Sk, C, a, b)
    resized = _resize(slices, prep.size)
    num_passes = prep.masks.shape[1]
    with _EvalMode(prep.mae):
        for r in range(prep.masks.shape[0]):
            # item i = pass (i // Sk) of kept slice (i % Sk)
            flat = prep.masks[r][:, prep.keep].reshape(num_passes * num_kept, -1)
            total = torch.zeros_like(slices)
            for start in range(0, flat.shape[0], batch_size):
                stop = min(start + batch_size, flat.shape[0])
                items = torch.arange(start, stop, device=prep.device)
                which = items % num_kept
                batch_mask = flat[start:stop]
                with _autocast(prep.device, amp, dtype):
                    pred = prep.mae.reconstruct(resized[which], mask=batch_mask, paste_visible=False)
                delta = _to_slice_space(pred, batch_mask, slices[which], prep.grid, paste_visible) - slices[which]
                # add pass by pass (each a run of distinct slices): a deterministic summation order,
                # the same as one pass at a time
                for k in range(start // num_kept, (stop - 1) // num_kept + 1):
                    lo, hi = max(start, k * num_kept), min(stop, (k + 1) * num_kept)
                    total[lo - k * num_kept : hi - k * num_kept] += delta[lo - start : hi - start]
            prep.maps[r, prep.keep] = (total / num_passes).abs().mean(dim=1)
    return prep.result(output_device)


def residual_maps_reference(
    mae: nn.Module,
    image: torch.Tensor | np.ndarray,
    masks: torch.Tensor,
    slice_axis: int = -1,
    mae_input_size: int | Sequence[int] | None = None,
    paste_visible: bool = True,
    clip_range: tuple[float, float] | None = None,
    foreground_threshold: float | None = None,
    device: torch.device | str | None = None,
    name: str = "image",
    pad_to_square: bool = True,
    output_device: torch.device | str | None = "cpu",
) -> torch.Tensor:
    """
    The same maps as :func:`compute_residual_maps`, one slice and one pass per MAE forward.

    The straightforward reading of the paper, kept as the reference for tests and the baseline
    of benchmarks; arguments as :func:`compute_residual_maps` (float32, no autocast). Background
    slices are skipped by the same ``foreground_threshold`` rule, so both agree.

    Returns:
        ``(R, *spatial)`` float32 on ``output_device`` (default the CPU).
    """
    prep = _Prepared(
        mae, image, masks, slice_axis, mae_input_size, clip_range, foreground_threshold, device, name, pad_to_square
    )
    num_passes = prep.masks.shape[1]
    with _EvalMode(prep.mae):
        for r in range(prep.masks.shape[0]):
            for s in prep.keep.tolist():
                one = prep.slices[s : s + 1]
                total = torch.zeros_like(one)
                for k in range(num_passes):
                    mask = prep.masks[r, k, s : s + 1].to(prep.device)
                    pred = prep.mae.reconstruct(_resize(one, prep.size), mask=mask, paste_visible=False)
                    total += _to_slice_space(pred, mask, one, prep.grid, paste_visible) - one
                prep.maps[r, s] = (total / num_passes).abs().mean(dim=1)[0]
    return prep.result(output_device)


def _output_keys(keys: Sequence[Hashable], output_key: str | Sequence[str] | None, name: str) -> list[Hashable]:
    """One output key per input key (``None``: write back to the input key)."""
    if output_key is None:
        return list(keys)
    out = [output_key] if isinstance(output_key, str) else list(output_key)
    if len(out) != len(keys):
        raise ValueError(f"{name}: give one output key per key; keys {list(keys)}, output_key {output_key!r}.")
    return out


def _mask_seed(seed: int, key: Hashable, image: Any, shape: Sequence[int]) -> int:
    """A 63-bit generator seed from ``(seed, key, file base name, shape)`` (stable across processes)."""
    filename = ""
    if isinstance(image, MetaTensor):
        filename = os.path.basename(str(image.meta.get("filename_or_obj", "") or ""))
    text = f"{seed}|{key}|{filename}|{tuple(int(s) for s in shape)}"
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# ------------------------------------------------------------------------------------ transforms
class ResidualMapd(MapTransform):
    """
    Dictionary transform adding the MAE multi-ratio residual maps of an image (module docstring).

    The output under ``output_key`` has one channel per mask ratio and the input's spatial size,
    float32, in the input's container type: a MetaTensor input gives a MetaTensor with a copy of
    its meta data (affine, file name, applied operations).
    """

    def __init__(
        self,
        keys: KeysCollection,
        mae: MaeSource,
        mask_ratios: Sequence[float] = (0.5, 0.75),
        num_passes: int = 5,
        masking: str = "random",
        slice_axis: int = -1,
        mae_input_size: int | Sequence[int] | None = None,
        batch_size: int = 256,
        device: torch.device | str | None = None,
        seed: int | None = 0,
        foreground_threshold: float | None = 0.0,
        output_key: str | Sequence[str] = "residual_maps",
        paste_visible: bool = True,
        clip_range: tuple[float, float] | None = None,
        amp: bool = False,
        pad_to_square: bool = True,
        allow_missing_keys: bool = False,
        amp_dtype: torch.dtype | str | None = None,
    ) -> None:
        """
        Args:
            keys: keys of the images, channel-first 3D ``(C, H, W, D)`` or 2D ``(C, H, W)``.
            mae: the MAE: a module, the path of a checkpoint written by
                :func:`bundle.networks.save_mae` (loaded on first use), or a callable returning the
                module (called on first use; e.g. ``functools.partial(load_mae, path, preset="large")``).
            mask_ratios: one output channel per ratio (paper: 0.50 and 0.75).
            num_passes: reconstructions averaged per ratio, K (paper: 5).
            masking: ``"random"`` (independent masks, the paper) or ``"stratified"`` (the K masks of
                a slice cover its patches evenly, see :func:`bundle.networks.stratified_masks`).
            slice_axis: spatial axis (-3 .. 2) of the 2D slices of 3D images; ignored for 2D images.
            mae_input_size: slices are resized to it (bilinear) for the MAE and the reconstructions
                back; int or (h, w), multiples of the patch size; default the MAE's ``img_size``.
            batch_size: (pass, slice) pairs per MAE forward.
            device: where the MAE runs (it is moved there); default the MAE's device.
            seed: seed of the masks (see the module docstring), None for the global RNG (then the
                maps are not reproducible and must not be cached).
            foreground_threshold: slices whose maximum (after ``clip_range``) is <= it are not
                reconstructed and get exact-zero maps: background slices cost nothing. The default
                0 skips empty slices (zero padding, outside a skull-stripped brain); for images
                scaled to [0, 1] with a noisy background (the brain configs) a threshold above the
                noise, e.g. 0.25, also skips the slices above and below the head. None: no skipping.
            output_key: key of the maps, one per key.
            paste_visible: reconstruction = original pixels at visible patches (docs/method.md §5);
                False: the decoder output everywhere.
            clip_range: ``(low, high)`` the images are clipped to before the MAE and for the
                residual (the range the MAE was trained on); None: no clipping.
            amp: autocast the MAE (``amp_dtype``).
            pad_to_square: zero-pad non-square slices to a square before the resize to the MAE
                size, as the MAE pre-training does (``ResizeSliced``); the maps are cropped back.
            allow_missing_keys: don't raise for missing keys.
            amp_dtype: autocast dtype (``torch.bfloat16``/``"bf16"``, ``torch.float16``/``"fp16"``);
                None: float16 on CUDA, bfloat16 elsewhere.

        The maps are returned on the image's device: an image already on the GPU keeps its maps
        there (no round trip through the host).
        """
        super().__init__(keys, allow_missing_keys)
        if not (isinstance(mae, (nn.Module, str, os.PathLike)) or callable(mae)):
            raise ValueError(f"mae must be an nn.Module, a checkpoint path or a callable, got {type(mae).__name__}.")
        ratios = tuple(float(r) for r in (mask_ratios if isinstance(mask_ratios, Sequence) else [mask_ratios]))
        if not ratios:
            raise ValueError("mask_ratios must hold at least one ratio.")
        for ratio in ratios:
            num_masked_patches(1, ratio)  # raises for ratios outside [0, 1]
        if isinstance(num_passes, bool) or not isinstance(num_passes, int) or num_passes < 1:
            raise ValueError(f"num_passes must be a positive int, got {num_passes!r}.")
        if masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}.")
        if foreground_threshold is not None and not math.isfinite(float(foreground_threshold)):
            raise ValueError(f"foreground_threshold must be a finite number or None, got {foreground_threshold!r}.")
        if clip_range is not None and (len(clip_range) != 2 or not float(clip_range[0]) < float(clip_range[1])):
            raise ValueError(f"clip_range must be (low, high) with low < high, got {clip_range!r}.")
        self.mae_source = mae
        self.mask_ratios = ratios
        self.num_passes = num_passes
        self.masking = masking
        self.slice_axis = _check_slice_axis(slice_axis)
        self.mae_input_size = mae_input_size
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else None
        self.seed = seed
        self.foreground_threshold = foreground_threshold
        self.output_keys = _output_keys(self.keys, output_key, type(self).__name__)
        self.paste_visible = bool(paste_visible)
        self.clip_range = None if clip_range is None else (float(clip_range[0]), float(clip_range[1]))
        self.amp = bool(amp)
        self.amp_dtype = _amp_dtype(amp_dtype)
        self.pad_to_square = bool(pad_to_square)
        self._mae: nn.Module | None = mae if isinstance(mae, nn.Module) else None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if not isinstance(self.mae_source, nn.Module):
            state["_mae"] = None  # reloaded lazily from the path/callable
        return state

    @property
    def mae(self) -> nn.Module:
        """The MAE (loaded on first access when given as a path or callable), on ``device``."""
        if self._mae is None:
            source = self.mae_source
            if isinstance(source, (str, os.PathLike)):
                self._mae = load_mae(source, map_location=self.device or "cpu")
            else:
                self._mae = source()  # type: ignore[operator]
        mae = _check_mae(self._mae)
        if self.device is not None and _module_device(mae) != self.device:
            mae.to(self.device)
        return mae

    def _generator(self, key: Hashable, image: Any, shape: Sequence[int]) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator().manual_seed(_mask_seed(self.seed, key, image, shape))

    def draw_masks(self, image: Any, key: Hashable = "image") -> torch.Tensor:
        """
        The patch masks this transform draws for ``image`` under ``key`` (the same on every call).

        Lets a caller reproduce the transform's maps with :func:`compute_residual_maps` or
        :func:`residual_maps_reference` (e.g. a benchmark's equality check).

        Returns:
            ``(num_ratios, num_passes, num_slices, num_patches)`` bool on the CPU.
        """
        mae = self.mae
        tensor = _as_image(image, f"{type(self).__name__}: {_source(image, key)}", mae.in_channels)
        return self._draw_masks(mae, key, image, tensor)

    def _draw_masks(self, mae: nn.Module, key: Hashable, image: Any, tensor: torch.Tensor) -> torch.Tensor:
        size = _input_size(mae, self.mae_input_size)
        num_patches = (size[0] // mae.patch_size) * (size[1] // mae.patch_size)
        num_slices = 1 if tensor.ndim == 3 else tensor.shape[1 + self.slice_axis % 3]
        generator = self._generator(key, image, tensor.shape)
        return draw_residual_masks(num_patches, num_slices, self.mask_ratios, self.num_passes, self.masking, generator)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            image = d[key]
            name = f"{type(self).__name__}: {_source(image, key)}"
            mae = self.mae
            tensor = _as_image(image, name, mae.in_channels)
            size = _input_size(mae, self.mae_input_size)
            masks = self._draw_masks(mae, key, image, tensor)
            maps = compute_residual_maps(
                mae,
                tensor,
                masks,
                slice_axis=self.slice_axis,
                mae_input_size=size,
                batch_size=self.batch_size,
                paste_visible=self.paste_visible,
                clip_range=self.clip_range,
                foreground_threshold=self.foreground_threshold,
                amp=self.amp,
                device=self.device,
                name=name,
                pad_to_square=self.pad_to_square,
                amp_dtype=self.amp_dtype,
                output_device=tensor.device,
            )
            d[out_key] = _like(maps, image)
        return d


def _like(values: torch.Tensor, image: Any) -> Any:
    """float32 ``values`` in ``image``'s container (MetaTensor with a copy of its meta, tensor, array)."""
    if isinstance(image, np.ndarray):
        return values.numpy().astype(np.float32, copy=False)
    return convert_to_dst_type(values, image, dtype=torch.float32)[0]


class ConcatResidualMapsd(MapTransform):
    """
    Dictionary transform concatenating an image and its residual maps along channels: ``[image, RM_0.50, RM_0.75]``.

    The result is float32 in the image's container type (a MetaTensor keeps the image's meta).
    """

    def __init__(
        self,
        keys: KeysCollection = ("image",),
        residual_key: str = "residual_maps",
        output_key: str | Sequence[str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        """
        Args:
            keys: the images, ``(C, *spatial)``.
            residual_key: the maps, ``(R, *spatial)`` (the output of :class:`ResidualMapd`).
            output_key: where the ``(C + R, *spatial)`` result goes, one per key; None: replace the image.
            allow_missing_keys: don't raise for missing keys.
        """
        super().__init__(keys, allow_missing_keys)
        self.residual_key = residual_key
        self.output_keys = _output_keys(self.keys, output_key, type(self).__name__)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            if self.residual_key not in d:
                raise KeyError(
                    f"{type(self).__name__}: residual maps key {self.residual_key!r} is missing (run ResidualMapd first)."
                )
            image, maps = d[key], d[self.residual_key]
            name = f"{type(self).__name__}: {_source(image, key)}"
            img_t = _as_image(image, name)
            maps_t = _as_image(maps, f"{type(self).__name__}: key {self.residual_key!r}")
            if img_t.shape[1:] != maps_t.shape[1:]:
                raise ValueError(
                    f"{name}: image spatial shape {tuple(img_t.shape[1:])} differs from the residual maps' "
                    f"{tuple(maps_t.shape[1:])}."
                )
            d[out_key] = _like(torch.cat([img_t, maps_t.to(img_t.device)], dim=0), image)
        return d
