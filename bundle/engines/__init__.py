"""engines of the GRCSF bundle (see the package docstring of :mod:`bundle`)."""

from .training import (
    LOSS_TYPES,
    AtomicCheckpointSaver,
    DiskCachedTransform,
    ResumableEarlyStopHandler,
    ResumeCheckpointLoader,
    TrainingCurvesHandler,
    WarmupCosineLR,
    build_loss,
    check_records,
    num_slices_per_epoch,
    split_records,
)
from .mae_training import (
    MAEArchitecture,
    MAESamplesHandler,
    MAETrainingStep,
    MAEValidationStep,
    MeanOutput,
    ProgressBarHandler,
    as_flag,
    mae_loss_terms,
    mae_mask_ratios,
    mae_run_name,
    mae_validation_metrics,
    ratio_tag,
)
from .inference import (
    AtomicNibabelWriter,
    InferenceError,
    NetworkCheckpointLoader,
    PredictionLayout,
    SavePredictiond,
    SegmentationRunner,
    atomic_output,
    describe_error,
    list_inputs,
    load_network_weights,
    prediction_path,
    write_json,
)
from .evaluation import EvaluationRunner, check_label, voxel_spacing, write_csv
from .visualization import OverlaySlices, axial_axis, lesion_slice_index, overlay_figure, save_overlay
