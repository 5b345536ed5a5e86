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

All tensors are 2D feature maps in ``(B, C, H, W)`` layout (contiguous or channels-last).

Implementation notes (speed, ``docs/speed.md``; the math is that of the straightforward
formulas, which ``tests/networks/test_grcsf.py`` compares against, gradients included):

- GCU: the squeeze-excitation outputs are per-channel rescalings, so the cosine similarity
  takes them as weights of its channel sums (batched matrix-vector products) instead of
  building rescaled copies of the full-resolution features; ``C = F + F * R`` is one
  ``addcmul``.
- RCU: since ``phi`` is per patch and Eq. 6 is linear in each map's term,
  ``sum_r W_r phi (A_r V) = (sum_r W_r phi A_r) V``: on the CPU the R maps' attention
  matrices are mixed before the single product with the values, in chunks of patches whose
  attention is recomputed in backward (:func:`mixed_patch_attention`), so no batch-sized
  ``P^2 x P^2`` score tensor is ever held; on CUDA the R maps' queries are rows of one
  ``F.scaled_dot_product_attention`` call (flash / memory-efficient kernels) whose outputs are
  mixed afterwards.
- 1x1 convolutions on NCHW CPU tensors run as batched matrix products (:func:`_pointwise_conv`).
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


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (eager mode; TorchScript code never calls it)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device without autocast, e.g. meta (shape and FLOP counting)
        return False


def _weighted_cosine_similarity(
    x: torch.Tensor, x_weights: torch.Tensor, y: torch.Tensor, y_weights: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """
    Pixel-wise cosine similarity over the channels of ``x * x_weights`` and ``y * y_weights``.

    The same value as ``F.cosine_similarity(x * wx[..., None, None], y * wy[..., None, None], dim=1)``
    with each norm clamped to at least ``eps``; in float32 the three weighted channel
    sums are batched matrix-vector products, so the rescaled copies of ``x`` and ``y`` that the
    plain formula needs are never built (the full-resolution GCU's largest temporaries). For other
    dtypes and under autocast the plain formula runs (autocast computes the cosine similarity in
    float32; low-precision sums of squares could overflow).

    Args:
        x: ``(B, C, H, W)``.
        x_weights: ``(B, C)``, per-channel weights of ``x``.
        y: ``(B, C, H, W)``.
        y_weights: ``(B, C)``, per-channel weights of ``y``.
        eps: lower bound of each norm.

    Returns:
        ``(B, 1, H, W)`` in [-1, 1].
    """
    products = x.dtype == torch.float32 and y.dtype == torch.float32
    if not torch.jit.is_scripting():
        products = products and not _autocast_enabled(x.device.type)
    if products:
        b, c, h, w = x.shape
        # (B, 1, C) @ (B, C, HW); reshape is a view for contiguous and channels-last tensors
        dot = torch.bmm((x_weights * y_weights).unsqueeze(1), (x * y).reshape(b, c, h * w))
        x_sq = torch.bmm((x_weights * x_weights).unsqueeze(1), (x * x).reshape(b, c, h * w))
        y_sq = torch.bmm((y_weights * y_weights).unsqueeze(1), (y * y).reshape(b, c, h * w))
        # max(|v|, eps) = sqrt(max(|v|^2, eps^2)), and no infinite gradient of sqrt at 0
        norms = x_sq.clamp_min(eps * eps).sqrt() * y_sq.clamp_min(eps * eps).sqrt()
        return (dot / norms).reshape(b, 1, h, w)
    return F.cosine_similarity(
        x * x_weights.unsqueeze(-1).unsqueeze(-1), y * y_weights.unsqueeze(-1).unsqueeze(-1), dim=1, eps=eps
    ).unsqueeze(1)


def _pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """
    A 1x1 convolution ``(B, C, H, W)`` -> ``(B, C_out, H, W)``.

    On the CPU, for NCHW tensors, as one batched matrix product ``W @ x.view(B, C, HW)``: PyTorch
    has no oneDNN kernel for NCHW 1x1 convolutions there and its fallback is 2.5x (C_out = 64) to
    5x (C_out = 1) slower forward + backward. Elsewhere ``F.conv2d``.
    """
    if x.is_cuda or not x.is_contiguous():
        return F.conv2d(x, weight, bias)
    b, c, h, w = x.shape
    out_channels = weight.shape[0]
    matrix = weight.reshape(1, out_channels, c).to(x.dtype).expand(b, out_channels, c)
    if bias is None:
        out = torch.bmm(matrix, x.reshape(b, c, h * w))
    else:
        out = torch.baddbmm(bias.to(x.dtype).reshape(1, out_channels, 1), matrix, x.reshape(b, c, h * w))
    return out.reshape(b, out_channels, h, w)


class _PointwiseConv2d(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (same parameters and state-dict keys) computed by :func:`_pointwise_conv`."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pointwise_conv(x, self.weight, self.bias)


# Scores held at once by the chunked CPU attention: 4 Mi values (16 MiB in float32), a working set
# that stays in the caches and below glibc's mmap threshold, so chunks reuse the same memory.
_ATTENTION_CHUNK_VALUES = 1 << 22


def _mix_maps(attention: torch.Tensor, coefficients: torch.Tensor, num_maps: int) -> torch.Tensor:
    """``(P, R * T, T)`` attention of R maps and ``(P, R)`` coefficients -> ``(P, T, T)`` weighted sum."""
    p, rows, t = attention.shape
    # (P, 1, R) @ (P, R, T * T): the weighted sum over the maps without temporaries
    mixed = torch.bmm(coefficients.unsqueeze(1).to(attention.dtype), attention.reshape(p, num_maps, t * t))
    return mixed.reshape(p, t, t)


def _mixed_attention_reference(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, coefficients: torch.Tensor
) -> torch.Tensor:
    """:func:`mixed_patch_attention` in one piece (plain autograd; TorchScript, autocast)."""
    t = keys.shape[1]
    attention = torch.bmm(queries, keys.transpose(1, 2)).softmax(dim=-1)
    mixed = _mix_maps(attention, coefficients, queries.shape[1] // t)
    return torch.bmm(values.transpose(1, 2).to(mixed.dtype), mixed.transpose(1, 2))


class _ChunkedMixedAttention(torch.autograd.Function):
    """
    :func:`mixed_patch_attention` over chunks of patches, recomputing the attention in backward.

    Only ``queries``, ``keys``, ``values`` and ``coefficients`` are saved; forward and backward
    rebuild one chunk's ``P^2 x P^2`` scores at a time (flash-attention style), so the scores of
    the whole batch (hundreds of MB at full resolution) never exist in memory.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> torch.Tensor:
        p, rows, _ = queries.shape
        t, c = keys.shape[1], values.shape[2]
        r = rows // t
        step = max(1, _ATTENTION_CHUNK_VALUES // (rows * t))
        out = values.new_empty((p, c, t))  # a tuple: MONAI MetaTensor inputs reject the varargs form
        for start in range(0, p, step):
            stop = min(start + step, p)
            attention = torch.bmm(queries[start:stop], keys[start:stop].transpose(1, 2)).softmax(dim=-1)
            mixed = _mix_maps(attention, coefficients[start:stop], r)
            torch.bmm(values[start:stop].transpose(1, 2), mixed.transpose(1, 2), out=out[start:stop])
        ctx.save_for_backward(queries, keys, values, coefficients)
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        queries, keys, values, coefficients = ctx.saved_tensors
        p, rows, _ = queries.shape
        t = keys.shape[1]
        r = rows // t
        step = max(1, _ATTENTION_CHUNK_VALUES // (rows * t))
        grad_out = grad_out.contiguous()
        grad_q, grad_k = torch.empty_like(queries), torch.empty_like(keys)
        grad_v, grad_c = torch.empty_like(values), torch.empty_like(coefficients)
        for start in range(0, p, step):
            stop = min(start + step, p)
            n = stop - start
            q, k, v = queries[start:stop], keys[start:stop], values[start:stop]
            coef = coefficients[start:stop]
            attention = torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1)  # (n, R * T, T)
            mixed = _mix_maps(attention, coef, r)  # M = sum_r c_r A_r, (n, T, T)
            grad_o = grad_out[start:stop].transpose(1, 2)  # gradient of O = M V, (n, T, C)
            torch.bmm(mixed.transpose(1, 2), grad_o, out=grad_v[start:stop])
            grad_m = torch.bmm(grad_o, v.transpose(1, 2))  # (n, T, T)
            a = attention.reshape(n, r, t, t)
            grad_s = a * grad_m.unsqueeze(1)  # A_r * G_M
            rho = grad_s.sum(dim=-1, keepdim=True)  # (n, R, T, 1)
            grad_c[start:stop] = rho.sum(dim=(2, 3)).to(grad_c.dtype)  # dL/dc_r = sum(G_M * A_r)
            # softmax backward of c_r A_r: c_r A_r * (G_M - rho_r), in place
            grad_s.addcmul_(a, rho, value=-1.0).mul_(coef.reshape(n, r, 1, 1).to(grad_s.dtype))
            grad_s = grad_s.reshape(n, rows, t)
            torch.bmm(grad_s, k, out=grad_q[start:stop])
            torch.bmm(grad_s.transpose(1, 2), q, out=grad_k[start:stop])
        needs = ctx.needs_input_grad
        return (
            grad_q if needs[0] else None,
            grad_k if needs[1] else None,
            grad_v if needs[2] else None,
            grad_c if needs[3] else None,
        )


def mixed_patch_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, coefficients: torch.Tensor
) -> torch.Tensor:
    """
    Per-patch attention of R query maps over shared keys, mixed: ``(sum_r c_r softmax(Q_r K^T)) V``.

    ``sum_r c_r (A_r V) = (sum_r c_r A_r) V``: one ``T x T`` by ``T x C`` product per patch instead
    of R. In float32/float64 eager mode without autocast the patches run in chunks with the
    attention recomputed in backward (:class:`_ChunkedMixedAttention`); otherwise in one piece.

    Args:
        queries: ``(P, R * T, d)``, rows ``r * T .. (r + 1) * T - 1`` the queries of map ``r``,
            already scaled by ``d^-1/2``.
        keys: ``(P, T, d)``.
        values: ``(P, T, C)``.
        coefficients: ``(P, R)``, the weight of each map in each patch.

    Returns:
        ``(P, C, T)``: the result transposed (channel-major, for a cheap fold back to ``(B, C, H, W)``).
    """
    if not torch.jit.is_scripting():
        plain = (
            queries.dtype in (torch.float32, torch.float64)
            and queries.dtype == keys.dtype == values.dtype
            and not _autocast_enabled(queries.device.type)
        )
        if plain:
            # plain tensors: slicing a collated batch of MONAI MetaTensors chunk by chunk would
            # re-derive (and reject) its per-item meta data; as_subclass keeps the autograd graph
            q, k, v, c = (t.as_subclass(torch.Tensor) for t in (queries, keys, values, coefficients))
            return _ChunkedMixedAttention.apply(q, k, v, c.to(q.dtype))
    return _mixed_attention_reference(queries, keys, values, coefficients)


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

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C, H, W)``.

        Returns:
            ``(B, C)``: the per-channel weights in (0, 1) that :meth:`forward` scales ``x`` by.
        """
        w = x.mean(dim=(2, 3))
        return torch.sigmoid(self.fc_2(self.act(self.fc_1(w))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C, H, W)``.

        Returns:
            ``(B, C, H, W)``: ``x`` scaled by per-channel weights in (0, 1).
        """
        return x * self.channel_weights(x).unsqueeze(-1).unsqueeze(-1)


class GlobalCompensationUnit(nn.Module):
    """
    Global Compensation Unit (GCU, Sec. 3.2, Eq. 1-2) for one skip level.

    With the skip feature ``F`` (``C`` channels, ``H x W``), the feature one level down ``S``
    and the upsampled decoder feature ``U`` that is about to be concatenated with ``F``::

        RU = upsample(proj(S))                       # C channels, H x W
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
            projection_kernel_size: kernel of the conv projecting ``S`` to ``C`` channels (odd),
                applied at ``S``'s resolution before the bilinear upsampling (the same function
                as projecting after it for a 1x1 kernel, at a quarter of the cost). The 1x1 design's
                choice is 1; 3 reproduces the paper's parameter overhead (see
                ``docs/architecture.md``).
            act: activation inside the two squeeze-and-excitation bottlenecks.
        """
        super().__init__()
        up_channels = skip_channels if up_channels is None else up_channels
        if min(skip_channels, down_channels, up_channels) < 1:
            raise ValueError("GlobalCompensationUnit channel counts must be positive.")
        if projection_kernel_size < 1 or projection_kernel_size % 2 == 0:
            raise ValueError(f"projection_kernel_size must be a positive odd number, got {projection_kernel_size}.")
        self.project_down = nn.Conv2d(
            down_channels, skip_channels, projection_kernel_size, padding=projection_kernel_size // 2
        )
        self.project_up: nn.Module = (
            nn.Identity() if up_channels == skip_channels else _PointwiseConv2d(up_channels, skip_channels)
        )
        self.se_up = SqueezeExcitation(skip_channels, reduction, act)
        self.se_skip = SqueezeExcitation(skip_channels, reduction, act)

    def forward(self, skip: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        # projected at S's resolution, then upsampled: the projection's parameters at a quarter of
        # the pixels (its 3x3 variant was the largest cost of the unit); for the 1x1 kernel
        # both orders are the same function (both are linear and bilinear weights sum to 1)
        ru = F.interpolate(self.project_down(down), size=size, mode="bilinear", align_corners=False)
        projected_up = self.project_up(up)
        # R = CS(RU * SE_u(U'), SE_f(F)): the squeeze-excitation outputs are per-channel rescalings,
        # so they enter the channel sums as weights instead of as rescaled copies of the features
        residual = _weighted_cosine_similarity(
            ru * projected_up, self.se_up.channel_weights(projected_up), skip, self.se_skip.channel_weights(skip)
        )
        # C = R * F + F in one pass
        return torch.addcmul(skip, skip, residual), residual


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
        self.reduce = _PointwiseConv2d(channels, 1)
        self.mlp = nn.Sequential(
            nn.Linear(tokens, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
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
    ``importance_score=False``) and ``W_r`` one learnable scalar per residual map. (How it is
    computed, mixing the maps before the value product, is in the module docstring.)
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
            nn.Conv2d(num_maps, num_maps * channels, kernel_size=3, padding=1, groups=num_maps), get_act_layer(act)
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
    def forward_with_scores(self, up: torch.Tensor, residual_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        grid_h, grid_w = h // p, w // p
        n = grid_h * grid_w
        maps = residual_maps.to(up.dtype)
        if maps.shape[2] != h or maps.shape[3] != w:  # area resizing to the same size is the identity
            maps = F.interpolate(maps, size=[h, w], mode="area")
        queries = self._queries(maps)  # (B, N, R * P^2, d)
        keys, values = self._keys_values(up)  # (B, N, P^2, d), (B, N, P^2, C)
        score = self.score
        if score is not None:
            scores = score(up)
        else:
            scores = torch.ones(b, n, dtype=up.dtype, device=up.device)
        # Eq. 6 is linear in each map's term and phi is per patch: phi_n * W_r is one coefficient
        # per (patch, map) applied once
        coefficients = scores.unsqueeze(-1) * self.map_weights.to(scores.dtype)  # (B, N, R)
        if up.is_cuda:
            # a fused attention kernel: (B, N, P^2, C) -> (B, C, H/P, P, W/P, P)
            fused = self._attend_fused(queries, keys, values, coefficients)
            fused = fused.reshape(b, grid_h, grid_w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        else:
            # (B, N, C, P^2): C-major, so the fold adds runs of P contiguous pixels
            fused = self._attend_mixed(queries, keys, values, coefficients)
            fused = fused.reshape(b, grid_h, grid_w, c, p, p).permute(0, 3, 1, 4, 2, 5)
        out = (up.reshape(b, c, grid_h, p, grid_w, p) + fused).reshape(b, c, h, w)
        return out, scores.reshape(b, 1, grid_h, grid_w)

    def _queries(self, maps: torch.Tensor) -> torch.Tensor:
        """
        Per-map queries of the residual maps, patch tokens of all maps side by side.

        Args:
            maps: ``(B, R, H, W)`` at the decoder feature's size.

        Returns:
            ``(B, N, R * P^2, d)``: row ``r * P^2 + i`` of patch ``n`` is token ``i`` of map ``r``.
        """
        b, r, h, w = maps.shape
        p, d, c = self.patch_size, self.qk_channels, self.channels
        # channels-last: the grouped 3x3 embedding runs as a oneDNN kernel on the CPU, and its
        # (B, H, W, R * C) memory makes each map's 1x1 query a strided batched matrix product
        embedded = self.embed(maps.contiguous(memory_format=torch.channels_last))  # (B, R * C, H, W)
        pixels = embedded.permute(0, 2, 3, 1).reshape(b * h * w, r, c).transpose(0, 1)  # (R, BHW, C)
        weight = self.query.weight.reshape(r, d, c).transpose(1, 2).to(pixels.dtype)  # (R, C, d)
        bias = self.query.bias
        if bias is None:
            q = torch.bmm(pixels, weight)
        else:
            q = torch.baddbmm(bias.reshape(r, 1, d).to(pixels.dtype), pixels, weight)  # (R, BHW, d)
        # scaled here (R * P^2 * d values per patch) rather than the P^2 x P^2 scores
        q = q * (float(d) ** -0.5)
        q = q.reshape(r, b, h // p, p, w // p, p, d).permute(1, 2, 4, 0, 3, 5, 6)
        return q.reshape(b, (h // p) * (w // p), r * p * p, d)

    def _keys_values(self, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Keys and values of the decoder feature's patch tokens (both 1x1 projections in one product).

        Returns:
            ``(B, N, P^2, d)`` keys and ``(B, N, P^2, C)`` values.
        """
        b, c, h, w = up.shape
        p, d = self.patch_size, self.qk_channels
        rows = up.flatten(2).transpose(1, 2)  # (B, HW, C), a view for NCHW and channels-last
        weight = torch.cat([self.key.weight.reshape(d, c), self.value.weight.reshape(c, c)], dim=0)
        weight = weight.t().to(rows.dtype).unsqueeze(0).expand(b, c, d + c)
        key_bias, value_bias = self.key.bias, self.value.bias
        if key_bias is None or value_bias is None:
            kv = torch.bmm(rows, weight)
        else:
            bias = torch.cat([key_bias, value_bias], dim=0).to(rows.dtype).reshape(1, 1, d + c)
            kv = torch.baddbmm(bias, rows, weight)  # (B, HW, d + C), channels last
        kv = kv.reshape(b, h // p, p, w // p, p, d + c).permute(0, 1, 3, 2, 4, 5)
        kv = kv.reshape(b, (h // p) * (w // p), p * p, d + c)
        keys, values = kv.split([d, c], dim=-1)
        return keys, values

    def _attend_mixed(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, coefficients: torch.Tensor
    ) -> torch.Tensor:
        """
        The mixed attention of every patch from explicit scores (:func:`mixed_patch_attention`; CPU).

        Args:
            queries: ``(B, N, R * T, d)``, already scaled by ``d^-1/2``.
            keys: ``(B, N, T, d)``.
            values: ``(B, N, T, C)``.
            coefficients: ``(B, N, R)``.

        Returns:
            ``(B, N, C, T)``, the transposed per-patch result.
        """
        b, n, rows, d = queries.shape
        t, c = keys.shape[2], values.shape[3]
        fused = mixed_patch_attention(
            queries.reshape(b * n, rows, d),
            keys.reshape(b * n, t, d),
            values.reshape(b * n, t, c),
            coefficients.reshape(b * n, -1),
        )
        return fused.reshape(b, n, c, t)

    def _attend_fused(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, coefficients: torch.Tensor
    ) -> torch.Tensor:
        """
        The same as :meth:`_attend_mixed` with ``F.scaled_dot_product_attention`` (flash /
        memory-efficient kernels on GPU, no ``P^2 x P^2`` scores in memory): the R maps' queries
        are rows of one attention call over the shared keys, their outputs mixed afterwards.

        Returns:
            ``(B, N, T, C)``.
        """
        b, n, rows, d = queries.shape
        t, c = keys.shape[2], values.shape[3]
        r = rows // t
        # the queries are already scaled; SDPA's own scale is set to 1
        attended = F.scaled_dot_product_attention(
            queries, keys.contiguous(), values.contiguous(), scale=1.0
        )  # (B, N, R * T, C)
        mixed = torch.matmul(coefficients.reshape(b * n, 1, r).to(attended.dtype), attended.reshape(b * n, r, t * c))
        return mixed.reshape(b, n, t, c)
