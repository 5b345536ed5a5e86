"""data of the GRCSF bundle: the data sets' real layouts, records and splits, reading DICOM series,
inputs and outputs of inference, slices of volumes and their caches. The synthetic look-alikes
are in :mod:`bundle.data.synthetic`."""

from .atlas import atlas_subset_splits, find_atlas_subjects
from .cache import (
    DiskCachedTransform,
    PackMetaTensors,
    content_digest,
    record_fingerprint,
    transform_fingerprint,
    unpack_meta_tensors,
)
from .checks import (
    AIR_RANGE_HU,
    hounsfield_problem,
    plain_values,
    residual_map_statistic,
    summarise_residual_statistics,
)
from .dicom import (
    DicomSeries,
    DicomSeriesError,
    DicomSeriesReader,
    LoadDicomSeriesd,
    load_dicom_series,
    read_dicom_series,
    write_dicom_series,
)
from .inputs import NIFTI_EXTENSIONS, is_dicom_file, is_dicom_series_dir, list_inputs, prediction_path
from .layouts import DATASET_LAYOUTS, atlas_subset_count, evaluation_records, load_split
from .mni import (
    MNI152_AFFINE,
    MNI152_SHAPE,
    MNI152_TEMPLATE_FILES,
    MNITemplate,
    block_average,
    check_resolution,
    load_mni152_template,
    mni152_grid,
    mni152_template_paths,
)
from .msd_lung import MSD_LUNG_SPLIT_SIZES, load_msd_lung, msd_lung_split
from .orcascore import ORCASCORE_SPLIT_SIZES, find_orcascore_scans, orcascore_split
from .records import SPLIT_KEYS, check_records, split_by_sizes, split_records, split_sizes, write_split_datalist
from .slices import (
    SELECTIONS,
    VolumeSliceDataset,
    common_spacing,
    num_slices_per_epoch,
    residual_map_reference,
    slice_sampling_weights,
    volume_spacings,
)
from .writers import AtomicNibabelWriter, PredictionLayout, save_nifti
