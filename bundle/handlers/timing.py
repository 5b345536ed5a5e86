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
"""Where a training epoch's time goes: waiting for data against computing (docs/speed.md).

A device that waits for the data loader is a device that is paid for and idle. The handler splits
every epoch of an ignite/MONAI engine into

- **data wait**: the engine blocked in the data loader (``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``,
  plus the start of the loader's iterator at the epoch's start: worker processes are forked there);
- **compute**: the engine's iteration (``ITERATION_STARTED`` -> ``ITERATION_COMPLETED``: the batch
  moved to the device, forward, loss, backward, optimizer step). On CUDA the device is
  synchronised before the clock is read (``sync_device``), so that queued kernels count as
  compute and not as the next batch's wait;
- **other**: the rest of the epoch (handlers of other events, e.g. loss logging).

Attach it before the other iteration-level handlers (ignite runs the handlers of an event in
attach order), so that their time counts as "other" and not as compute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from bundle.utils.flags import as_flag
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["IterationTimingHandler", "batch_size_of"]

#: the scalars written per epoch, under ``<tag_prefix>/<name>``
SCALARS = (
    "data_wait_s",
    "compute_s",
    "other_s",
    "epoch_s",
    "data_wait_percent",
    "steady_data_wait_percent",
    "samples_per_s",
)


def batch_size_of(batch: Any) -> int:
    """The number of samples in a collated batch: the first dimension of its first tensor (0 if none).

    Args:
        batch: a tensor, a dict of tensors (MONAI's collated dicts), or a list/tuple of them.
    """
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        if isinstance(item, (torch.Tensor, Mapping, list, tuple)):
            size = batch_size_of(item)
            if size:
                return size
    return 0


def _shares(record: dict[str, float]) -> dict[str, float]:
    """``record`` with the data wait's share of the epoch (all, and after each epoch's first batch) and
    the throughput."""
    epoch_s, wait, first = record["epoch_s"], record["data_wait_s"], record["epoch_start_wait_s"]
    steady = epoch_s - first
    return {
        **record,
        "data_wait_percent": 100.0 * wait / epoch_s if epoch_s > 0 else 0.0,
        "steady_data_wait_percent": 100.0 * (wait - first) / steady if steady > 0 else 0.0,
        "samples_per_s": record["samples"] / epoch_s if epoch_s > 0 else 0.0,
    }


class IterationTimingHandler:
    """Per epoch: data wait, compute and other time of the training iterations; logged and kept.

    The wait of an epoch's first batch is also reported apart (``epoch_start_wait_s``): it holds
    the start of the loader's iterator and of its worker processes, a cost per epoch that short
    epochs (a benchmark's) show far above its share in real training, where an epoch has thousands
    of iterations. ``steady_data_wait_percent`` is the share without it.

    Every epoch it writes one log line through the engine's logger (``epoch 3: 40 iterations in
    12.30 s: data wait 0.80 s (6.5 %; 6.1 % after the first batch), compute 11.30 s, other 0.20 s;
    26.0 samples/s``) and, with a ``log_dir``, the TensorBoard scalars ``<tag_prefix>/<name>`` for
    every name of :data:`SCALARS` at the epoch number. The numbers of every epoch are kept in
    :attr:`history` (a list of dicts) for scripts.

    Args:
        log_dir: TensorBoard folder (an event file of its own is written there); None: log line only.
        tag_prefix: prefix of the TensorBoard tags.
        sync_device: synchronise CUDA before reading the clock at the end of an iteration (an
            accurate split; without it queued kernels show up as the next batch's data wait).
        enabled: attach at all (False on the non-main processes of a distributed run).

    Attributes:
        history: one dict per epoch: ``epoch``, ``iterations``, ``samples``, ``data_wait_s``
            (including ``epoch_start_wait_s``), ``epoch_start_wait_s``, ``compute_s``, ``other_s``,
            ``epoch_s``, ``data_wait_percent``, ``steady_data_wait_percent``, ``samples_per_s``.
    """

    def __init__(
        self, log_dir: str | None = None, tag_prefix: str = "timing", sync_device: bool = True, enabled: bool = True
    ) -> None:
        self.log_dir = log_dir
        self.tag_prefix = str(tag_prefix)
        self.sync_device = as_flag(sync_device, "sync_device")
        self.enabled = as_flag(enabled, "enabled")
        self.history: list[dict[str, float]] = []
        self._writer: Any = None
        self._reset()

    def _reset(self) -> None:
        self._epoch_start = time.perf_counter()
        self._batch_start: float | None = None
        self._iteration_start: float | None = None
        self._first_batch = True
        self._epoch_start_wait = 0.0
        self._wait = 0.0
        self._compute = 0.0
        self._iterations = 0
        self._samples = 0

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._get_batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._get_batch_completed)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def _sync(self) -> None:
        if self.sync_device and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def _epoch_started(self, engine: Engine) -> None:
        self._reset()

    def _get_batch_started(self, engine: Engine) -> None:
        now = time.perf_counter()
        # the first batch of an epoch waits from EPOCH_STARTED: ignite starts the loader's iterator
        # (and its workers) in between
        self._batch_start = self._epoch_start if self._first_batch else now

    def _get_batch_completed(self, engine: Engine) -> None:
        if self._batch_start is not None:
            waited = time.perf_counter() - self._batch_start
            self._wait += waited
            if self._first_batch:
                self._epoch_start_wait = waited
                self._first_batch = False
            self._batch_start = None
        self._samples += batch_size_of(engine.state.batch)

    def _iteration_started(self, engine: Engine) -> None:
        self._iteration_start = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        if self._iteration_start is None:
            return
        self._sync()
        self._compute += time.perf_counter() - self._iteration_start
        self._iteration_start = None
        self._iterations += 1

    def _epoch_completed(self, engine: Engine) -> None:
        epoch_s = time.perf_counter() - self._epoch_start
        wait, first = self._wait, self._epoch_start_wait
        record = _shares(
            {
                "epoch": int(engine.state.epoch),
                "iterations": self._iterations,
                "samples": self._samples,
                "data_wait_s": wait,
                "epoch_start_wait_s": first,
                "compute_s": self._compute,
                "other_s": max(0.0, epoch_s - wait - self._compute),
                "epoch_s": epoch_s,
            }
        )
        self.history.append(record)
        logger = getattr(engine, "logger", None) or logging.getLogger(__name__)
        logger.info(
            f"epoch {record['epoch']}: {record['iterations']} iterations in {epoch_s:.2f} s: "
            f"data wait {wait:.2f} s ({record['data_wait_percent']:.1f} %; "
            f"{record['steady_data_wait_percent']:.1f} % after the first batch), compute {record['compute_s']:.2f} s, "
            f"other {record['other_s']:.2f} s; {record['samples_per_s']:.1f} samples/s"
        )
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=self.log_dir)
            for name in SCALARS:
                self._writer.add_scalar(f"{self.tag_prefix}/{name}", record[name], record["epoch"])
            self._writer.flush()

    def summary(self, skip_first: int = 0) -> dict[str, float]:
        """Totals over the epochs of :attr:`history` after the first ``skip_first`` (warm-up) ones."""
        epochs = self.history[skip_first:]
        totals: dict[str, float] = {k: int(sum(e[k] for e in epochs)) for k in ("iterations", "samples")}
        for key in ("data_wait_s", "epoch_start_wait_s", "compute_s", "other_s", "epoch_s"):
            totals[key] = float(sum(e[key] for e in epochs))
        return {**_shares(totals), "epochs": len(epochs)}

    def close(self, engine: Engine | None = None) -> None:
        """Flush and close the TensorBoard writer (at the end of the run)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
