"""Synthetic look-alikes of the data sets, in their real layouts: the ATLAS v2.0 look-alike built
from the MNI-152 template (needs nilearn), the MSD Task06 Lung and orCaScore phantoms."""

from .atlas import (
    ATLAS_IMAGE_SUFFIX,
    ATLAS_LABEL_SUFFIX,
    ATLAS_LESION_INDEX,
    ATLAS_SPACE,
    SUPPORTED_RESOLUTIONS_MM,
    SyntheticAtlasParams,
    atlas_subject_id,
    atlas_subject_paths,
    ensure_demo_dataset,
    generate_atlas_like_dataset,
    load_atlas_like_records,
    parse_atlas_subject_id,
)
from .ct import (
    CT_TISSUE_NAMES,
    MSD_LUNG_NODULE_INDEX,
    ORCASCORE_REFERENCE_SCORES,
    SyntheticCTCase,
    generate_msd_lung_like,
    generate_orcascore_like,
    make_msd_lung_case,
    make_orcascore_case,
    msd_lung_case_id,
    orcascore_case_id,
    write_metaimage,
)
