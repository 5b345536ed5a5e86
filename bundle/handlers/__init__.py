"""handlers of the GRCSF bundle for MONAI's (ignite) engines: checkpoints, early stopping,
training curves, MAE sample panels, progress, metrics, iteration timing."""

from .checkpoint import (
    AtomicCheckpointSaver,
    ModelSaverWithoutValidation,
    NetworkCheckpointLoader,
    ResumeCheckpointLoader,
)
from .early_stop import ResumableEarlyStopHandler
from .guards import EpochSeedHandler, NonFiniteLossGuard, epoch_seed
from .mae_samples import MAESamplesHandler
from .metrics import MeanOutput, lower_is_better, mae_validation_metrics
from .progress import ProgressBarHandler, every_n_iterations
from .timing import IterationTimingHandler, batch_size_of
from .training_curves import TrainingCurvesHandler
