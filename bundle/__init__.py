"""GRCSF lesion segmentation as a MONAI bundle.

Sub-packages in layers; each imports only from the layers below it (tests/test_layers.py checks):

1. :mod:`bundle.utils` -- atomic files, errors that name the file, switches and devices, affines;
2. :mod:`bundle.networks` (GRCSF, the MAE, their weights files), :mod:`bundle.metrics`,
   :mod:`bundle.visualize`;
3. :mod:`bundle.data` -- the data sets' layouts, records and splits, DICOM, slices and caches
   (:mod:`bundle.data.synthetic`: the look-alikes);
4. :mod:`bundle.registration` -- ITK affine registration to MNI-152;
5. :mod:`bundle.transforms` -- MONAI transforms: volume pipelines, residual maps, saving;
6. :mod:`bundle.losses`, :mod:`bundle.optimizers`;
7. :mod:`bundle.handlers` -- handlers of MONAI's engines;
8. :mod:`bundle.engines` -- the loops: MAE pre-training steps, inference, evaluation;
9. :mod:`bundle.tools` -- what the command-line scripts in ``scripts/`` run.

Configs in ``configs/`` name components by their full path, e.g. ``"_target_":
"bundle.networks.grcsf_preset"``. Sub-packages are imported on first access (``bundle.engines``),
so that ``import bundle`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The bundle's version: the one source of ``configs/metadata.json``'s ``version`` (a test checks
#: they agree) and of the package version (``pyproject.toml`` reads it).
__version__ = "0.4.0"

_SUBPACKAGES = (
    "utils",
    "networks",
    "metrics",
    "visualize",
    "data",
    "registration",
    "transforms",
    "losses",
    "optimizers",
    "handlers",
    "engines",
    "tools",
)

__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
