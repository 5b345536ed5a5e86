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
"""Training that stops cleanly or repeats exactly.

- :class:`NonFiniteLossGuard` -- a NaN or infinite loss stops the run at once with a
  :class:`~bundle.utils.errors.TrainingError` naming the iteration and the checkpoints that are
  still intact (nothing is saved after the bad step: checkpoints are written at epoch ends).
- :class:`EpochSeedHandler` -- every epoch starts from random states that depend only on the seed
  and the epoch number, so that a run resumed after an interruption draws the same slices and
  augmentations as an uninterrupted one and ends with the same weights.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from bundle.utils.errors import TrainingError
from monai.handlers import from_engine
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["EpochSeedHandler", "NonFiniteLossGuard", "epoch_seed"]


def _first_value(output: Any) -> float:
    while isinstance(output, (tuple, list)):
        output = output[0]
    return float(output.detach().float().mean() if isinstance(output, torch.Tensor) else output)


class NonFiniteLossGuard:
    """Stop training at the first NaN or infinite loss, with a message saying what is left.

    Attached to the trainer at ``ITERATION_COMPLETED``; raises
    :class:`~bundle.utils.errors.TrainingError` (one line on the command line) naming the epoch and
    iteration, the loss, and the checkpoint files that exist and were written before the bad
    step (the best weights and the last complete epoch).

    Args:
        checkpoints: files to report as intact when they exist (e.g. ``models/model.pt``,
            ``models/checkpoint_last.pt``).
        output_transform: engine output -> the loss (default ``from_engine(["loss"], first=True)``).
    """

    def __init__(self, checkpoints: Sequence[str] = (), output_transform: Callable[[Any], Any] | None = None) -> None:
        self.checkpoints = [os.fspath(p) for p in checkpoints]
        self.output_transform = output_transform or from_engine(["loss"], first=True)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = _first_value(self.output_transform(engine.state.output))
        if math.isfinite(loss):
            return
        intact = [p for p in self.checkpoints if os.path.isfile(p)]
        kept = f"intact: {', '.join(intact)}" if intact else "no checkpoint was written yet"
        raise TrainingError(
            f"training stopped at epoch {engine.state.epoch}, iteration {engine.state.iteration}: the loss is "
            f"{loss}; nothing was saved after it ({kept}); lower the learning rate or check the data."
        )


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of ``epoch`` (1-based) of a run seeded with ``seed``: distinct per epoch, < 2**32."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**32)


class EpochSeedHandler:
    """Re-seed every random state a training epoch uses from (``seed``, epoch) at ``EPOCH_STARTED``.

    The epoch's slice sampling, its DataLoader workers (their seeds derive from torch's) and the
    random transforms of ``transforms`` then depend only on the seed and the epoch number, not on
    what ran before in the process: a run resumed from the checkpoint of epoch N (after a crash or
    a kill) repeats epochs N+1, ... exactly as the uninterrupted run does. (The iterator of the data
    loader is created after ``EPOCH_STARTED`` by ignite, so the sampler draws from the new state.)

    Args:
        seed: the run's seed.
        transforms: MONAI ``Randomizable`` transforms (e.g. a ``Compose``) to re-seed too; their
            random states are their own, not numpy's global one.
    """

    def __init__(self, seed: int = 0, transforms: Sequence[Any] | Any = ()) -> None:
        self.seed = int(seed)
        self.transforms = list(transforms) if isinstance(transforms, (list, tuple)) else [transforms]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        value = epoch_seed(self.seed, engine.state.epoch)
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)
        for transform in self.transforms:
            if transform is not None and hasattr(transform, "set_random_state"):
                transform.set_random_state(seed=value)
