"""transforms of the GRCSF bundle: reading and checking volumes, brain (MNI-152) and CT (HU)
pipelines, the MAE residual maps, saving predictions."""

from .brain import brain_preprocessing, mni_brain_preprocessing, native_brain_preprocessing
from .ct import CT_WINDOWS, CalciumCandidatesd, HUWindow, HUWindowd, ct_preprocessing, resolve_window
from .domains import PREPROCESSING_DOMAINS, model_preprocessing_options, volume_preprocessing
from .intensity import BinarizeLabeld, ScaleIntensityPercentilesd
from .io import LoadVolumed, SavePredictiond, ValidateVolumed
from .mni import MNI152_BRAIN_BOX_MM, EnsureMNIGridd, RegisterToMNId, check_mni_grid, check_mni_space
from .residual_maps import (
    ConcatResidualMapsd,
    ResidualMapd,
    compute_residual_maps,
    draw_residual_masks,
    foreground_slice_indices,
    residual_maps_reference,
)
from .spatial import ResampleToSpacingd, ResizeSliced
