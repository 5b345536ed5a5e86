"""transforms of the GRCSF bundle (see the package docstring of :mod:`bundle`)."""

from .residual_maps import (
    ConcatResidualMapsd,
    ResidualMapd,
    compute_residual_maps,
    draw_residual_masks,
    residual_maps_reference,
)

__all__ = [
    "ConcatResidualMapsd",
    "ResidualMapd",
    "compute_residual_maps",
    "draw_residual_masks",
    "residual_maps_reference",
]
