"""transforms of the GRCSF bundle (see the package docstring of :mod:`bundle`)."""

from .domains import PREPROCESSING_DOMAINS, volume_preprocessing
from .residual_maps import (
    ConcatResidualMapsd,
    ResidualMapd,
    compute_residual_maps,
    draw_residual_masks,
    foreground_slice_indices,
    residual_maps_reference,
)

__all__ = [
    "PREPROCESSING_DOMAINS",
    "volume_preprocessing",
    "ConcatResidualMapsd",
    "ResidualMapd",
    "compute_residual_maps",
    "draw_residual_masks",
    "foreground_slice_indices",
    "residual_maps_reference",
]

from .ct import (
    CT_WINDOWS,
    CalciumCandidatesd,
    HUWindow,
    HUWindowd,
    LoadCTVolumed,
    ct_preprocessing,
    hounsfield_problem,
    resolve_window,
)

__all__ += [
    "CT_WINDOWS",
    "CalciumCandidatesd",
    "HUWindow",
    "HUWindowd",
    "LoadCTVolumed",
    "ct_preprocessing",
    "hounsfield_problem",
    "resolve_window",
]
from .mni import (
    MNI152_BRAIN_BOX_MM,
    EnsureMNIGridd,
    RegisterToMNId,
    RegistrationError,
    check_mni_grid,
    check_mni_space,
    mni_brain_preprocessing,
    native_brain_preprocessing,
    register_affine_to_mni,
)

__all__ += [
    "MNI152_BRAIN_BOX_MM",
    "EnsureMNIGridd",
    "RegisterToMNId",
    "RegistrationError",
    "check_mni_grid",
    "check_mni_space",
    "mni_brain_preprocessing",
    "native_brain_preprocessing",
    "register_affine_to_mni",
]
