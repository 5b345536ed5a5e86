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
"""PNG panels of the MAE's reconstructions of fixed validation slices during pre-training."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from bundle.networks.mae import pixel_mask, reconstruction_from_prediction, unwrap_parallel
from bundle.networks.masking import check_mask_ratios
from bundle.utils.io import atomic_output
from monai.networks.utils import eval_mode
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
logger = logging.getLogger(__name__)

__all__ = ["MAESamplesHandler"]


class MAESamplesHandler:
    """Write MAE reconstruction panels of a few fixed validation slices every ``interval`` epochs.

    ``<output_dir>/epoch_XXX.png``: one row per (slice, mask ratio), columns input / masked
    input / reconstruction (decoder at masked patches, input at visible ones) / residual
    ``|input - reconstruction|``. Masks are seeded per (slice, ratio), so consecutive panels
    differ only by the weights. Written atomically; also after the last epoch.

    Args:
        network: the MAE.
        dataset: validation slice data set; items are dicts with ``image_key`` (C, H, W).
        output_dir: folder of the PNGs, e.g. ``<output_dir>/mae_samples``.
        mask_ratios: one row per ratio.
        num_samples: slices shown, evenly spaced over ``dataset`` (ignored with ``indices``).
        indices: data set indices of the slices to show.
        interval: epochs between panels.
        seed: seed of the masks.
        image_key: item key of the slice.
        device: where to run the MAE, None: where its parameters are.
    """

    def __init__(
        self,
        network: nn.Module,
        dataset: Sequence,
        output_dir: str | os.PathLike,
        mask_ratios: Sequence[float] = (0.5, 0.75),
        num_samples: int = 4,
        indices: Sequence[int] | None = None,
        interval: int = 10,
        seed: int = 0,
        image_key: str = "image",
        device: str | torch.device | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        self.network = network
        self.dataset = dataset
        self.output_dir = os.fspath(output_dir)
        self.mask_ratios = check_mask_ratios(mask_ratios)
        self.num_samples = int(num_samples)
        self.indices = None if indices is None else [int(i) for i in indices]
        self.interval = int(interval)
        self.seed = int(seed)
        self.image_key = image_key
        self.device = None if device is None else torch.device(device)
        self._samples: tuple[torch.Tensor, list[str]] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _fixed_samples(self) -> tuple[torch.Tensor, list[str]]:
        if self._samples is None:
            if len(self.dataset) == 0:
                raise ValueError("MAESamplesHandler: the validation data set is empty.")
            indices = self.indices
            if indices is None:
                count = max(1, min(self.num_samples, len(self.dataset)))
                indices = [round(float(i)) for i in np.linspace(0, len(self.dataset) - 1, count)]
            items = [self.dataset[i] for i in indices]
            images = torch.stack([torch.as_tensor(item[self.image_key]).float() for item in items])
            names = [
                f"{item.get('subject', i)} slice {item.get('slice_index', '?')}" for i, item in zip(indices, items)
            ]
            self._samples = (images.as_tensor() if hasattr(images, "as_tensor") else images, names)
        return self._samples

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        last = engine.state.max_epochs is not None and epoch >= int(engine.state.max_epochs)
        if epoch % self.interval != 0 and not last:
            return
        self.write(epoch)

    def panels(self) -> list[tuple[str, float, list[np.ndarray]]]:
        """Rows of (name, ratio, [input, masked input, reconstruction, residual]) as (H, W) arrays."""
        images, names = self._fixed_samples()
        mae = unwrap_parallel(self.network)
        device = self.device or next(mae.parameters()).device
        images = images.to(device)
        rows = []
        with eval_mode(mae):
            for i, ratio in enumerate(self.mask_ratios):
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
                mask = mae.random_masks(images.shape[0], ratio, generator=generator, device=device)
                _, pred, mask = mae(images, mask_ratio=ratio, mask=mask)
                recon = reconstruction_from_prediction(mae, images, pred, mask).clamp(0.0, 1.0)
                masked = pixel_mask(mae, mask, pred, images.shape[-2:])
                for b in range(images.shape[0]):
                    x = images[b, 0].float().cpu().numpy()
                    m = masked[b, 0].float().cpu().numpy()
                    r = recon[b, 0].float().cpu().numpy()
                    rows.append((names[b], ratio, [x, np.where(m > 0.5, np.nan, x), r, np.abs(x - r)]))
        rows.sort(key=lambda row: names.index(row[0]))  # one block of ratios per slice
        return rows

    def write(self, epoch: int) -> str:
        """Draw the panel of ``epoch`` and replace ``<output_dir>/epoch_XXX.png``; returns its path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = self.panels()
        titles = ("input", "masked input", "reconstruction", "|residual|")
        fig = Figure(figsize=(4 * 2.2, len(rows) * 2.2 + 0.4), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(rows), 4, squeeze=False)
        residual_max = max(max(float(np.nanmax(row[2][3])), 1e-6) for row in rows)
        for r, (name, ratio, arrays) in enumerate(rows):
            for c, array in enumerate(arrays):
                ax = axes[r, c]
                # (H, W) are the first and second in-plane volume axes; transposed with origin "lower"
                # an axial RAS slice shows right-left horizontally and anterior up
                cmap, vmax = ("magma", residual_max) if c == 3 else ("gray", 1.0)
                ax.imshow(array.T, origin="lower", cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(titles[c], fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"{name}\nmask {ratio:.2f}", fontsize=7)
        fig.suptitle(f"MAE reconstructions, epoch {epoch}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(self.output_dir, f"epoch_{epoch:03d}.png")
        with atomic_output(path, overwrite=True) as tmp:
            fig.savefig(tmp, format="png")
            os.chmod(tmp, 0o644)  # the temporary file is created private (0600); the panel is not
        logger.info(f"MAE sample panel written to {path}")
        return path
