"""GRCSF lesion segmentation as a MONAI bundle.

Sub-packages by concern:

- :mod:`bundle.networks`   -- GRCSF (UNet++/U-Net + GCU + RCU) and the masked autoencoder (MAE)
- :mod:`bundle.transforms` -- MONAI transforms: residual maps, intensity, CT windowing, MNI checks
- :mod:`bundle.data`       -- data set adapters and the synthetic (demo) data generators
- :mod:`bundle.metrics`    -- segmentation and lesion-wise metrics, calcium scoring
- :mod:`bundle.engines`    -- helpers that wire MONAI engines (trainers, evaluators, handlers)

Configs in ``configs/`` reference components as ``"_target_": "bundle.networks.GRCSF"``.
"""

from importlib import import_module as _import_module

__version__ = "0.1.0"

for _name in ("networks", "transforms", "data", "metrics", "engines"):
    globals()[_name] = _import_module(f"{__name__}.{_name}")

__all__ = ["networks", "transforms", "data", "metrics", "engines", "__version__"]
