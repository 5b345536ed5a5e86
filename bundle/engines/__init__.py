"""engines of the GRCSF bundle: the loops of MAE pre-training (steps for MONAI's trainer and
evaluator), inference over files and folders, evaluation against labels."""

from .evaluation import ID_COLUMNS, EvaluationRunner, check_label
from .inference import SegmentationRunner
from .mae_training import (
    MAETrainingStep,
    MAEValidationStep,
    build_discriminator,
    discriminator_optimizer,
    mae_checkpoint_objects,
    mae_loss_terms,
    mae_mask_ratios,
    mae_run_name,
    warm_start_mae,
)
