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
"""A PNG of the training loss and the validation metrics per epoch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from bundle.utils.flags import as_flag
from bundle.utils.io import atomic_output
from monai.handlers import from_engine
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["TrainingCurvesHandler"]


def _first_loss(output: Any) -> float:
    """The scalar loss of one iteration from ``from_engine(["loss"], first=True)``-like outputs."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    return float(output.item() if isinstance(output, torch.Tensor) else output)


class TrainingCurvesHandler:
    """Plot the mean training loss and validation metrics per epoch into a PNG.

    Attach it to the trainer *after* the ``ValidationHandler`` (ignite runs the handlers of an
    event in attach order), so the evaluator's metrics of the epoch are available. The PNG is
    rewritten atomically at the end of every epoch; the history is part of :meth:`state_dict`,
    so a resumed run draws the whole curve.

    Args:
        output_path: the PNG file, e.g. ``<output_dir>/training_curves.png``.
        evaluator: the validation engine whose ``state.metrics`` hold the validation values.
        metric_names: evaluator metrics to plot; names containing "loss" share the loss panel.
        output_transform: maps ``engine.state.output`` to the iteration loss, default
            ``from_engine(["loss"], first=True)``.
        enabled: attach to the engine at all; False on the non-main processes of a distributed
            run (they keep the object, whose history is part of the resume checkpoint).
    """

    def __init__(
        self,
        output_path: str,
        evaluator: Engine | None = None,
        metric_names: Sequence[str] = ("val_loss", "val_mean_dice"),
        output_transform: Callable[[Any], Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.output_path = Path(output_path)
        self.evaluator = evaluator
        self.metric_names = tuple(metric_names)
        self.output_transform = output_transform or from_engine(["loss"], first=True)
        self.enabled = as_flag(enabled, "enabled")
        names = ("epoch", "train_loss", *self.metric_names)
        self.history: dict[str, list[float]] = {name: [] for name in names}
        self._loss_sum = 0.0
        self._loss_count = 0

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._loss_sum, self._loss_count = 0.0, 0

    def _accumulate(self, engine: Engine) -> None:
        self._loss_sum += _first_loss(self.output_transform(engine.state.output))
        self._loss_count += 1

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        self.history["epoch"].append(epoch)
        self.history["train_loss"].append(self._loss_sum / max(self._loss_count, 1))
        validated = self.evaluator is not None and getattr(self.evaluator.state, "epoch", None) == epoch
        for name in self.metric_names:
            value = self.evaluator.state.metrics.get(name) if validated else None  # type: ignore[union-attr]
            self.history[name].append(float(value) if value is not None else math.nan)
        self.write_png()

    def write_png(self) -> None:
        """Draw the history and replace ``output_path`` atomically."""
        # matplotlib's object API with the Agg canvas: no pyplot global state, no display needed
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        loss_names = ["train_loss"] + [m for m in self.metric_names if "loss" in m]
        other_names = [m for m in self.metric_names if "loss" not in m]
        fig = Figure(figsize=(10 if other_names else 5, 4), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2 if other_names else 1, squeeze=False)[0]
        for ax, names, ylabel in ((axes[0], loss_names, "loss"), (axes[-1], other_names, "metric")):
            if not names:
                continue
            for name in names:
                ax.plot(self.history["epoch"], self.history[name], marker="o", label=name)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        with atomic_output(self.output_path, overwrite=True) as tmp:
            fig.savefig(tmp, format="png")

    def state_dict(self) -> dict[str, list[float]]:
        """The per-epoch history (plain lists of floats)."""
        return {k: list(v) for k, v in self.history.items()}

    def load_state_dict(self, state_dict: Mapping[str, Sequence[float]]) -> None:
        for key in self.history:
            self.history[key] = list(state_dict.get(key, []))
