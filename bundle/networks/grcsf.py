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
"""GRCSF segmentation network: a UNet++ (or U-Net) with GCUs on the skip connections and RCUs
on the last three decoder layers. See ``docs/architecture.md`` for where each unit sits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from bundle.utils.errors import ConfigError
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from monai.utils import ensure_tuple_rep

from .compensation import GlobalCompensationUnit, RegionalCompensationUnit

__all__ = ["BACKBONES", "GRCSF", "GRCSF_PRESETS", "grcsf_from_settings", "grcsf_preset"]

BACKBONES = ("unetplusplus", "unet")

# Constructor arguments of the named presets (copied by grcsf_preset, never mutated).
GRCSF_PRESETS: dict[str, dict[str, Any]] = {
    # UNet++ widths of Zhou et al. (64 ... 1024): MONAI's BasicUNetPlusPlus at these widths has
    # 36.45 M parameters (paper: 36.63 M). A 3x3 GCU projection brings the full GRCSF to
    # ~43.2 M (paper: 42.85 M); with the 1x1 projection the units add ~1.2 M only, far
    # below the paper's +6.2 M overhead.
    "paper": {"features": (64, 128, 256, 512, 1024, 64), "gcu_projection_kernel_size": 3},
    # the same architecture, narrow enough for CPU demos and unit tests
    "small": {"features": (8, 16, 32, 64, 128, 8), "gcu_projection_kernel_size": 3},
}


def _compensate(feature: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """``X' = X * R + X`` for a later skip feature of a UNet++ level whose GCU produced ``R``."""
    if residual is None:
        return feature
    return torch.addcmul(feature, feature, residual)  # X + X * R in one pass


def _up_channels(in_chns: int, halves: bool) -> int:
    """channels of ``UpCat.upsample``'s output (MONAI's rule, with the default ``pre_conv``)."""
    return in_chns // 2 if halves else in_chns


def _as_flags(value: bool | Sequence[bool], length: int, name: str) -> tuple[bool, ...]:
    if isinstance(value, bool):
        return (value,) * length
    flags = tuple(value)
    if len(flags) != length or not all(isinstance(f, bool) for f in flags):
        raise ValueError(f"{name} must be a bool or a sequence of {length} bools, got {value!r}.")
    return flags


class GRCSF(nn.Module):
    """
    GRCSF (Wang et al., "Improving Lesion Segmentation in Medical Images by Global and Regional
    Feature Compensation") for 2D slices.

    The backbone is MONAI's ``BasicUNetPlusPlus`` (default) or ``BasicUNet`` with identical
    submodule names, so with every unit off the state dict is the backbone's (UNet++: minus its
    three deep-supervision heads ``final_conv_0_{1,2,3}``, which GRCSF does not use) and the
    outputs are identical.

    - GCU (``gcu_levels``, one flag per skip level 0..3, 0 = full resolution): UNet++ computes
      the unit at the first node of a level, ``X^{i,1}``, with ``F = X^{i,0}``, ``S = X^{i+1,0}``
      and ``U`` = the upsampled ``X^{i+1,0}``; its ``R`` then modulates every later skip
      feature of that level (``X^{i,j}' = X^{i,j} * R + X^{i,j}``). U-Net: the unit sits on
      the single skip connection of the level with ``S`` = the encoder feature one level down
      and ``U`` = the upsampled decoder feature; only ``C`` is used.
    - RCU (``rcu_layers``, deepest first): the upsampled features of the last three decoder
      layers, UNet++ nodes ``X^{2,2}``, ``X^{1,3}``, ``X^{0,4}`` (U-Net: ``upcat_3``,
      ``upcat_2``, ``upcat_1``), at 1/4, 1/2 and full resolution. ``M`` replaces ``U`` before
      the concatenation (and, in the U-Net, before that level's GCU).

    Input ``x`` is ``(B, in_channels, H, W)``: the ``image_channels`` image channels first,
    then the residual-map channels that feed the RCUs (ignored when every RCU is off).
    ``H`` and ``W`` must be divisible by 16 and by each active RCU's patch size at its layer.
    """

    # TorchScript constants: the backbone branch not taken is never compiled
    __constants__ = ["unetplusplus", "in_channels", "image_channels"]

    def __init__(
        self,
        in_channels: int = 3,
        image_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (64, 128, 256, 512, 1024, 64),
        backbone: str = "unetplusplus",
        gcu_levels: bool | Sequence[bool] = True,
        rcu_layers: bool | Sequence[bool] = True,
        rcu_patch_sizes: Sequence[int] = (8, 8, 16),
        importance_score: bool = True,
        gcu_reduction: int = 16,
        gcu_projection_kernel_size: int = 1,
        rcu_attention_reduction: int = 8,
        rcu_weight_init: float = 0.1,
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
    ) -> None:
        """
        Args:
            in_channels: image channels + residual-map channels. Defaults to 3 (one image
                channel and the paper's two residual maps).
            image_channels: leading channels of the input that go through the encoder.
            out_channels: number of output logit channels.
            features: six widths as in MONAI's ``BasicUNetPlusPlus``: five encoder levels and
                the width after the last upsampling. Defaults to the paper's UNet++ widths.
            backbone: ``"unetplusplus"`` or ``"unet"``.
            gcu_levels: GCU on/off, one bool for all skip levels or four (level 0 = full
                resolution ... level 3).
            rcu_layers: RCU on/off, one bool or three for the last three decoder layers,
                deepest (1/4 resolution) first.
            rcu_patch_sizes: RCU patch edge length of each of the three layers, deepest first
                (paper: 8, 8, 16 at 224 x 224; 16, 16, 32 at 512 x 512).
            importance_score: use the RCU importance score (``False``: ablation without it).
            gcu_reduction: squeeze-and-excitation ratio inside the GCUs.
            gcu_projection_kernel_size: kernel of the GCU conv projecting the upsampled lower
                feature ``S`` (docs/method.md §2: 1; the ``"paper"`` preset uses 3, see ``GRCSF_PRESETS``).
            rcu_attention_reduction: RCU query/key width is ``C // rcu_attention_reduction``.
            rcu_weight_init: initial value of the RCUs' per-map scalars ``W_r``.
            act: activation type and arguments (backbone and RCU embeddings).
            norm: feature normalization type and arguments.
            bias: whether the backbone convolutions have a bias term.
            dropout: dropout ratio.
            upsample: ``"deconv"``, ``"pixelshuffle"`` or ``"nontrainable"``.
        """
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}.")
        if upsample not in ("deconv", "pixelshuffle", "nontrainable"):
            raise ValueError(f"upsample must be 'deconv', 'pixelshuffle' or 'nontrainable', got {upsample!r}.")
        if image_channels < 1:
            raise ValueError(f"image_channels must be at least 1, got {image_channels}.")
        if in_channels < image_channels:
            raise ValueError(f"in_channels ({in_channels}) must be at least image_channels ({image_channels}).")
        if out_channels < 1:
            raise ValueError(f"out_channels must be at least 1, got {out_channels}.")
        fea = ensure_tuple_rep(features, 6) if isinstance(features, int) else tuple(features)
        if len(fea) != 6 or not all(isinstance(f, int) and f > 0 for f in fea):
            raise ValueError(f"features must be six positive ints, got {features!r}.")
        gcu_flags = _as_flags(gcu_levels, 4, "gcu_levels")
        rcu_flags = _as_flags(rcu_layers, 3, "rcu_layers")
        patch_sizes = tuple(rcu_patch_sizes)
        if len(patch_sizes) != 3 or not all(isinstance(p, int) and p > 0 for p in patch_sizes):
            raise ValueError(f"rcu_patch_sizes must be three positive ints, got {rcu_patch_sizes!r}.")
        num_maps = in_channels - image_channels
        if any(rcu_flags) and num_maps == 0:
            raise ValueError(
                "the RCUs need residual-map channels: in_channels must exceed image_channels "
                "unless every RCU is off (rcu_layers=False)."
            )

        self.unetplusplus = backbone == "unetplusplus"
        self.in_channels = in_channels
        self.image_channels = image_channels
        self.backbone = backbone
        self.gcu_levels = gcu_flags
        self.rcu_layers = rcu_flags
        self.rcu_patch_sizes = patch_sizes
        # patch size each decoder layer's H and W must be divisible by (1 where the RCU is off);
        # the layers are at 1/4, 1/2 and full resolution
        self._rcu_divisors = [p if on else 1 for p, on in zip(patch_sizes, rcu_flags)]

        if self.unetplusplus:
            self._build_unetplusplus(image_channels, out_channels, fea, act, norm, bias, dropout, upsample)
        else:
            self._build_unet(image_channels, out_channels, fea, act, norm, bias, dropout, upsample)

        # GCU of skip level i: F has fea[i] channels, S = level i + 1 has fea[i + 1]; U is the
        # upsampled feature of the node where the unit sits (UNet++ X^{i,1}: from fea[i + 1];
        # U-Net: from the decoder output of level i + 1, fea[i + 1] wide as well). MONAI does not
        # halve the channels when upsampling to level 0.
        for level in range(4):
            unit = None
            if gcu_flags[level]:
                unit = GlobalCompensationUnit(
                    skip_channels=fea[level],
                    down_channels=fea[level + 1],
                    up_channels=_up_channels(fea[level + 1], halves=level > 0),
                    reduction=gcu_reduction,
                    projection_kernel_size=gcu_projection_kernel_size,
                    act=act,
                )
            # setattr, not add_module: a None registered as a submodule would make
            # load_state_dict silently ignore checkpoint keys of a unit that is switched off
            setattr(self, f"gcu_{level}", unit)

        # RCU layer k (deepest first) sits at skip level 2 - k; its U is the upsampled
        # fea[3 - k]-wide decoder feature (not halved at level 0)
        for k in range(3):
            unit = None
            if rcu_flags[k]:
                unit = RegionalCompensationUnit(
                    channels=_up_channels(fea[3 - k], halves=k < 2),
                    num_maps=num_maps,
                    patch_size=patch_sizes[k],
                    importance_score=importance_score,
                    attention_reduction=rcu_attention_reduction,
                    weight_init=rcu_weight_init,
                    act=act,
                )
            setattr(self, f"rcu_{k}", unit)

        for m in self.modules():
            # He initialisation of the conv filters and zero biases (paper, Sec. 4.3)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _build_unetplusplus(self, in_chns, out_chns, fea, act, norm, bias, dropout, upsample) -> None:
        # same attribute names and arguments as monai.networks.nets.BasicUNetPlusPlus
        self.conv_0_0 = TwoConv(2, in_chns, fea[0], act, norm, bias, dropout)
        self.conv_1_0 = Down(2, fea[0], fea[1], act, norm, bias, dropout)
        self.conv_2_0 = Down(2, fea[1], fea[2], act, norm, bias, dropout)
        self.conv_3_0 = Down(2, fea[2], fea[3], act, norm, bias, dropout)
        self.conv_4_0 = Down(2, fea[3], fea[4], act, norm, bias, dropout)

        self.upcat_0_1 = UpCat(2, fea[1], fea[0], fea[0], act, norm, bias, dropout, upsample, halves=False)
        self.upcat_1_1 = UpCat(2, fea[2], fea[1], fea[1], act, norm, bias, dropout, upsample)
        self.upcat_2_1 = UpCat(2, fea[3], fea[2], fea[2], act, norm, bias, dropout, upsample)
        self.upcat_3_1 = UpCat(2, fea[4], fea[3], fea[3], act, norm, bias, dropout, upsample)

        self.upcat_0_2 = UpCat(2, fea[1], fea[0] * 2, fea[0], act, norm, bias, dropout, upsample, halves=False)
        self.upcat_1_2 = UpCat(2, fea[2], fea[1] * 2, fea[1], act, norm, bias, dropout, upsample)
        self.upcat_2_2 = UpCat(2, fea[3], fea[2] * 2, fea[2], act, norm, bias, dropout, upsample)

        self.upcat_0_3 = UpCat(2, fea[1], fea[0] * 3, fea[0], act, norm, bias, dropout, upsample, halves=False)
        self.upcat_1_3 = UpCat(2, fea[2], fea[1] * 3, fea[1], act, norm, bias, dropout, upsample)

        self.upcat_0_4 = UpCat(2, fea[1], fea[0] * 4, fea[5], act, norm, bias, dropout, upsample, halves=False)

        self.final_conv_0_4 = Conv["conv", 2](fea[5], out_chns, kernel_size=1)

    def _build_unet(self, in_chns, out_chns, fea, act, norm, bias, dropout, upsample) -> None:
        # same attribute names and arguments as monai.networks.nets.BasicUNet
        self.conv_0 = TwoConv(2, in_chns, fea[0], act, norm, bias, dropout)
        self.down_1 = Down(2, fea[0], fea[1], act, norm, bias, dropout)
        self.down_2 = Down(2, fea[1], fea[2], act, norm, bias, dropout)
        self.down_3 = Down(2, fea[2], fea[3], act, norm, bias, dropout)
        self.down_4 = Down(2, fea[3], fea[4], act, norm, bias, dropout)

        self.upcat_4 = UpCat(2, fea[4], fea[3], fea[3], act, norm, bias, dropout, upsample)
        self.upcat_3 = UpCat(2, fea[3], fea[2], fea[2], act, norm, bias, dropout, upsample)
        self.upcat_2 = UpCat(2, fea[2], fea[1], fea[1], act, norm, bias, dropout, upsample)
        self.upcat_1 = UpCat(2, fea[1], fea[0], fea[5], act, norm, bias, dropout, upsample, halves=False)

        self.final_conv = Conv["conv", 2](fea[5], out_chns, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, in_channels, H, W)``: image channel(s) first, then the residual maps.

        Returns:
            ``(B, out_channels, H, W)`` logits.
        """
        return self.forward_with_scores(x)[0]

    @torch.jit.export
    def forward_with_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """
        Same as :meth:`forward`, also returning the RCU importance scores.

        Returns:
            ``(logits, scores)``: ``scores`` holds one ``(B, 1, H_l / P_l, W_l / P_l)`` map of
            per-patch scores in (0, 1) for every active RCU layer, deepest first (all ones where
            ``importance_score=False``; an empty list when every RCU is off).
        """
        self._check_input(x)
        image = x[:, : self.image_channels]
        maps = x[:, self.image_channels :]
        if self.unetplusplus:
            return self._forward_unetplusplus(image, maps)
        return self._forward_unet(image, maps)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"GRCSF expects a (B, C, H, W) input, got shape {list(x.shape)}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"GRCSF expects {self.in_channels} input channels ({self.image_channels} image + "
                f"{self.in_channels - self.image_channels} residual maps), got {x.shape[1]}."
            )
        h, w = int(x.shape[2]), int(x.shape[3])
        if h % 16 != 0 or w % 16 != 0:
            raise ValueError(f"input size {h}x{w} must be divisible by 16 (four 2x downsamplings).")
        for k, p in enumerate(self._rcu_divisors):
            scale = 4 >> k
            if (h // scale) % p != 0 or (w // scale) % p != 0:
                raise ValueError(
                    f"input size {h}x{w} gives a {h // scale}x{w // scale} decoder layer that is not "
                    f"divisible by its RCU patch size {p}; the input must be divisible by {scale * p}."
                )

    def _forward_unetplusplus(self, image: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        scores: list[torch.Tensor] = []
        x_0_0 = self.conv_0_0(image)
        x_1_0 = self.conv_1_0(x_0_0)
        x_2_0 = self.conv_2_0(x_1_0)
        x_3_0 = self.conv_3_0(x_2_0)
        x_4_0 = self.conv_4_0(x_3_0)

        # column 1: the first skip concatenation of every level, where its GCU is computed;
        # s_i_j are the (compensated) skip features that later nodes of level i concatenate
        r_0: torch.Tensor | None = None
        r_1: torch.Tensor | None = None
        r_2: torch.Tensor | None = None
        r_3: torch.Tensor | None = None

        u = self.upcat_0_1.upsample(x_1_0)
        s_0_0 = x_0_0
        if self.gcu_0 is not None:
            s_0_0, r_0 = self.gcu_0(x_0_0, x_1_0, u)
        x_0_1 = self.upcat_0_1.convs(torch.cat([s_0_0, u], dim=1))

        u = self.upcat_1_1.upsample(x_2_0)
        s_1_0 = x_1_0
        if self.gcu_1 is not None:
            s_1_0, r_1 = self.gcu_1(x_1_0, x_2_0, u)
        x_1_1 = self.upcat_1_1.convs(torch.cat([s_1_0, u], dim=1))

        u = self.upcat_2_1.upsample(x_3_0)
        s_2_0 = x_2_0
        if self.gcu_2 is not None:
            s_2_0, r_2 = self.gcu_2(x_2_0, x_3_0, u)
        x_2_1 = self.upcat_2_1.convs(torch.cat([s_2_0, u], dim=1))

        u = self.upcat_3_1.upsample(x_4_0)
        s_3_0 = x_3_0
        if self.gcu_3 is not None:
            s_3_0, r_3 = self.gcu_3(x_3_0, x_4_0, u)
        x_3_1 = self.upcat_3_1.convs(torch.cat([s_3_0, u], dim=1))

        # column 2
        s_0_1 = _compensate(x_0_1, r_0)
        s_1_1 = _compensate(x_1_1, r_1)
        s_2_1 = _compensate(x_2_1, r_2)
        u = self.upcat_0_2.upsample(x_1_1)
        x_0_2 = self.upcat_0_2.convs(torch.cat([s_0_0, s_0_1, u], dim=1))
        u = self.upcat_1_2.upsample(x_2_1)
        x_1_2 = self.upcat_1_2.convs(torch.cat([s_1_0, s_1_1, u], dim=1))
        u = self.upcat_2_2.upsample(x_3_1)
        if self.rcu_0 is not None:  # RCU layer 0: X^{2,2}, 1/4 resolution
            u, score = self.rcu_0.forward_with_scores(u, maps)
            scores.append(score)
        x_2_2 = self.upcat_2_2.convs(torch.cat([s_2_0, s_2_1, u], dim=1))

        # column 3
        s_0_2 = _compensate(x_0_2, r_0)
        s_1_2 = _compensate(x_1_2, r_1)
        u = self.upcat_0_3.upsample(x_1_2)
        x_0_3 = self.upcat_0_3.convs(torch.cat([s_0_0, s_0_1, s_0_2, u], dim=1))
        u = self.upcat_1_3.upsample(x_2_2)
        if self.rcu_1 is not None:  # RCU layer 1: X^{1,3}, 1/2 resolution
            u, score = self.rcu_1.forward_with_scores(u, maps)
            scores.append(score)
        x_1_3 = self.upcat_1_3.convs(torch.cat([s_1_0, s_1_1, s_1_2, u], dim=1))

        # column 4
        s_0_3 = _compensate(x_0_3, r_0)
        u = self.upcat_0_4.upsample(x_1_3)
        if self.rcu_2 is not None:  # RCU layer 2: X^{0,4}, full resolution
            u, score = self.rcu_2.forward_with_scores(u, maps)
            scores.append(score)
        x_0_4 = self.upcat_0_4.convs(torch.cat([s_0_0, s_0_1, s_0_2, s_0_3, u], dim=1))

        return self.final_conv_0_4(x_0_4), scores

    def _forward_unet(self, image: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        scores: list[torch.Tensor] = []
        x0 = self.conv_0(image)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)

        # at each level: upsample, RCU (M replaces U), GCU on the skip with U = M, concatenate
        u = self.upcat_4.upsample(x4)
        s = x3
        if self.gcu_3 is not None:
            s = self.gcu_3(x3, x4, u)[0]
        u4 = self.upcat_4.convs(torch.cat([s, u], dim=1))

        u = self.upcat_3.upsample(u4)
        if self.rcu_0 is not None:
            u, score = self.rcu_0.forward_with_scores(u, maps)
            scores.append(score)
        s = x2
        if self.gcu_2 is not None:
            s = self.gcu_2(x2, x3, u)[0]
        u3 = self.upcat_3.convs(torch.cat([s, u], dim=1))

        u = self.upcat_2.upsample(u3)
        if self.rcu_1 is not None:
            u, score = self.rcu_1.forward_with_scores(u, maps)
            scores.append(score)
        s = x1
        if self.gcu_1 is not None:
            s = self.gcu_1(x1, x2, u)[0]
        u2 = self.upcat_2.convs(torch.cat([s, u], dim=1))

        u = self.upcat_1.upsample(u2)
        if self.rcu_2 is not None:
            u, score = self.rcu_2.forward_with_scores(u, maps)
            scores.append(score)
        s = x0
        if self.gcu_0 is not None:
            s = self.gcu_0(x0, x1, u)[0]
        u1 = self.upcat_1.convs(torch.cat([s, u], dim=1))

        return self.final_conv(u1), scores


def grcsf_preset(name: str, **overrides: Any) -> GRCSF:
    """
    Build a GRCSF from a named preset (:data:`GRCSF_PRESETS`), with keyword overrides.

    Examples::

        net = grcsf_preset("paper")                                            # full GRCSF
        bare = grcsf_preset("paper", gcu_levels=False, rcu_layers=False)        # bare UNet++
        unet = grcsf_preset("small", backbone="unet", rcu_layers=False)         # U-Net + GCU
        ablation = grcsf_preset("paper", importance_score=False)                # RCU w/o scores
    """
    if name not in GRCSF_PRESETS:
        raise ValueError(f"unknown GRCSF preset {name!r}; available: {sorted(GRCSF_PRESETS)}.")
    kwargs = dict(GRCSF_PRESETS[name])
    kwargs.update(overrides)
    return GRCSF(**kwargs)


def grcsf_from_settings(settings: Mapping[str, Any], **overrides: Any) -> GRCSF:
    """The GRCSF a model was trained as, from its settings (``model_settings`` of its weights file,
    see :func:`bundle.networks.checkpoint.resolve_model_settings`).

    Args:
        settings: ``network_preset``, ``network_options`` (constructor arguments over the preset),
            ``rcu_patch_sizes`` and ``mask_ratios`` (one residual-map input channel per ratio).
        overrides: constructor arguments over those, except ``dropout``.

    Raises:
        ConfigError: ``dropout`` among ``overrides``: that is how MONAI Label's epistemic scoring
            (``--conf epistemic_model``) asks for Monte-Carlo dropout, which this bundle does not
            offer (docs/monailabel.md, *Epistemic scoring*): MONAI Label takes the dimension from
            the 2D network's input shape and computes the entropy of the 3D predictions over the
            wrong axes, and the network is trained without dropout.
    """
    if "dropout" in overrides:
        raise ConfigError(
            f"network_def#dropout={overrides['dropout']!r}: MONAI Label's epistemic scoring (--conf epistemic_model) "
            "is not supported by the GRCSF bundle (its entropy of the 3D predictions of a 2D network runs over the "
            "wrong axes, and the network is trained without dropout; docs/monailabel.md): start the server "
            "without --conf epistemic_model."
        )
    kwargs: dict[str, Any] = dict(settings.get("network_options") or {})
    kwargs["in_channels"] = 1 + len(settings["mask_ratios"])
    kwargs["rcu_patch_sizes"] = tuple(int(p) for p in settings["rcu_patch_sizes"])
    kwargs.update(overrides)
    return grcsf_preset(str(settings["network_preset"]), **kwargs)
