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

from .dicom import (
    DicomSeries,
    DicomSeriesError,
    DicomSeriesReader,
    LoadDicomSeriesd,
    load_dicom_series,
    read_dicom_series,
    write_dicom_series,
)

__all__ += [
    "DicomSeries",
    "DicomSeriesError",
    "DicomSeriesReader",
    "LoadDicomSeriesd",
    "load_dicom_series",
    "read_dicom_series",
    "write_dicom_series",
]
from .synthetic_ct import (
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
from .ct_datasets import (
    MSD_LUNG_SPLIT_SIZES,
    ORCASCORE_SPLIT_SIZES,
    find_orcascore_scans,
    load_msd_lung,
    msd_lung_split,
    orcascore_split,
    split_by_sizes,
    split_sizes,
    write_split_datalist,
)

__all__ += [
    "CT_TISSUE_NAMES",
    "MSD_LUNG_NODULE_INDEX",
    "ORCASCORE_REFERENCE_SCORES",
    "SyntheticCTCase",
    "generate_msd_lung_like",
    "generate_orcascore_like",
    "make_msd_lung_case",
    "make_orcascore_case",
    "msd_lung_case_id",
    "orcascore_case_id",
    "write_metaimage",
    "MSD_LUNG_SPLIT_SIZES",
    "ORCASCORE_SPLIT_SIZES",
    "find_orcascore_scans",
    "load_msd_lung",
    "msd_lung_split",
    "orcascore_split",
    "split_by_sizes",
    "split_sizes",
    "write_split_datalist",
]
from .atlas import (
    ATLAS_SPLITS_FILE,
    atlas_datalist_name,
    atlas_subset_splits,
    find_atlas_subjects,
    write_atlas_datalists,
)

__all__ += [
    "ATLAS_SPLITS_FILE",
    "atlas_datalist_name",
    "atlas_subset_splits",
    "find_atlas_subjects",
    "write_atlas_datalists",
]
