"""The ground floor of the bundle: files written atomically, errors that name the file, switches
and devices from the command line, affine helpers, the check that a bundle folder runs its own
code. Imports nothing else of the bundle."""

from .cli import install_cli_error_handler, is_bundle_cli
from .errors import (
    BundleError,
    CheckpointError,
    ConfigError,
    DatasetError,
    FolderRunError,
    InferenceError,
    InvalidVolumeError,
    PackageConflictError,
    TrainingError,
    describe_error,
    find_volume_error,
    message_naming,
    source_of,
    user_error,
)
from .flags import amp_enabled, as_device, as_flag
from .geometry import LPS_FLIP, as_affine, ras_affine, voxel_spacing
from .io import atomic_output, file_digest, json_safe, write_csv, write_json, write_text
from .origin import PACKAGE_DIR, check_package_origin, models_dir, package_digest
from .runtime import (
    ddp_device_ids,
    default_device,
    distributed_device,
    finish_distributed,
    init_distributed,
    set_num_threads,
)

__all__ = [
    "LPS_FLIP",
    "PACKAGE_DIR",
    "BundleError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "FolderRunError",
    "InferenceError",
    "InvalidVolumeError",
    "PackageConflictError",
    "TrainingError",
    "amp_enabled",
    "as_affine",
    "as_device",
    "as_flag",
    "atomic_output",
    "check_package_origin",
    "ddp_device_ids",
    "default_device",
    "distributed_device",
    "finish_distributed",
    "init_distributed",
    "set_num_threads",
    "describe_error",
    "file_digest",
    "find_volume_error",
    "install_cli_error_handler",
    "is_bundle_cli",
    "json_safe",
    "message_naming",
    "models_dir",
    "package_digest",
    "ras_affine",
    "source_of",
    "user_error",
    "voxel_spacing",
    "write_csv",
    "write_json",
    "write_text",
]
