"""metrics of the GRCSF bundle (see the package docstring of :mod:`bundle`).

- :mod:`bundle.metrics.segmentation` -- per-subject pixel-wise and lesion-wise metrics
  (Dice, IoU, precision, recall, FPR, VOSE, lesion detection), lesion-size/attribute bins,
  per-subset aggregation and the MONAI cumulative metric :class:`LesionMetrics`.
- :mod:`bundle.metrics.ranking` -- the exact AUROC (rank-sum) of a score against binary labels.
- :mod:`bundle.metrics.calcium` -- orCaScore post-processing (130 HU, 6-connectivity),
  Agatston scoring with risk categories and the orCaScore volume/lesion metrics.
"""

from .calcium import (
    AGATSTON_CATEGORY_NAMES,
    AgatstonResult,
    CalciumLesion,
    agatston_category,
    agatston_density_weight,
    agatston_scores,
    calcium_candidates,
    orcascore_metrics,
)
from .ranking import auroc
from .segmentation import (
    DEFAULT_LESION_SIZE_BINS,
    SEGMENTATION_METRIC_KEYS,
    LesionMetrics,
    aggregate_metrics,
    connectivity_structure,
    dice_by_lesion_attribute,
    dice_by_lesion_size,
    label_lesions,
    lesion_size_bins,
    segmentation_metrics,
    summarise_lesion_bins,
)

__all__ = [
    "auroc",
    "AGATSTON_CATEGORY_NAMES",
    "AgatstonResult",
    "CalciumLesion",
    "agatston_category",
    "agatston_density_weight",
    "agatston_scores",
    "calcium_candidates",
    "orcascore_metrics",
    "DEFAULT_LESION_SIZE_BINS",
    "SEGMENTATION_METRIC_KEYS",
    "LesionMetrics",
    "aggregate_metrics",
    "connectivity_structure",
    "dice_by_lesion_attribute",
    "dice_by_lesion_size",
    "label_lesions",
    "lesion_size_bins",
    "segmentation_metrics",
    "summarise_lesion_bins",
]
