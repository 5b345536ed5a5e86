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
"""The 2D ViT masked autoencoder (MAE, He et al. 2022) whose reconstructions give the GRCSF residual maps.

GRCSF (paper Sec. 3.3.1, docs/method.md §5) reconstructs every slice K times per mask ratio with an
MAE trained on lesion-free slices, starting from the public MAE weights. That asks of the model:

1. the mask ratio is chosen per call (0.50 and 0.75 from one model), and explicit masks can be
   passed (the same masks for a batched and a one-at-a-time computation, stratified masks);
2. the public checkpoints (``mae_pretrain_vit_*.pth``, ``mae_visualize_vit_large*.pth``) load
   with their key names: ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
   ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``, ``decoder_embed``,
   ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks.N...``, ``decoder_norm``,
   ``decoder_pred``; the loader is :func:`bundle.networks.load_official_mae_checkpoint`.

Why not :class:`monai.networks.nets.MaskedAutoEncoderViT`: its masking draws a fixed-count mask
from the global RNG inside ``forward`` (``torch.multinomial``, no generator, no way to pass a
mask), its encoder/decoder layout does not follow the official one (the class token gets no
position slot, the final norms live inside ``nn.Sequential`` blocks) and its parameter names
(``patch_embedding.patch_embeddings``, ``attn.out_proj``, ``mlp.linear1``, ``mask_tokens``, ...)
differ from the checkpoints' throughout, so a subclass would have to replace ``forward``, the
masking and every submodule, i.e. everything. The model is therefore written here, with the
official layout; the transformer block uses :func:`torch.nn.functional.scaled_dot_product_attention`.

Position embeddings are the fixed 2D sin-cos embeddings of the official MAE (stored as buffers,
so they are in the ``state_dict`` under the official names but never trained). Because they are
fixed, the model accepts any input whose height and width are multiples of the patch size: other
grids get their sin-cos embeddings computed on the fly (``img_size`` is the size the model is
built and trained for; the residual-map transform resizes slices to it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from bundle.utils.errors import CheckpointError
from bundle.utils.flags import as_flag
from torch import nn

from .checkpoint import checkpoint_kind, read_checkpoint
from .masking import random_masks

__all__ = [
    "MAE_PRESETS",
    "MAEArchitecture",
    "MaskedAutoencoderViT",
    "load_mae",
    "mae_preset",
    "pixel_mask",
    "reconstruction_from_prediction",
    "save_mae",
    "sincos_pos_embed_2d",
    "unwrap_parallel",
]

# Constructor arguments of the named presets (copied by mae_preset, never mutated).
MAE_PRESETS: dict[str, dict[str, Any]] = {
    # unit tests and CPU demos: 8 x 8 patches of 8 px, ~0.2 M parameters
    "tiny": {
        "img_size": 64,
        "patch_size": 8,
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 4,
        "decoder_embed_dim": 64,
        "decoder_depth": 1,
        "decoder_num_heads": 4,
    },
    # ViT-B/16 encoder with the official 512-wide, 8-block decoder (mae_pretrain_vit_base)
    "base": {
        "img_size": 224,
        "patch_size": 16,
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "decoder_embed_dim": 512,
        "decoder_depth": 8,
        "decoder_num_heads": 16,
    },
    # ViT-L/16, the paper's model (mae_pretrain_vit_large, mae_visualize_vit_large[_ganloss])
    "large": {
        "img_size": 224,
        "patch_size": 16,
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "decoder_embed_dim": 512,
        "decoder_depth": 8,
        "decoder_num_heads": 16,
    },
}

# LayerNorm epsilon of the official MAE (partial(nn.LayerNorm, eps=1e-6)).
_LN_EPS = 1e-6


def sincos_pos_embed_2d(grid_size: tuple[int, int], embed_dim: int, cls_token: bool = True) -> torch.Tensor:
    """
    The fixed 2D sin-cos position embedding of the official MAE.

    The first half of the channels encodes the patch column, the second half the patch row;
    each half is ``[sin(pos * omega), cos(pos * omega)]`` with ``omega_i = 10000^(-i / (D / 4))``,
    ``i = 0 .. D/4 - 1``. With ``cls_token`` a zero row is prepended for the class token.

    Args:
        grid_size: ``(rows, columns)`` of the patch grid.
        embed_dim: ``D``, a multiple of 4.
        cls_token: prepend the class-token slot.

    Returns:
        ``(1, [1 +] rows * columns, D)`` float32, patches in row-major order.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"the 2D sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}.")
    rows, cols = (int(g) for g in grid_size)
    # float64 as the official numpy code, so that loaded checkpoint embeddings compare closely
    omega = 1.0 / 10000.0 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0))
    row_idx, col_idx = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )

    def _one_axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    emb = torch.cat([_one_axis(col_idx), _one_axis(row_idx)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches to tokens: ``(B, C, H, W)`` -> ``(B, (H/p)(W/p), D)``, row-major."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention ``(B, N, D)`` -> ``(B, N, D)`` with a fused ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embedding width {dim} is not divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D / heads)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Token-wise ``fc1 -> GELU -> fc2``: ``(B, N, D)`` -> ``(B, N, D)``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm ``Block`` layout): ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


class MaskedAutoencoderViT(nn.Module):
    """
    2D ViT masked autoencoder with the official MAE layout and parameter names (module docstring).

    The encoder embeds ``p x p`` patches, adds the sin-cos position embedding, drops the masked
    patches and runs ``depth`` transformer blocks over the class token and the visible patches.
    The decoder projects to ``decoder_embed_dim``, puts a shared learned ``mask_token`` at every
    masked position, adds the decoder position embedding and predicts the ``p * p * C`` pixels of
    every patch.

    Patch vectors are ordered ``(row in patch, column in patch, channel)`` and patches row-major,
    as in the official ``patchify``, so that ``decoder_pred`` of a checkpoint keeps its meaning.

    Args:
        img_size: side of the square images the model is built for; a multiple of ``patch_size``.
            Other sizes that are multiples of ``patch_size`` are accepted at call time.
        patch_size: side ``p`` of the square patches.
        in_channels: image channels ``C``.
        embed_dim: encoder width (multiple of ``num_heads`` and of 4).
        depth: number of encoder blocks.
        num_heads: encoder attention heads.
        decoder_embed_dim: decoder width (multiple of ``decoder_num_heads`` and of 4).
        decoder_depth: number of decoder blocks.
        decoder_num_heads: decoder attention heads.
        mlp_ratio: MLP hidden width / block width (encoder and decoder).
        norm_pix_loss: regress per-patch normalised pixels (mean 0, variance 1 per patch) as the
            official option. Such a model predicts no intensities, so :meth:`reconstruct` refuses it.

    Example::

        mae = mae_preset("tiny")
        loss, pred, mask = mae(images, mask_ratio=0.5)         # images (B, 1, 64, 64)
        masks = mae.random_masks(images.shape[0], 0.75, generator=torch.Generator().manual_seed(0))
        recon = mae.reconstruct(images, mask=masks)            # (B, 1, 64, 64)
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 1,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("img_size", img_size),
            ("patch_size", patch_size),
            ("in_channels", in_channels),
            ("embed_dim", embed_dim),
            ("depth", depth),
            ("num_heads", num_heads),
            ("decoder_embed_dim", decoder_embed_dim),
            ("decoder_depth", decoder_depth),
            ("decoder_num_heads", decoder_num_heads),
        ):
            _positive_int(name, value)
        if img_size % patch_size != 0:
            raise ValueError(f"img_size={img_size} is not divisible by patch_size={patch_size}.")
        for width, heads, what in ((embed_dim, num_heads, ""), (decoder_embed_dim, decoder_num_heads, "decoder_")):
            if width % heads != 0:
                raise ValueError(f"{what}embed_dim={width} is not divisible by {what}num_heads={heads}.")
            if width % 4 != 0:
                raise ValueError(f"{what}embed_dim={width} must be divisible by 4 (2D sin-cos position embedding).")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}.")

        self.img_size = img_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.norm_pix_loss = as_flag(norm_pix_loss, "norm_pix_loss")
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        #: the constructor arguments (what :func:`save_mae` stores next to the weights)
        self.config: dict[str, Any] = {
            "img_size": img_size,
            "patch_size": patch_size,
            "in_channels": in_channels,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "decoder_embed_dim": decoder_embed_dim,
            "decoder_depth": decoder_depth,
            "decoder_num_heads": decoder_num_heads,
            "mlp_ratio": float(mlp_ratio),
            "norm_pix_loss": self.norm_pix_loss,
        }

        # encoder
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(self.grid_size, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=_LN_EPS)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(self.grid_size, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=_LN_EPS)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_channels)

        self._init_weights()

    def _init_weights(self) -> None:
        """The official initialisation: xavier-uniform linears (the patch projection as a linear), N(0, 0.02) tokens."""
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)

    # ----------------------------------------------------------------------------- patches
    def _grid(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p != 0 or width % p != 0:
            raise ValueError(
                f"image size ({height}, {width}) is not divisible by the MAE patch size {p}; resize the images "
                f"(ResidualMapd does so with mae_input_size) to a multiple of {p}, e.g. {self.img_size}."
            )
        return height // p, width // p

    def _check_images(self, x: torch.Tensor) -> tuple[int, int]:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"MAE input must be a (B, C, H, W) tensor, got {shape}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"MAE input has {x.shape[1]} channels, the model expects in_channels={self.in_channels}.")
        return self._grid(x.shape[2], x.shape[3])

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, L, p * p * C)``, patches row-major, vector order (row, column, channel)."""
        rows, cols = self._check_images(imgs)
        b, c, p = imgs.shape[0], imgs.shape[1], self.patch_size
        x = imgs.reshape(b, c, rows, p, cols, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, rows * cols, p * p * c)

    def unpatchify(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """
        ``(B, L, p * p * C)`` -> ``(B, C, H, W)``, the inverse of :meth:`patchify`.

        Args:
            x: patch vectors.
            grid_size: ``(H / p, W / p)``; defaults to the model's grid when ``L`` matches it, else
                to a square grid.
        """
        p, c = self.patch_size, self.in_channels
        if x.ndim != 3 or x.shape[2] != p * p * c:
            raise ValueError(f"unpatchify expects (B, L, {p * p * c}) patch vectors, got {tuple(x.shape)}.")
        b, num = x.shape[0], x.shape[1]
        if grid_size is None:
            side = math.isqrt(num)
            if num == self.num_patches:
                grid_size = self.grid_size
            elif side * side == num:
                grid_size = (side, side)
            else:
                raise ValueError(f"{num} patches do not form a square grid; pass grid_size=(rows, columns).")
        rows, cols = grid_size
        if rows * cols != num:
            raise ValueError(f"grid_size {tuple(grid_size)} does not hold {num} patches.")
        x = x.reshape(b, rows, cols, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, rows * p, cols * p)

    # ----------------------------------------------------------------------------- masks
    def random_masks(
        self,
        batch: int,
        mask_ratio: float,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        num_patches: int | None = None,
    ) -> torch.Tensor:
        """
        ``(batch, L)`` bool random masks, exactly ``round(L * mask_ratio)`` ``True`` (masked) per row.

        ``L`` is the model's number of patches unless ``num_patches`` is given (other input sizes).
        See :func:`bundle.networks.masking.random_masks`.
        """
        num = self.num_patches if num_patches is None else num_patches
        return random_masks(num, mask_ratio, batch, generator=generator, device=device)

    def _resolve_mask(
        self, x: torch.Tensor, grid: tuple[int, int], mask_ratio: float, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """A validated ``(B, L)`` bool mask on ``x``'s device: ``mask`` or a fresh random one."""
        num = grid[0] * grid[1]
        if mask is None:
            return random_masks(num, mask_ratio, x.shape[0], device=x.device)
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (x.shape[0], num):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a (B, L) = ({x.shape[0]}, {num}) tensor, got {shape}.")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("mask must be boolean or hold only 0 and 1 (1 = masked).")
            mask = mask != 0
        counts = mask.sum(dim=1)
        if bool((counts != counts[0]).any()):
            raise ValueError(
                "every row of mask must mask the same number of patches (the encoder takes the visible patches "
                f"of the batch as one tensor), got counts {counts.tolist()}."
            )
        return mask.to(x.device)

    # ----------------------------------------------------------------------------- model
    def _pos_embeds(self, grid: tuple[int, int], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder and decoder position embeddings ``(1, 1 + L, D)`` for a patch grid."""
        if tuple(grid) == self.grid_size:
            return self.pos_embed, self.decoder_pos_embed
        enc = sincos_pos_embed_2d(grid, self.pos_embed.shape[-1]).to(device=like.device, dtype=self.pos_embed.dtype)
        dec = sincos_pos_embed_2d(grid, self.decoder_pos_embed.shape[-1]).to(enc)
        return enc, dec

    def forward_encoder(
        self, x: torch.Tensor, mask: torch.Tensor, pos_embed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Encode the visible patches.

        Args:
            x: images ``(B, C, H, W)``.
            mask: ``(B, L)`` bool, the same number of ``True`` per row.
            pos_embed: ``(1, 1 + L, D)`` for the image grid.

        Returns:
            latent ``(B, 1 + L_visible, D)`` (class token first, visible patches in ascending order)
            and ``ids_restore`` ``(B, L)``: where each patch sits in ``[visible..., masked...]``.
        """
        tokens = self.patch_embed(x) + pos_embed[:, 1:, :]
        b, num, dim = tokens.shape
        # a stable sort of the 0/1 mask lists the visible patches first, each group in ascending order
        ids_shuffle = torch.argsort(mask.to(torch.int64), dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        num_visible = num - int(mask[0].sum())
        ids_keep = ids_shuffle[:, :num_visible]
        tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        cls = (self.cls_token + pos_embed[:, :1, :]).expand(b, -1, -1)
        latent = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            latent = block(latent)
        return self.norm(latent), ids_restore

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, decoder_pos_embed: torch.Tensor
    ) -> torch.Tensor:
        """
        Predict every patch from the encoded visible patches.

        Args:
            latent: ``(B, 1 + L_visible, D)`` from :meth:`forward_encoder`.
            ids_restore: ``(B, L)`` from :meth:`forward_encoder`.
            decoder_pos_embed: ``(1, 1 + L, D_dec)``.

        Returns:
            ``(B, L, p * p * C)`` patch predictions.
        """
        x = self.decoder_embed(latent)
        b, num = ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(b, num + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], patches], dim=1) + decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def _predict(
        self, x: torch.Tensor, mask_ratio: float, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        grid = self._check_images(x)
        mask = self._resolve_mask(x, grid, mask_ratio, mask)
        pos_embed, decoder_pos_embed = self._pos_embeds(grid, x)
        latent, ids_restore = self.forward_encoder(x, mask, pos_embed)
        return self.forward_decoder(latent, ids_restore, decoder_pos_embed), mask, grid

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Mean squared error over the pixels of the masked patches only.

        Args:
            imgs: ``(B, C, H, W)`` targets.
            pred: ``(B, L, p * p * C)`` predictions.
            mask: ``(B, L)``, 1 = masked.

        Returns:
            a scalar; 0 (still attached to ``pred``) when nothing is masked.
        """
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        weights = mask.to(per_patch.dtype)
        # clamp: a ratio-0 call has no masked patch; its loss is 0 instead of 0/0
        return (per_patch * weights).sum() / weights.sum().clamp_min(1.0)

    def forward(
        self, x: torch.Tensor, mask_ratio: float = 0.75, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            x: images ``(B, C, H, W)``, ``H`` and ``W`` multiples of the patch size.
            mask_ratio: fraction of patches masked by the random mask drawn when ``mask`` is None
                (global RNG; pass ``mask`` for reproducible masks).
            mask: explicit ``(B, L)`` bool mask, ``True`` = masked, the same count in every row;
                overrides ``mask_ratio``.

        Returns:
            ``(loss, pred, mask)``: the scalar masked-patch MSE, the ``(B, L, p * p * C)``
            predictions of all patches and the ``(B, L)`` float mask (1 = masked).
        """
        pred, mask, _ = self._predict(x, mask_ratio, mask)
        loss = self.forward_loss(x, pred, mask)
        return loss, pred, mask.to(pred.dtype)

    def reconstruct(
        self, x: torch.Tensor, mask_ratio: float = 0.75, mask: torch.Tensor | None = None, paste_visible: bool = True
    ) -> torch.Tensor:
        """
        The reconstructed images.

        Args:
            x: images ``(B, C, H, W)``.
            mask_ratio: ratio of the random mask drawn when ``mask`` is None.
            mask: explicit ``(B, L)`` bool mask (``True`` = masked).
            paste_visible: decoder prediction at masked patches and the input's pixels at visible
                ones (the MAE visualisation convention, docs/method.md §5); otherwise the decoder
                output at every patch.

        Returns:
            ``(B, C, H, W)`` in the dtype of the prediction. Runs with autograd as any forward; wrap
            it in ``torch.no_grad()`` for inference.
        """
        if self.norm_pix_loss:
            raise ValueError(
                "this MAE was built with norm_pix_loss=True: it predicts per-patch normalised pixels, not "
                "intensities, so it cannot reconstruct images; train it with norm_pix_loss=False."
            )
        pred, mask, grid = self._predict(x, mask_ratio, mask)
        if paste_visible:
            pred = torch.where(mask.unsqueeze(-1), pred, self.patchify(x).to(pred.dtype))
        return self.unpatchify(pred, grid)


def mae_preset(name: str, **overrides: Any) -> MaskedAutoencoderViT:
    """
    Build an MAE from a named preset (:data:`MAE_PRESETS`), with keyword overrides.

    ``"tiny"`` (64 px, patch 8; tests and CPU demos), ``"base"`` (ViT-B/16, 224 px),
    ``"large"`` (ViT-L/16, 224 px, the paper's). All presets are single-channel.

    Examples::

        mae = mae_preset("large")                        # load_official_mae_checkpoint(mae, path) next
        mae = mae_preset("tiny", img_size=32, patch_size=4)
    """
    if name not in MAE_PRESETS:
        raise ValueError(f"unknown MAE preset {name!r}; available: {sorted(MAE_PRESETS)}.")
    kwargs = dict(MAE_PRESETS[name])
    kwargs.update(overrides)
    return MaskedAutoencoderViT(**kwargs)


def save_mae(model: MaskedAutoencoderViT, path: str | os.PathLike) -> None:
    """
    Save an MAE as the project's self-describing checkpoint ``{"mae_config": ..., "state_dict": ...}``.

    :func:`load_mae` (and ``ResidualMapd(mae=path)``) rebuild the model from it without further
    arguments.
    """
    if not isinstance(model, MaskedAutoencoderViT):
        raise ValueError(f"save_mae expects a MaskedAutoencoderViT, got {type(model).__name__}.")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"mae_config": dict(model.config), "state_dict": state}, os.fspath(path))


def _state_dict_of(checkpoint: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "network"):
        if isinstance(checkpoint.get(key), Mapping):
            return dict(checkpoint[key])
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise ValueError(
        f"{source}: no MAE weights found; expected a state dict, or one under 'state_dict', 'model' or 'network'."
    )


def load_mae(
    path: str | os.PathLike,
    preset: str | None = None,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    **overrides: Any,
) -> MaskedAutoencoderViT:
    """
    Rebuild an MAE from a checkpoint saved by the project.

    The architecture is ``MAE_PRESETS[preset]``, updated by the file's ``"mae_config"`` (written by
    :func:`save_mae`), updated by ``overrides``. Weights are taken from the file's ``"state_dict"``,
    ``"model"`` or ``"network"`` entry or its top level (e.g. a MONAI ``CheckpointSaver`` file of
    the MAE alone: then give ``preset``/``overrides``, the file holds no architecture).
    Official MAE checkpoints are loaded with :func:`bundle.networks.load_official_mae_checkpoint`.

    Args:
        path: the checkpoint file.
        preset: name in :data:`MAE_PRESETS` for files without ``"mae_config"``.
        map_location: passed to ``torch.load``.
        strict: passed to ``load_state_dict``.
        overrides: constructor arguments that win over the preset and the file.

    Returns:
        the model in eval mode.
    """
    source = os.fspath(path)
    checkpoint = read_checkpoint(source, map_location=map_location, kind="mae")
    if not isinstance(checkpoint, Mapping) or ("mae_config" not in checkpoint and preset is None and not overrides):
        raise CheckpointError(
            f"{source}: holds {checkpoint_kind(checkpoint)}, not MAE weights (the MAE pre-training writes "
            "models/mae.pt); an MAE file without 'mae_config' needs load_mae(path, preset=...)."
        )
    file_config = checkpoint.get("mae_config")
    config: dict[str, Any] = {}
    if preset is not None:
        if preset not in MAE_PRESETS:
            raise ValueError(f"unknown MAE preset {preset!r}; available: {sorted(MAE_PRESETS)}.")
        config.update(MAE_PRESETS[preset])
    config.update(file_config or {})
    config.update(overrides)
    model = MaskedAutoencoderViT(**config)
    try:
        model.load_state_dict(_state_dict_of(checkpoint, source), strict=strict)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: the weights do not fit the MAE {config} ({err}).") from err
    return model.to(map_location).eval()


def unwrap_parallel(network: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel/DataParallel (for the MAE's ``patchify``, ``random_masks``...)."""
    return network.module if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else network


def pixel_mask(mae: nn.Module, mask: torch.Tensor, pred: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """The patch mask (B, L), 1 = masked, as a pixel mask (B, C, H, W) like the MAE's images.

    Args:
        mae: the MAE (``unpatchify`` maps (B, L, p*p*C) patches to (B, C, H, W) images).
        mask: (B, L) patch mask.
        pred: (B, L, p*p*C) prediction, for the patch layout.
        image_size: (H, W) of the images.
    """
    model = unwrap_parallel(mae)
    grid = (int(image_size[0]) // model.patch_size, int(image_size[1]) // model.patch_size)
    return model.unpatchify(mask.to(pred.dtype).unsqueeze(-1).expand_as(pred).contiguous(), grid)


def reconstruction_from_prediction(
    mae: nn.Module, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, paste_visible: bool = True
) -> torch.Tensor:
    """Differentiable reconstruction (B, C, H, W) from one MAE forward's ``pred`` and ``mask``.

    With ``norm_pix_loss`` the MAE predicts per-patch normalised pixels; they are brought back to
    intensities with the mean and variance of the input's patches (MAE's visualisation
    convention). ``paste_visible`` keeps the input's pixels at visible patches (docs/method.md §5).

    Args:
        mae: the MAE.
        images: (B, C, H, W) input.
        pred: (B, L, p*p*C) prediction.
        mask: (B, L) patch mask, 1 = masked.
        paste_visible: take visible patches from ``images``.
    """
    model = unwrap_parallel(mae)
    patches = pred.float()
    if getattr(model, "norm_pix_loss", False):
        target = model.patchify(images)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        patches = patches * (var + 1.0e-6).sqrt() + mean
    grid = (images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size)
    recon = model.unpatchify(patches, grid)
    if paste_visible:
        masked = pixel_mask(model, mask, patches, images.shape[-2:])
        recon = recon * masked + images * (1.0 - masked)
    return recon


class MAEArchitecture:
    """The MAE's constructor arguments as a checkpointable object (``state_dict``/``load_state_dict``).

    Saved next to the weights, ``CheckpointSaver(save_dict={"state_dict": network, "mae_config":
    MAEArchitecture(network)})`` writes ``{"state_dict": ..., "mae_config": ...}``: the
    self-describing format of :func:`bundle.networks.mae.save_mae`, which
    :func:`bundle.networks.mae.load_mae` and the residual-map transform rebuild without being told
    the architecture. Loading checks that the checkpoint's architecture is this network's.

    Args:
        network: the MAE (its ``config`` dict), possibly wrapped in DistributedDataParallel.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def state_dict(self) -> dict[str, Any]:
        return dict(unwrap_parallel(self.network).config)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        current = self.state_dict()
        if dict(state_dict) != current:
            changed = {k: (state_dict.get(k), current.get(k)) for k in set(state_dict) | set(current)}
            changed = {k: v for k, v in changed.items() if v[0] != v[1]}
            raise ValueError(f"the checkpoint's MAE architecture differs from the configured one: {changed}.")
