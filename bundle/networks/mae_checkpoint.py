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
"""Loading the public MAE checkpoints (He et al.) into :class:`bundle.networks.MaskedAutoencoderViT`.

The paper starts its MAE from public ViT-Large weights (docs/method.md §5). The files of the official
release come in two kinds, both RGB, 224 px, patch 16, with the weights under ``"model"``:

- ``mae_pretrain_vit_{base,large,huge}.pth``: the encoder only (for fine-tuning). Loading one
  leaves the decoder at its random initialisation: the MAE must then be trained (on lesion-free
  slices) before its reconstructions mean anything.
- ``mae_visualize_vit_large.pth`` / ``mae_visualize_vit_large_ganloss.pth``: encoder and decoder,
  trained without ``norm_pix_loss`` (they predict pixels), the latter with an extra GAN loss as
  in the paper.

Nothing is downloaded: the user gives the path of a file they have.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .mae import MaskedAutoencoderViT, sincos_pos_embed_2d

__all__ = ["load_official_mae_checkpoint"]

_BLOCK_INDEX = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.")
# tolerance for "this stored position embedding is the fixed sin-cos one" (float32 storage of the
# official float64 numpy values)
_SINCOS_ATOL = 1e-4


def _read(path_or_state_dict: str | os.PathLike | Mapping[str, Any], weights_only: bool) -> tuple[dict, str]:
    """The flat state dict and a name for messages."""
    if isinstance(path_or_state_dict, Mapping):
        checkpoint, source = path_or_state_dict, "<state dict>"
    else:
        source = os.fspath(path_or_state_dict)
        if not os.path.isfile(source):
            raise FileNotFoundError(
                f"MAE checkpoint {source} does not exist (nothing is downloaded; give a local file)."
            )
        try:
            checkpoint = torch.load(source, map_location="cpu", weights_only=weights_only)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{source} holds objects other than tensors and cannot be read with weights_only=True; if you trust "
                "the file, pass weights_only=False."
            ) from err
        if not isinstance(checkpoint, Mapping):
            raise ValueError(f"{source}: expected a dict checkpoint, got {type(checkpoint).__name__}.")
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: the 'model' entry is a {type(state).__name__}, not a state dict.")
    # checkpoints written from DistributedDataParallel carry a "module." prefix
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not isinstance(state.get("patch_embed.proj.weight"), torch.Tensor):
        raise ValueError(f"{source}: no 'patch_embed.proj.weight'; this is not an MAE/ViT checkpoint.")
    return state, source


def _depth(state: Mapping[str, Any], prefix: str) -> int:
    indices = {int(m.group(2)) for k in state if (m := _BLOCK_INDEX.match(k)) and m.group(1) == prefix}
    return max(indices) + 1 if indices else 0


def _shape_dim(state: Mapping[str, Any], key: str, dim: int) -> int | None:
    value = state.get(key)
    return int(value.shape[dim]) if isinstance(value, torch.Tensor) else None


def _architecture_mismatches(model: MaskedAutoencoderViT, state: Mapping[str, Any], has_decoder: bool) -> list[str]:
    """Human-readable differences between the checkpoint's and the model's architecture."""
    cfg = model.config
    weight = state["patch_embed.proj.weight"]
    found = {
        "embed_dim": int(weight.shape[0]),
        "patch_size": int(weight.shape[-1]),
        "depth": _depth(state, "blocks"),
        "MLP width": _shape_dim(state, "blocks.0.mlp.fc1.weight", 0),
    }
    expected = {
        "embed_dim": cfg["embed_dim"],
        "patch_size": cfg["patch_size"],
        "depth": cfg["depth"],
        "MLP width": model.blocks[0].mlp.fc1.out_features,
    }
    if has_decoder:
        found.update(
            {
                "decoder_embed_dim": _shape_dim(state, "decoder_embed.weight", 0),
                "decoder_depth": _depth(state, "decoder_blocks"),
                "decoder MLP width": _shape_dim(state, "decoder_blocks.0.mlp.fc1.weight", 0),
            }
        )
        expected.update(
            {
                "decoder_embed_dim": cfg["decoder_embed_dim"],
                "decoder_depth": cfg["decoder_depth"],
                "decoder MLP width": model.decoder_blocks[0].mlp.fc1.out_features,
            }
        )
    return [f"checkpoint has {k} {found[k]}, model has {expected[k]}" for k in found if found[k] != expected[k]]


def _channel_stats(values: Sequence[float] | None, channels: int, name: str, default: float) -> torch.Tensor:
    if values is None:
        return torch.full((channels,), default, dtype=torch.float64)
    stats = torch.as_tensor(values, dtype=torch.float64).flatten()
    if stats.numel() != channels:
        raise ValueError(f"{name} needs {channels} values (one per checkpoint channel), got {stats.numel()}.")
    return stats


def _convert_patch_embed(
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB patch projection ``(D, 3, p, p)`` -> grey ``(D, 1, p, p)`` (see :func:`load_official_mae_checkpoint`)."""
    w = weight.double() / std.view(1, -1, 1, 1)
    b = bias.double() - (w * mean.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    return w.sum(dim=1, keepdim=True).to(weight.dtype), b.to(bias.dtype)


def _convert_decoder_pred(
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB pixel head ``(p*p*3, D)`` -> grey ``(p*p, D)`` (see :func:`load_official_mae_checkpoint`)."""
    channels = mean.numel()
    w = weight.double().reshape(-1, channels, weight.shape[1]) * std.view(1, -1, 1)
    b = bias.double().reshape(-1, channels) * std.view(1, -1) + mean.view(1, -1)
    return w.mean(dim=1).to(weight.dtype), b.mean(dim=1).to(bias.dtype)


def _convert_pos_embed(stored: torch.Tensor, target: torch.Tensor, key: str, source: str) -> torch.Tensor:
    """The checkpoint's position embedding ``(1, 1 + L', D)`` on the model's grid ``target`` ``(1, 1 + L, D)``."""
    if stored.ndim != 3 or stored.shape[-1] != target.shape[-1]:
        raise ValueError(f"{source}: {key} has shape {tuple(stored.shape)}, the model's is {tuple(target.shape)}.")
    num = stored.shape[1] - 1
    side = math.isqrt(num)
    if side * side != num:
        raise ValueError(f"{source}: {key} holds {num} patch positions, not a square grid.")
    stored = stored.float()
    if torch.allclose(stored, sincos_pos_embed_2d((side, side), stored.shape[-1]), atol=_SINCOS_ATOL):
        # the fixed embedding of the official MAE: the model's own buffer is the same function on
        # its grid, exact at any grid size
        return target.detach().clone()
    if stored.shape == target.shape:
        return stored
    # a learned embedding on another grid: resample its patch part (the class slot is kept)
    grid = math.isqrt(target.shape[1] - 1)  # the model's grid is square (img_size x img_size)
    patch = stored[:, 1:, :].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return torch.cat([stored[:, :1, :], patch], dim=1)


def load_official_mae_checkpoint(
    model: MaskedAutoencoderViT,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    strict: bool = True,
    channel_mean: Sequence[float] | None = None,
    channel_std: Sequence[float] | None = None,
    weights_only: bool = True,
) -> MaskedAutoencoderViT:
    """
    Load an official MAE checkpoint (``mae_pretrain_vit_*.pth``, ``mae_visualize_vit_large*.pth``) into ``model``.

    The state dict may sit under ``"model"`` (as in the released files) or at the top level; a
    ``"module."`` prefix is dropped. The architecture must match (embedding widths, depths, MLP
    widths, patch size; the number of heads cannot be read from the weights and is not checked):
    otherwise a ``ValueError`` lists every difference, e.g. ``checkpoint has depth 24, model has 12``,
    and names the file. Build the model with ``mae_preset("large")`` for the ViT-L files.

    Encoder-only files (no ``decoder_*`` key, the ``mae_pretrain_*`` kind) load the encoder and
    warn that the decoder keeps its random initialisation.

    RGB checkpoint into a 1-channel model. The patch projection is linear in the input, so a grey
    image ``g`` shown to the RGB model as ``(g, g, g)`` gives ``sum_c W_c * g``: the 1-channel
    weight is the sum of the RGB weights. The pixel head predicts ``p * p`` RGB triplets (vector
    order row, column, channel); the grey prediction is the mean of each triplet, i.e. the mean of
    the three output rows of ``decoder_pred`` per pixel (weights and bias). The official models
    were trained on ImageNet-normalised inputs ``(x_c - mean_c) / std_c``; pass ``channel_mean``
    and ``channel_std`` (e.g. ``(0.485, 0.456, 0.406)``, ``(0.229, 0.224, 0.225)``) to fold that
    normalisation into both layers, so that the 1-channel model takes and predicts intensities in
    [0, 1]: then ``W' = sum_c W_c / std_c``, ``b' = b - sum_c (mean_c / std_c) sum(W_c)`` and the
    head's channel ``c`` rows are scaled by ``std_c`` and shifted by ``mean_c`` before averaging.
    Without them the model works in the checkpoint's normalised intensity space.

    Position embeddings: a stored fixed sin-cos embedding (checked numerically) is replaced by the
    model's own, which is the same function on the model's grid (exact for any image size); a
    learned one is copied, or bicubically resampled when the grids differ.

    Args:
        model: the MAE to load into (modified in place).
        path_or_state_dict: the ``.pth`` file or an already loaded checkpoint dict.
        strict: refuse checkpoint keys the model does not have and model encoder keys the file
            lacks; when False they are skipped (with a warning).
        channel_mean: per-channel input mean of the checkpoint, to fold in (RGB -> grey only).
        channel_std: per-channel input std of the checkpoint, to fold in (RGB -> grey only).
        weights_only: passed to ``torch.load``; set False only for trusted files holding pickled
            objects beyond tensors.

    Returns:
        ``model``, with the loaded weights.
    """
    if not isinstance(model, MaskedAutoencoderViT):
        raise ValueError(f"model must be a MaskedAutoencoderViT, got {type(model).__name__}.")
    state, source = _read(path_or_state_dict, weights_only)
    has_decoder = any(k.startswith("decoder_") for k in state)
    mismatches = _architecture_mismatches(model, state, has_decoder)
    if mismatches:
        raise ValueError(f"{source} does not fit the model: " + "; ".join(mismatches) + ".")

    own = model.state_dict()
    ckpt_channels = int(state["patch_embed.proj.weight"].shape[1])
    if ckpt_channels != model.in_channels and not (ckpt_channels == 3 and model.in_channels == 1):
        raise ValueError(
            f"{source}: checkpoint has {ckpt_channels} input channels, model has {model.in_channels}; only equal "
            "counts and RGB -> 1 channel are supported."
        )
    convert_rgb = ckpt_channels != model.in_channels
    if not convert_rgb and (channel_mean is not None or channel_std is not None):
        raise ValueError("channel_mean/channel_std are only used for RGB checkpoints loaded into a 1-channel model.")
    mean = _channel_stats(channel_mean, ckpt_channels, "channel_mean", 0.0)
    std = _channel_stats(channel_std, ckpt_channels, "channel_std", 1.0)
    if bool((std <= 0).any()):
        raise ValueError(f"channel_std must be positive, got {std.tolist()}.")

    loaded = dict(state)
    if convert_rgb:
        loaded["patch_embed.proj.weight"], loaded["patch_embed.proj.bias"] = _convert_patch_embed(
            state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], mean, std
        )
        if has_decoder and "decoder_pred.weight" in state:
            loaded["decoder_pred.weight"], loaded["decoder_pred.bias"] = _convert_decoder_pred(
                state["decoder_pred.weight"], state["decoder_pred.bias"], mean, std
            )
    for key in ("pos_embed", "decoder_pos_embed"):
        if key in state:
            loaded[key] = _convert_pos_embed(state[key], own[key], key, source)

    unexpected = sorted(k for k in loaded if k not in own)
    expected = [k for k in own if has_decoder or not (k.startswith("decoder_") or k == "mask_token")]
    missing = sorted(k for k in expected if k not in loaded)
    if (unexpected or missing) and strict:
        raise ValueError(
            f"{source} does not fit the model: missing keys {missing}, unexpected keys {unexpected} "
            "(strict=False skips them)."
        )
    if unexpected or missing:
        warnings.warn(f"{source}: skipped unexpected keys {unexpected}; kept the model's values for {missing}.")
    wrong_shape = [
        f"{k}: checkpoint {tuple(loaded[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in loaded and tuple(loaded[k].shape) != tuple(own[k].shape)
    ]
    if wrong_shape:
        raise ValueError(f"{source} does not fit the model: " + "; ".join(wrong_shape) + ".")

    merged = {k: (loaded[k].to(own[k].dtype) if k in loaded else own[k]) for k in own}
    model.load_state_dict(merged, strict=True)
    if not has_decoder:
        warnings.warn(
            f"{source} holds only the MAE encoder (an mae_pretrain_* file): the decoder (decoder_*, mask_token) "
            "keeps its random initialisation; train the MAE before using its reconstructions.",
            stacklevel=2,
        )
    return model
