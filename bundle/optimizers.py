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
"""Learning-rate schedules of the paper's recipe (docs/method.md, training)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monai.optimizers import WarmupCosineSchedule
from torch.optim import Optimizer

__all__ = ["WarmupCosineLR", "no_step_argument", "validation_metric_of"]


class WarmupCosineLR(WarmupCosineSchedule):
    """Linear warm-up from the optimizer's lr to ``warmup_lr_factor`` times it, then cosine decay.

    The paper (Sec. 4.3) starts at lr 1e-4 and lets it rise x10 during the first five epochs
    before a cosine decay. MONAI's :class:`~monai.optimizers.WarmupCosineSchedule` implements the
    shape but scales *down* from the optimizer's lr, so this class writes the peak lr
    (base x factor) into the optimizer's parameter groups and starts the warm-up at
    ``1 / warmup_lr_factor`` of it: the optimizer is configured with the paper's base lr.

    Step it once per iteration (``LrScheduleHandler(epoch_level=False)``). Its state dict is the
    torch LRScheduler one (step counter and schedule), so a resumed run continues on the same
    curve; resuming with a different schedule (``max_epochs``, batch size or the number of
    slices per epoch changed) is refused with a clear message, because the restored cosine
    would silently run past its end and rise again.

    Args:
        optimizer: optimizer whose every parameter group's ``lr`` is the base (start) lr.
        iterations_per_epoch: optimizer steps per epoch (``len(train_dataloader)``).
        max_epochs: epochs of the whole schedule; the cosine reaches ``end_lr`` at its end.
        warmup_epochs: epochs of the linear warm-up.
        warmup_lr_factor: peak lr / base lr (10 in the paper), >= 1.
        end_lr: lower bound of the lr after the warm-up.
        last_epoch: index of the last step, -1 to start a new schedule.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        iterations_per_epoch: int,
        max_epochs: int,
        warmup_epochs: int = 5,
        warmup_lr_factor: float = 10.0,
        end_lr: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if iterations_per_epoch < 1 or max_epochs < 1:
            raise ValueError(
                f"WarmupCosineLR needs iterations_per_epoch >= 1 and max_epochs >= 1, "
                f"got {iterations_per_epoch} and {max_epochs} (is the training data set empty?)."
            )
        if warmup_lr_factor < 1.0:
            raise ValueError(f"warmup_lr_factor must be >= 1, got {warmup_lr_factor}.")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        if last_epoch == -1:
            # WarmupCosineSchedule multiplies the groups' lr by a factor in [1/factor, 1] during the
            # warm-up, so the groups must hold the peak; 'initial_lr' is what torch records from it.
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * warmup_lr_factor
        self.iterations_per_epoch = int(iterations_per_epoch)
        self.max_epochs = int(max_epochs)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_lr_factor = float(warmup_lr_factor)
        super().__init__(
            optimizer=optimizer,
            warmup_steps=self.warmup_epochs * self.iterations_per_epoch,
            t_total=self.max_epochs * self.iterations_per_epoch,
            end_lr=end_lr,
            cycles=0.5,
            last_epoch=last_epoch,
            warmup_multiplier=1.0 / self.warmup_lr_factor,
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step counter; refuse a checkpoint written for a different schedule."""
        fields = ("iterations_per_epoch", "max_epochs", "warmup_epochs", "warmup_lr_factor", "end_lr")
        changed = {k: (state_dict[k], getattr(self, k)) for k in fields if k in state_dict}
        changed = {k: (old, new) for k, (old, new) in changed.items() if old != new}
        if changed:
            details = ", ".join(f"{k}: checkpoint {old} vs now {new}" for k, (old, new) in changed.items())
            raise ValueError(
                "cannot resume the lr schedule: the checkpoint was written for a different schedule "
                f"({details}). "
                "Resume with the settings of the interrupted run, or start a new run (resume=false)."
            )
        super().load_state_dict(state_dict)


def no_step_argument(engine: object) -> tuple:
    """``step_transform`` of MONAI's LrScheduleHandler for schedulers whose ``step()`` takes no value
    (every one but ``ReduceLROnPlateau``, which steps on the validation loss)."""
    return ()


def validation_metric_of(evaluator: object, name: str = "val_loss") -> Callable[[object], float]:
    """``step_transform`` of MONAI's LrScheduleHandler for ``ReduceLROnPlateau``: the evaluator's
    latest value of the metric ``name`` (attach the handler after the validation)."""

    def value(engine: object) -> float:
        return float(evaluator.state.metrics[name])  # type: ignore[attr-defined]

    return value
