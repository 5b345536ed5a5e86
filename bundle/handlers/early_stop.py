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
"""Early stopping on a validation metric, resumable."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from monai.handlers import EarlyStopHandler
from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["ResumableEarlyStopHandler"]


class ResumableEarlyStopHandler(EarlyStopHandler):
    """Early stopping on one validation metric, with a state dict for resuming.

    Attach it to the evaluator: after every validation the score is read from
    ``engine.state.metrics[metric_name]`` and the trainer stops after ``patience`` validations
    without improvement. In distributed training the metric must already be reduced over the
    ranks (MONAI cumulative metrics are), so that every rank stops at the same epoch.

    Args:
        patience: validations without improvement before stopping.
        metric_name: the evaluator metric to watch, e.g. ``"val_loss"``.
        trainer: the trainer to stop.
        greater_is_better: False for losses (lower is better), True for e.g. Dice.
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(
        self,
        patience: int,
        metric_name: str = "val_loss",
        trainer: Engine | None = None,
        greater_is_better: bool = False,
        min_delta: float = 0.0,
    ) -> None:
        self.metric_name = metric_name
        self.greater_is_better = greater_is_better
        super().__init__(
            patience=patience, score_function=self._score, trainer=trainer, min_delta=min_delta, epoch_level=True
        )

    def _score(self, engine: Engine) -> float:
        if self.metric_name not in engine.state.metrics:
            raise KeyError(
                f"early stopping watches {self.metric_name!r}, not among the metrics {list(engine.state.metrics)}."
            )
        value = float(engine.state.metrics[self.metric_name])
        return value if self.greater_is_better else -value

    def state_dict(self) -> OrderedDict:
        """``counter`` (validations without improvement) and ``best_score``."""
        if self._handler is None:
            raise RuntimeError("set the trainer of the early stop handler before saving its state.")
        return self._handler.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if self._handler is None:
            raise RuntimeError("set the trainer of the early stop handler before loading its state.")
        self._handler.load_state_dict(state_dict)
