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
"""Checkpoints written atomically and read with clear errors.

- :class:`AtomicCheckpointSaver` -- MONAI's CheckpointSaver, but writing through a temporary file, with a
  fixed name for the per-epoch checkpoint and a state dict (its best-score memory) for resuming.
- :class:`ModelSaverWithoutValidation` -- the weights of every epoch's end when a run has no validation data
  (MONAI Label's ``val_split`` 0), so that such a run still writes ``models/model.pt``.
- :class:`ResumeCheckpointLoader` -- MONAI's CheckpointLoader that starts fresh when there is no checkpoint yet.
- :class:`NetworkCheckpointLoader` -- network weights with one-line errors, usable without an engine.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bundle.networks.checkpoint import load_network_weights
from bundle.utils.flags import as_flag
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

DiskSaver, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "DiskSaver")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["AtomicCheckpointSaver", "ModelSaverWithoutValidation", "NetworkCheckpointLoader", "ResumeCheckpointLoader"]


class NetworkCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` for network weights with clear errors, usable without an engine.

    ``initialize`` of the configs calls it directly (``$@checkpointloader()``), so loading does not
    depend on building an evaluator; it can still be attached to an engine like MONAI's loader.

    Args:
        load_path: the checkpoint, e.g. ``models/model.pt``.
        load_dict: ``{"model": network}``; every value must be a ``torch.nn.Module``.
        map_location: where to map the tensors.
        name: logger name.
    """

    def __init__(
        self, load_path: str, load_dict: dict[str, nn.Module], map_location: Any = "cpu", name: str | None = None
    ) -> None:
        super().__init__(load_path=load_path, load_dict=load_dict, name=name, map_location=map_location)
        wrong = [k for k, v in load_dict.items() if not isinstance(v, nn.Module)]
        if wrong:
            raise TypeError(f"NetworkCheckpointLoader loads networks only; {wrong} are not torch modules.")

    def __call__(self, engine: Engine | None = None) -> None:
        for key, network in self.load_dict.items():
            load_network_weights(network, self.load_path, key=key, map_location=self.map_location)
        self.logger.info(f"loaded {list(self.load_dict)} from {self.load_path}.")


class _AtomicDiskSaver(DiskSaver):
    """ignite DiskSaver writing to a temporary file then renaming it, under an optional fixed name.

    With a fixed name, ``remove`` of the previous file is a no-op: ``os.replace`` overwrites it,
    so the file never disappears (ignite removes the old checkpoint before writing the new one).
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI :class:`~monai.handlers.CheckpointSaver` whose files are written atomically.

    MONAI 1.6 creates its ignite ``DiskSaver`` with ``atomic=False`` (for group read permission,
    which ignite's atomic path also grants), so an interrupted save can leave a truncated
    ``model.pt``. Here every save goes to a temporary file in ``save_dir`` that is then renamed.
    Additions: ``interval_filename`` gives the interval checkpoint a fixed name (e.g.
    ``checkpoint_last.pt``, overwritten every ``save_interval`` epochs), and :meth:`state_dict`
    returns the key-metric memory (best score so far) so that a resumed run does not overwrite
    the best model with a worse one.

    Args: as :class:`~monai.handlers.CheckpointSaver`, plus

        interval_filename: fixed file name of the interval checkpoint, None for MONAI's
            ``checkpoint_epoch=N.pt`` names.
        enabled: attach to the engine at all; False on the non-main processes of a distributed
            run, which keep the object (its state is part of the resume checkpoint) but never save.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        name: str | None = None,
        file_prefix: str = "",
        save_final: bool = False,
        final_filename: str | None = None,
        save_key_metric: bool = False,
        key_metric_name: str | None = None,
        key_metric_n_saved: int = 1,
        key_metric_filename: str | None = None,
        key_metric_save_state: bool = False,
        key_metric_greater_or_equal: bool = False,
        key_metric_negative_sign: bool = False,
        epoch_level: bool = True,
        save_interval: int = 0,
        n_saved: int | None = None,
        interval_filename: str | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = as_flag(enabled, "enabled")
        if interval_filename is not None and n_saved != 1:
            raise ValueError("interval_filename keeps a single file: set n_saved=1.")
        super().__init__(
            save_dir=save_dir,
            save_dict=save_dict,
            name=name,
            file_prefix=file_prefix,
            save_final=save_final,
            final_filename=final_filename,
            save_key_metric=save_key_metric,
            key_metric_name=key_metric_name,
            key_metric_n_saved=key_metric_n_saved,
            key_metric_filename=key_metric_filename,
            key_metric_save_state=key_metric_save_state,
            key_metric_greater_or_equal=key_metric_greater_or_equal,
            key_metric_negative_sign=key_metric_negative_sign,
            epoch_level=epoch_level,
            save_interval=save_interval,
            n_saved=n_saved,
        )
        for checkpoint, filename in (
            (self._final_checkpoint, final_filename),
            (self._key_metric_checkpoint, key_metric_filename),
            (self._interval_checkpoint, interval_filename),
        ):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(dirname=save_dir, filename=filename)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            super().attach(engine)

    def state_dict(self) -> OrderedDict:
        """The key-metric checkpoint's memory of saved scores (empty without ``save_key_metric``)."""
        if self._key_metric_checkpoint is None:
            return OrderedDict()
        return self._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the memory of saved scores written by :meth:`state_dict`."""
        if self._key_metric_checkpoint is not None and state_dict:
            self._key_metric_checkpoint.load_state_dict(state_dict)


class ModelSaverWithoutValidation(AtomicCheckpointSaver):
    """Save ``save_dict`` as ``filename`` at the end of every epoch of a run without validation data.

    The trained weights are normally written by the validator's best-model saver (the best
    validation Dice). A run whose validation data is empty -- MONAI Label's training with
    ``val_split`` 0 sets ``validate#dataset#data`` to ``[]``, and MONAI's evaluator then skips every
    validation -- would end without a ``model.pt``; this handler, attached to the trainer, writes
    the weights of each epoch's end instead (atomically, one file). With validation data it does
    not attach.

    Args:
        save_dir: folder of the file (the configs' ``ckpt_dir``).
        save_dict: what the file holds, e.g. ``{"model": network, "model_settings": settings}``.
        validation_data: the validation records (``validate#dataset#data``).
        filename: the file name, ``model.pt``.
        enabled: False on the non-main processes of a distributed run.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        validation_data: Sequence[Any] | None,
        filename: str = "model.pt",
        enabled: Any = True,
    ) -> None:
        self.without_validation = not validation_data
        super().__init__(
            save_dir=save_dir,
            save_dict=save_dict,
            save_interval=1,
            n_saved=1,
            interval_filename=filename,
            enabled=as_flag(enabled, "enabled") and self.without_validation,
        )


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI :class:`~monai.handlers.CheckpointLoader` for resuming, tolerant of a first run.

    Attached only when ``enabled``; at the start of the run it loads ``load_path`` when the file
    exists and otherwise logs that training starts from scratch.

    Args:
        load_path: the per-epoch checkpoint, e.g. ``models/checkpoint_last.pt``.
        load_dict: objects to restore, the same dict the checkpoint was saved from.
        enabled: whether to resume at all (the ``resume`` config id).
        map_location: where to map the tensors (the training device).
        name: logger name, None for the engine's logger.
    """

    def __init__(
        self, load_path: str, load_dict: dict, enabled: bool = True, map_location: Any = None, name: str | None = None
    ) -> None:
        super().__init__(load_path=load_path, load_dict=load_dict, name=name, map_location=map_location)
        self.enabled = as_flag(enabled, "resume")

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        if not os.path.isfile(self.load_path):
            self.logger.info(f"resume: no checkpoint at {self.load_path}, training starts from scratch.")
            return
        super().__call__(engine)
        state = engine.state
        self.logger.info(f"resume: continuing after epoch {state.epoch} (iteration {state.iteration}).")
