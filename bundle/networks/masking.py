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
"""Patch masks for the masked autoencoder (MAE) and the GRCSF residual maps (paper Sec. 3.3.1).

A mask is a boolean tensor over the ``L`` patches of an image in row-major patch order
(the order of :meth:`bundle.networks.MaskedAutoencoderViT.patchify`); ``True`` = masked
(hidden from the encoder, predicted by the decoder). Every mask of one ratio hides exactly
:func:`num_masked_patches` ``= round(L * ratio)`` patches, which is what lets the MAE encoder
process a batch of masks as one dense tensor.

- :func:`random_masks`: independent uniformly random masks (the MAE training masks and the
  paper's K passes).
- :func:`stratified_masks`: K masks of one image drawn jointly so that every patch is masked
  as evenly as possible over the K passes; each pass on its own is still a uniformly random
  mask. With K = 5 random masks at ratio 0.5 some patches stay visible in all five passes
  (probability 1/32 per patch), i.e. they never get a reconstruction; stratification removes
  that source of variance of the averaged reconstruction.

Masks are drawn on the CPU from an optional ``torch.Generator`` (so that the same generator
state gives the same masks on every device) and moved to ``device`` afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_mask_ratios", "num_masked_patches", "random_masks", "ratio_tag", "stratified_masks"]


def num_masked_patches(num_patches: int, mask_ratio: float) -> int:
    """Number of masked patches of a mask with ratio ``mask_ratio``: ``round(num_patches * mask_ratio)``.

    Raises:
        ValueError: ``num_patches`` < 1 or ``mask_ratio`` outside [0, 1].
    """
    if isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 1:
        raise ValueError(f"num_patches must be a positive int, got {num_patches!r}.")
    ratio = float(mask_ratio)
    if not 0.0 <= ratio <= 1.0:  # also rejects NaN
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio!r}.")
    return round(num_patches * ratio)


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def _random_permutations(batch: int, num_patches: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(batch, num_patches)`` int64: one uniformly random permutation of the patch indices per row."""
    # argsort of i.i.d. uniform noise is a uniform permutation (ties have probability ~0) and,
    # unlike torch.randperm, draws all rows in one call.
    noise = torch.rand(batch, num_patches, generator=generator, device="cpu")
    return noise.argsort(dim=1)


def random_masks(
    num_patches: int,
    mask_ratio: float,
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """
    Independent uniformly random patch masks.

    Args:
        num_patches: ``L``, the number of patches of one image.
        mask_ratio: fraction of masked patches in [0, 1]; each row masks exactly
            ``round(L * mask_ratio)`` patches.
        batch: number of masks ``B``.
        generator: a CPU ``torch.Generator`` for reproducible masks; the global RNG if None.
        device: device of the returned tensor (default CPU).

    Returns:
        ``(B, L)`` bool, ``True`` = masked.
    """
    num_mask = num_masked_patches(num_patches, mask_ratio)
    batch = _check_count("batch", batch)
    order = _random_permutations(batch, num_patches, generator)
    masks = torch.zeros(batch, num_patches, dtype=torch.bool)
    masks.scatter_(1, order[:, :num_mask], True)
    return masks.to(device) if device is not None else masks


def stratified_masks(
    num_patches: int,
    mask_ratio: float,
    num_passes: int,
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """
    ``num_passes`` masks per image that together mask every patch as evenly as possible.

    For every image (row of the batch) a random permutation ``perm`` of the ``L`` patches is
    drawn; pass ``k`` masks ``perm[(k * n + j) % L]`` for ``j = 0 .. n - 1`` with
    ``n = round(L * mask_ratio)``, i.e. the passes take consecutive, cyclically wrapping
    windows of the permutation. Hence

    - every pass masks exactly ``n`` distinct patches and, on its own, is a uniformly random
      mask (a window of a uniform permutation);
    - over the K passes the ``K * n`` masked slots wrap around the permutation, so every patch is
      masked ``floor(K n / L)`` or ``ceil(K n / L)`` times: counts differ by at most 1;
    - which patches get the extra count is random per image.

    Args:
        num_patches: ``L``, the number of patches of one image.
        mask_ratio: fraction of masked patches per pass, in [0, 1].
        num_passes: ``K``, masks per image.
        batch: number of images ``B``.
        generator: a CPU ``torch.Generator`` for reproducible masks; the global RNG if None.
        device: device of the returned tensor (default CPU).

    Returns:
        ``(K, B, L)`` bool, ``True`` = masked.
    """
    num_mask = num_masked_patches(num_patches, mask_ratio)
    num_passes = _check_count("num_passes", num_passes)
    batch = _check_count("batch", batch)
    perm = _random_permutations(batch, num_patches, generator)  # (B, L)
    slots = torch.arange(num_passes)[:, None] * num_mask + torch.arange(num_mask)[None, :]  # (K, n)
    chosen = perm[:, slots % num_patches]  # (B, K, n) patch indices masked by each pass
    masks = torch.zeros(batch, num_passes, num_patches, dtype=torch.bool)
    masks.scatter_(2, chosen, True)
    masks = masks.transpose(0, 1).contiguous()
    return masks.to(device) if device is not None else masks


def ratio_tag(mask_ratio: float) -> str:
    """``0.5 -> "r050"``: the mask ratio in whole percent, for metric and file names."""
    return f"r{round(float(mask_ratio) * 100):03d}"


def check_mask_ratios(mask_ratios: Sequence[float]) -> tuple[float, ...]:
    """The mask ratios as floats, each in (0, 1); at least one."""
    ratios = tuple(float(r) for r in mask_ratios)
    if not ratios:
        raise ValueError("mask_ratios is empty: give at least one mask ratio.")
    for r in ratios:
        if not 0.0 < r < 1.0:
            raise ValueError(f"mask ratios must be in (0, 1), got {r}.")
    return ratios
