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
"""Segmentation losses of the paper's recipe (docs/method.md, training)."""

from __future__ import annotations

from monai.losses import DiceFocalLoss, FocalLoss
from torch.nn.modules.loss import _Loss

__all__ = ["LOSS_TYPES", "build_loss"]


LOSS_TYPES = ("dice_focal", "focal")


def build_loss(
    loss_type: str = "dice_focal",
    alpha: float = 0.25,
    gamma: float = 2.0,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    batch_dice: bool = True,
) -> _Loss:
    """The segmentation loss on one-channel lesion logits (B, 1, H, W[, D]) against binary labels.

    Args:
        loss_type: ``"dice_focal"`` (Dice + focal, ATLAS and MSD Lung) or ``"focal"`` (orCaScore).
        alpha: focal loss balance of the lesion class.
        gamma: focal loss focusing exponent.
        lambda_dice: weight of the Dice term (``"dice_focal"`` only).
        lambda_focal: weight of the focal term (``"dice_focal"`` only).
        batch_dice: sum the Dice overlap over the batch before dividing [choice]: most slices hold
            no lesion, and a per-slice Dice of an empty slice is either 0 or 1 and drowns the signal.

    Returns:
        a loss module mapping (logits, label) to a scalar; sigmoid is applied inside.
    """
    if loss_type == "dice_focal":
        return DiceFocalLoss(
            include_background=True,
            sigmoid=True,
            batch=batch_dice,
            gamma=gamma,
            alpha=alpha,
            lambda_dice=lambda_dice,
            lambda_focal=lambda_focal,
        )
    if loss_type == "focal":
        return FocalLoss(include_background=True, use_softmax=False, gamma=gamma, alpha=alpha)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}.")
