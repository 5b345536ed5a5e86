"""data of the GRCSF bundle (see the package docstring of :mod:`bundle`)."""

from .mni import (
    MNI152_AFFINE,
    MNI152_SHAPE,
    MNI152_TEMPLATE_FILES,
    MNITemplate,
    block_average,
    load_mni152_template,
    mni152_grid,
    mni152_template_paths,
)
from .synthetic_atlas import (
    ATLAS_IMAGE_SUFFIX,
    ATLAS_LABEL_SUFFIX,
    ATLAS_LESION_INDEX,
    ATLAS_SPACE,
    SUPPORTED_RESOLUTIONS_MM,
    SyntheticAtlasParams,
    atlas_subject_id,
    atlas_subject_paths,
    generate_atlas_like_dataset,
    load_atlas_like_records,
    parse_atlas_subject_id,
)

__all__ = [
    "MNI152_AFFINE",
    "MNI152_SHAPE",
    "MNI152_TEMPLATE_FILES",
    "MNITemplate",
    "block_average",
    "load_mni152_template",
    "mni152_grid",
    "mni152_template_paths",
    "ATLAS_IMAGE_SUFFIX",
    "ATLAS_LABEL_SUFFIX",
    "ATLAS_LESION_INDEX",
    "ATLAS_SPACE",
    "SUPPORTED_RESOLUTIONS_MM",
    "SyntheticAtlasParams",
    "atlas_subject_id",
    "atlas_subject_paths",
    "generate_atlas_like_dataset",
    "load_atlas_like_records",
    "parse_atlas_subject_id",
]
