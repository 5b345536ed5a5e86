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
"""The two feature-compensation units of GRCSF (Wang et al., Sec. 3.2-3.3).

- :class:`GlobalCompensationUnit` (GCU) re-weights a skip feature where the encoder lost
  pixel-level information by downsampling (Eq. 1-2).
- :class:`RegionalCompensationUnit` (RCU) fuses the MAE residual maps into an upsampled
  decoder feature with patch-based cross-attention and per-patch importance scores (Eq. 6).

All tensors are 2D feature maps in ``(B, C, H, W)`` layout.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.layers.utils import get_act_layer

__all__ = [
    "SqueezeExcitation",
    "GlobalCompensationUnit",
    "PatchImportanceScore",
    "RegionalCompensationUnit",
    "patchify",
    "unpatchify",
]


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """
    Split a feature map into non-overlapping square patches of tokens.

    Args:
        x: ``(B, C, H, W)``; ``H`` and ``W`` must be divisible by ``patch_size``.
        patch_size: the patch edge length ``P``.

    Returns:
        ``(B, N, P * P, C)`` with ``N = (H / P) * (W / P)``; patches are in row-major order over
        the patch grid and tokens are in row-major order inside a patch.
        :func:`unpatchify` is the exact inverse (a pure permutation of the elements).
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}.")
    b, c, h, w = x.shape
    if h % patch_size != 0 or w % patch_size != 0:
        raise ValueError(f"feature map of size {h}x{w} is not divisible by the patch size {patch_size}.")
    gh = h // patch_size
    gw = w // patch_size
    x = x.reshape(b, c, gh, patch_size, gw, patch_size)
    # (B, gh, gw, P, P, C): grid position first, then the position inside the patch, channels last
    x = x.permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, patch_size * patch_size, c)


def unpatchify(x: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """
    Fold patch tokens back into a feature map; the inverse of :func:`patchify`.

    Args:
        x: ``(B, N, P * P, C)`` with ``N = (height / P) * (width / P)``.
        patch_size: the patch edge length ``P``.
        height: ``H`` of the output.
        width: ``W`` of the output.

    Returns:
        ``(B, C, H, W)``.
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}.")
    if height % patch_size != 0 or width % patch_size != 0:
        raise ValueError(f"size {height}x{width} is not divisible by the patch size {patch_size}.")
    b, n, t, c = x.shape
    gh = height // patch_size
    gw = width // patch_size
    if n != gh * gw or t != patch_size * patch_size:
        raise ValueError(
            f"expected {gh * gw} patches of {patch_size * patch_size} tokens for a {height}x{width} map, "
            f"got {n} patches of {t} tokens."
        )
    x = x.reshape(b, gh, gw, patch_size, patch_size, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, height, width)


class SqueezeExcitation(nn.Module):
    """
    Squeeze-and-excitation channel attention (Hu et al., CVPR 2018): global average pooling,
    FC + ReLU, FC + sigmoid, and the input rescaled channel-wise.

    Unlike ``monai.networks.blocks.ChannelSELayer`` the bottleneck is clamped to at least one
    unit, so the same reduction ratio works for the narrow widths of the small preset.
    """

    def __init__(self, channels: int, reduction: int = 16, act: str | tuple = "relu") -> None:
        """
        Args:
            channels: number of input (and output) channels ``C``.
            reduction: bottleneck ratio; the hidden width is ``max(1, C // reduction)``.
            act: bottleneck activation (Hu et al.: ReLU). A narrow bottleneck behind
                instance-normalised features pools to nearly the same vector for every input,
                so its ReLU units can all be dead from initialisation and never learn; GRCSF
                therefore passes its backbone's LeakyReLU.
        """
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels} and {reduction}.")
        hidden = max(1, channels // reduction)
        self.fc_1 = nn.Linear(channels, hidden)
        self.act = get_act_layer(act)
        self.fc_2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C, H, W)``.

        Returns:
            ``(B, C, H, W)``: ``x`` scaled by per-channel weights in (0, 1).
        """
        w = x.mean(dim=(2, 3))
        w = torch.sigmoid(self.fc_2(self.act(self.fc_1(w))))
        return x * w.unsqueeze(-1).unsqueeze(-1)


class GlobalCompensationUnit(nn.Module):
    """
    Global Compensation Unit (GCU, Sec. 3.2, Eq. 1-2) for one skip level.

    With the skip feature ``F`` (``C`` channels, ``H x W``), the feature one level down ``S``
    and the upsampled decoder feature ``U`` that is about to be concatenated with ``F``::

        RU = proj(upsample(S))                       # C channels, H x W
        R  = CS(RU * SE_u(proj_u(U)), SE_f(F))       # pixel-wise cosine similarity, 1 channel
        C  = R * F + F

    ``R`` lies in [-1, 1]; it is returned too so that a UNet++ can modulate the later skip
    features of the same level with it (``X' = X * R + X``).
    """

    def __init__(
        self,
        skip_channels: int,
        down_channels: int,
        up_channels: int | None = None,
        reduction: int = 16,
        projection_kernel_size: int = 1,
        act: str | tuple = "relu",
    ) -> None:
        """
        Args:
            skip_channels: channels ``C`` of the skip feature ``F``.
            down_channels: channels of the lower-level feature ``S``.
            up_channels: channels of the upsampled decoder feature ``U``; defaults to
                ``skip_channels``. When it differs (e.g. the full-resolution level of MONAI's
                UNet++/U-Net, which does not halve channels when upsampling) ``U`` is first
                projected to ``C`` channels by a 1x1 conv, because the product with ``RU`` and
                the cosine similarity with ``SE(F)`` need equal channel counts.
            reduction: squeeze-and-excitation reduction ratio.
            projection_kernel_size: kernel of the conv projecting the upsampled ``S`` to ``C``
                channels (odd). The SPEC's choice is 1; 3 lets the projection smooth the
                upsampling and reproduces the paper's parameter overhead (see
                ``docs/architecture.md``).
            act: activation inside the two squeeze-and-excitation bottlenecks.
        """
        super().__init__()
        up_channels = skip_channels if up_channels is None else up_channels
        if min(skip_channels, down_channels, up_channels) < 1:
            raise ValueError("GlobalCompensationUnit channel counts must be positive.")
        if projection_kernel_size < 1 or projection_kernel_size % 2 == 0:
            raise ValueError(
                f"projection_kernel_size must be a positive odd number, got {projection_kernel_size}."
            )
        self.project_down = nn.Conv2d(
            down_channels, skip_channels, projection_kernel_size, padding=projection_kernel_size // 2
        )
        self.project_up: nn.Module = (
            nn.Identity() if up_channels == skip_channels else nn.Conv2d(up_channels, skip_channels, 1)
        )
        self.se_up = SqueezeExcitation(skip_channels, reduction, act)
        self.se_skip = SqueezeExcitation(skip_channels, reduction, act)

    def forward(
        self, skip: torch.Tensor, down: torch.Tensor, up: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            skip: ``F``, ``(B, C, H, W)``.
            down: ``S``, ``(B, C_s, H', W')`` (typically ``H' = H / 2``).
            up: ``U``, ``(B, C_u, H, W)``.

        Returns:
            ``(C, R)``: the compensated skip feature ``(B, C, H, W)`` and the residual map
            ``(B, 1, H, W)``.
        """
        size = [int(skip.shape[2]), int(skip.shape[3])]
        ru = self.project_down(F.interpolate(down, size=size, mode="bilinear", align_corners=False))
        guided = ru * self.se_up(self.project_up(up))
        residual = F.cosine_similarity(guided, self.se_skip(skip), dim=1).unsqueeze(1)
        return skip * residual + skip, residual


class PatchImportanceScore(nn.Module):
    """
    Regional importance score ``phi(U')`` of the RCU (Fig. 5): a 1x1 conv reduces each token to
    one value, the ``P * P`` values of a patch go through FC + ReLU, FC + ReLU, FC and a sigmoid,
    giving one score in (0, 1) per patch. Sigmoid rather than softmax: several patches may hold
    lesions. The FC widths grow with ``P``, as the paper's parameter counts per patch size do.
    """

    def __init__(self, channels: int, patch_size: int, hidden: int | None = None) -> None:
        """
        Args:
            channels: channels ``C`` of the decoder feature.
            patch_size: patch edge length ``P``.
            hidden: width of the two hidden FC layers; defaults to ``P * P``.
        """
        super().__init__()
        if channels < 1 or patch_size < 1:
            raise ValueError(f"channels and patch_size must be positive, got {channels} and {patch_size}.")
        tokens = patch_size * patch_size
        hidden = tokens if hidden is None else hidden
        if hidden < 1:
            raise ValueError(f"hidden must be positive, got {hidden}.")
        self.patch_size = patch_size
        self.reduce = nn.Conv2d(channels, 1, kernel_size=1)
        self.mlp = nn.Sequential(
            nn.Linear(tokens, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C, H, W)``, ``H`` and ``W`` divisible by ``P``.

        Returns:
            ``(B, N)`` scores in (0, 1), patches ordered as in :func:`patchify`.
        """
        tokens = patchify(self.reduce(x), self.patch_size).squeeze(-1)  # (B, N, P*P)
        return torch.sigmoid(self.mlp(tokens)).squeeze(-1)


class RegionalCompensationUnit(nn.Module):
    """
    Regional Compensation Unit (RCU, Sec. 3.3.2, Fig. 4-5, Eq. 6) for one decoder layer.

    Each of the ``R`` residual maps is resized to ``U``'s ``H x W`` (area interpolation, so a
    downsampled map keeps the mean residual of the pixels it covers) and embedded to ``C``
    channels by its own 3x3 conv + activation. Inside every non-overlapping ``P x P`` patch,
    SAGAN-style 1x1 projections give queries from the residual-map tokens and keys/values from
    ``U``'s tokens, so the attention output stays in ``U``'s feature space::

        M = sum_r fold(attn(RM'_r, U') * phi(U')) * W_r + U

    with ``phi`` the per-patch importance score (:class:`PatchImportanceScore`, or 1 when
    ``importance_score=False``) and ``W_r`` one learnable scalar per residual map.
    """

    def __init__(
        self,
        channels: int,
        num_maps: int = 2,
        patch_size: int = 8,
        importance_score: bool = True,
        attention_reduction: int = 8,
        score_hidden: int | None = None,
        weight_init: float = 0.1,
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
    ) -> None:
        """
        Args:
            channels: channels ``C`` of the decoder feature ``U``.
            num_maps: number of residual maps ``R`` (the paper uses 2 mask ratios).
            patch_size: patch edge length ``P``.
            importance_score: use the importance score ``phi``; ``False`` is the ablation
                "RCU without importance score" (every patch scored 1, no parameters for ``phi``).
            attention_reduction: query/key width is ``max(1, C // attention_reduction)``
                (SAGAN uses 8).
            score_hidden: hidden width of ``phi``'s FC layers; defaults to ``P * P``.
            weight_init: initial value of every ``W_r``. 0 would make the unit start as the
                identity (as SAGAN's gamma) but then no gradient reaches the attention or
                ``phi`` in the first step; a small positive value keeps the backbone path
                dominant at the start while every parameter learns from step one.
            act: activation after the residual-map embedding.
        """
        super().__init__()
        if channels < 1 or num_maps < 1 or patch_size < 1 or attention_reduction < 1:
            raise ValueError(
                "channels, num_maps, patch_size and attention_reduction must be positive, got "
                f"{channels}, {num_maps}, {patch_size}, {attention_reduction}."
            )
        qk_channels = max(1, channels // attention_reduction)
        self.channels = channels
        self.num_maps = num_maps
        self.patch_size = patch_size
        self.qk_channels = qk_channels
        # grouped convs: every residual map has its own embedding and query projection,
        # computed for all maps in one call
        self.embed = nn.Sequential(
            nn.Conv2d(num_maps, num_maps * channels, kernel_size=3, padding=1, groups=num_maps),
            get_act_layer(act),
        )
        self.query = nn.Conv2d(num_maps * channels, num_maps * qk_channels, kernel_size=1, groups=num_maps)
        self.key = nn.Conv2d(channels, qk_channels, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.score: PatchImportanceScore | None = (
            PatchImportanceScore(channels, patch_size, score_hidden) if importance_score else None
        )
        self.map_weights = nn.Parameter(torch.full((num_maps,), float(weight_init)))

    def forward(self, up: torch.Tensor, residual_maps: torch.Tensor) -> torch.Tensor:
        """
        Args:
            up: ``U``, ``(B, C, H, W)``, ``H`` and ``W`` divisible by ``P``.
            residual_maps: ``(B, R, H0, W0)``, any spatial size (resized to ``H x W``).

        Returns:
            ``M``, ``(B, C, H, W)``.
        """
        return self.forward_with_scores(up, residual_maps)[0]

    @torch.jit.export
    def forward_with_scores(
        self, up: torch.Tensor, residual_maps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Same as :meth:`forward`, also returning the importance scores.

        Returns:
            ``(M, scores)``: ``M`` is ``(B, C, H, W)``; ``scores`` is ``(B, 1, H / P, W / P)``,
            one value in (0, 1) per patch laid out on the patch grid (all ones when the
            importance score is off).
        """
        b, c, h, w = up.shape
        p = self.patch_size
        if c != self.channels:
            raise ValueError(f"expected a decoder feature with {self.channels} channels, got {c}.")
        if residual_maps.shape[1] != self.num_maps:
            raise ValueError(f"expected {self.num_maps} residual maps, got {residual_maps.shape[1]}.")
        if h % p != 0 or w % p != 0:
            raise ValueError(f"decoder feature of size {h}x{w} is not divisible by the RCU patch size {p}.")
        n = (h // p) * (w // p)
        maps = F.interpolate(residual_maps.to(up.dtype), size=[h, w], mode="area")
        # (B, N, P*P, R*d) -> (B, R, N, P*P, d): one query set per residual map
        q = patchify(self.query(self.embed(maps)), p)
        q = q.reshape(b, n, p * p, self.num_maps, self.qk_channels).permute(0, 3, 1, 2, 4)
        k = patchify(self.key(up), p).unsqueeze(1).expand(b, self.num_maps, n, p * p, self.qk_channels)
        v = patchify(self.value(up), p).unsqueeze(1).expand(b, self.num_maps, n, p * p, c)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, R, N, P*P, C)
        # the score is per patch and shared by the maps, so weighting and summing over the maps
        # first (Eq. 6 is linear in each term) saves R - 1 multiplications by the score
        fused = (attended * self.map_weights.view(1, self.num_maps, 1, 1, 1)).sum(dim=1)
        score = self.score
        if score is not None:
            scores = score(up)
            fused = fused * scores.unsqueeze(-1).unsqueeze(-1).to(fused.dtype)
        else:
            scores = torch.ones(b, n, dtype=up.dtype, device=up.device)
        out = unpatchify(fused, p, h, w) + up
        return out, scores.reshape(b, 1, h // p, w // p)
