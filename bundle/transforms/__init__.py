"""transforms of the GRCSF bundle (see the package docstring of :mod:`bundle`)."""

from .domains import PREPROCESSING_DOMAINS, volume_preprocessing
from .residual_maps import (
    ConcatResidualMapsd,
    ResidualMapd,
    compute_residual_maps,
    draw_residual_masks,
    residual_maps_reference,
)

__all__ = [
    "PREPROCESSING_DOMAINS",
    "volume_preprocessing",
    "ConcatResidualMapsd",
    "ResidualMapd",
    "compute_residual_maps",
    "draw_residual_masks",
    "residual_maps_reference",
]
