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
"""ignite's progress bar as a handler for MONAI engines' handler lists."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from bundle.utils.flags import as_flag
from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["ProgressBarHandler", "every_n_iterations"]


class ProgressBarHandler:
    """ignite's tqdm progress bar (with the running loss) as a handler for MONAI engines' handler lists.

    The bar is drawn only on a terminal: written to a log file or a pipe (MONAI Label's training
    task, whose last 20 output lines are what ``GET /train/`` shows) every redraw would be a line,
    and the StatsHandler's loss lines say the same.

    Args:
        enabled: attach at all (the ``progress`` config id).
        output_transform: engine output -> value(s) shown next to the bar.
        persist: keep the finished bar of each epoch.
        stream: where the bar goes (ignite writes to stderr); only its ``isatty()`` is read.
    """

    def __init__(
        self,
        enabled: bool = True,
        output_transform: Callable | None = None,
        persist: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self.enabled = as_flag(enabled, "progress")
        self.output_transform = output_transform
        self.persist = persist
        self.stream = stream

    def attach(self, engine: Engine) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        if not (self.enabled and stream.isatty()):
            return
        from ignite.handlers import ProgressBar

        ProgressBar(persist=self.persist).attach(engine, output_transform=self.output_transform)


def every_n_iterations(n: int) -> Callable[[Engine, int], bool]:
    """``iteration_log`` of MONAI's StatsHandler / TensorBoardStatsHandler: log every ``n``-th iteration."""
    n = max(1, int(n))

    def due(engine: Engine, iteration: int) -> bool:
        return iteration % n == 0

    return due
