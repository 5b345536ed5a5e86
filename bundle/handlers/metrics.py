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
"""ignite metrics of the MAE pre-training: the mean of a scalar engine output, per mask ratio."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from bundle.networks.masking import check_mask_ratios, ratio_tag
from monai.utils import IgniteInfo, min_version, optional_import

Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric")
reinit__is_reduced, _ = optional_import(
    "ignite.metrics.metric", IgniteInfo.OPT_IMPORT_VERSION, min_version, "reinit__is_reduced"
)
sync_all_reduce, _ = optional_import(
    "ignite.metrics.metric", IgniteInfo.OPT_IMPORT_VERSION, min_version, "sync_all_reduce"
)

__all__ = ["MeanOutput", "lower_is_better", "mae_validation_metrics"]


class MeanOutput(Metric):
    """Mean of a scalar engine output over the samples (batches weighted by their size).

    The MAE's loss of a batch is the mean over its samples (every sample has the same number of
    masked patches), so weighting it by the batch size gives the exact mean over the data set
    even when the last batch is smaller. Reduced over the processes in distributed runs.

    Args:
        key: output entry holding the scalar (e.g. ``"loss"`` or ``"loss_r075"``).
        batch_key: output entry whose first dimension is the batch size (``"image"``).
        device: where the running sums live.
    """

    def __init__(self, key: str = "loss", batch_key: str = "image", device: str | torch.device = "cpu") -> None:
        self.key = key
        self.batch_key = batch_key
        super().__init__(output_transform=self._value_and_batch_size, device=device, skip_unrolling=True)

    def _value_and_batch_size(self, output: Any) -> tuple[torch.Tensor, int]:
        if isinstance(output, (list, tuple)):  # a decollated output repeats the batch values per item
            raise TypeError("MeanOutput needs the engine's output dict: set decollate=False on the engine.")
        return torch.as_tensor(output[self.key]), int(output[self.batch_key].shape[0])

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._count = torch.tensor(0, dtype=torch.long, device=self._device)

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, int]) -> None:
        value, batch = output
        self._sum += value.detach().double().mean().to(self._device) * batch
        self._count += batch

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if int(self._count) == 0:
            raise RuntimeError(f"MeanOutput({self.key!r}) has seen no samples.")
        return float(self._sum / self._count)


def mae_validation_metrics(mask_ratios: Sequence[float], prefix: str = "val_loss") -> dict[str, MeanOutput]:
    """One :class:`MeanOutput` per mask ratio: ``{"val_loss_r050": ..., "val_loss_r075": ...}``."""
    return {f"{prefix}_{ratio_tag(r)}": MeanOutput(key=f"loss_{ratio_tag(r)}") for r in check_mask_ratios(mask_ratios)}


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` of an evaluator whose key metric is a loss (MONAI starts ``best`` at -1)."""
    return best < 0 or current < best
