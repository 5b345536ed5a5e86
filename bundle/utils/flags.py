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
"""Command-line values of the configs, parsed in one place.

``python -m monai.bundle run ... --overwrite false`` hands the config the *string* ``"false"``
(the command line parses only Python literals such as ``False``), which Python finds true; MONAI
Label sets ``device`` to a string such as ``"cuda"``. Every switch of the bundle goes through
:func:`as_flag` and every device through :func:`as_device`: the components of the bundle call
them on their arguments, and the configs call them (or :func:`amp_enabled`) where a setting feeds
a MONAI or torch class directly.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError
from .runtime import default_device

__all__ = ["amp_enabled", "as_device", "as_flag"]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "none", "null", "")


def as_flag(value: Any, name: str = "switch") -> bool:
    """A switch as a bool: True/False, 0/1, or the strings true/false/yes/no/on/off/1/0 in any case.

    Raises:
        ConfigError: any other string (e.g. a misspelt ``--amp flase``), naming the switch.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}.")
    return bool(value)


def as_device(device: Any = None) -> torch.device:
    """A device from a ``torch.device``, a string (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or None
    (:func:`default_device`). ``"cuda"`` without a GPU is refused with a clear message."""
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto", "none")):
        return default_device()
    try:
        result = device if isinstance(device, torch.device) else torch.device(str(device).strip())
    except RuntimeError as e:
        raise ConfigError(f"device: {device!r} is not a device (use cpu, cuda or cuda:N).") from e
    if result.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} asked for, but this machine has no CUDA GPU (use cpu).")
    return result


def amp_enabled(amp: Any, device: Any) -> bool:
    """Whether MONAI's engines should run with ``amp``: the switch is on and the device is a GPU
    (float16 autocast with a gradient scaler; on the CPU the engines run float32)."""
    return as_flag(amp, "amp") and as_device(device).type == "cuda"
