# Copyright (c) GRCSF bundle contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Writers of predictions: atomic, and never over an existing file unless asked.

- :class:`PredictionLayout` -- MONAI folder layout naming outputs with :func:`~bundle.data.inputs.prediction_path`.
- :class:`AtomicNibabelWriter` -- MONAI's NIfTI writer through a temporary file and ``os.replace``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from bundle.utils.flags import as_flag
from bundle.utils.io import atomic_output
from monai.data import FolderLayoutBase, NibabelWriter

from .inputs import prediction_path

__all__ = ["AtomicNibabelWriter", "NIFTI_XFORM_MNI_152", "NIFTI_XFORM_SCANNER_ANAT", "PredictionLayout", "save_nifti"]


class PredictionLayout(FolderLayoutBase):
    """MONAI folder layout naming outputs with :func:`prediction_path`, refusing to replace files.

    Args:
        output_dir: the output folder (created on the first write).
        postfix: appended to the input name, e.g. ``"seg"`` or ``"prob"``.
        extension: output extension, e.g. ``".nii.gz"``.
        overwrite: whether an existing output may be replaced.
    """

    def __init__(self, output_dir: str | os.PathLike, postfix: str, extension: str, overwrite: bool = False) -> None:
        self.output_dir = os.fspath(output_dir)
        self.postfix = postfix
        self.extension = extension
        self.overwrite = as_flag(overwrite, "overwrite")

    def filename(self, subject: str | os.PathLike = "subject", idx: Any = None, **kwargs: Any) -> str:
        """The output path of the input ``subject`` (MONAI passes the input file name here)."""
        path = prediction_path(subject, self.output_dir, self.postfix, self.extension)
        if os.path.exists(path) and not self.overwrite:
            raise FileExistsError(f"output {path} exists; set overwrite=true to replace it.")
        os.makedirs(self.output_dir, exist_ok=True)
        return path


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's NIfTI writer saving to a temporary file in the target folder, then ``os.replace``."""

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        # the layout has already refused an existing file when overwriting is not allowed
        with atomic_output(filename, overwrite=True) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


#: NIfTI xform codes (``qform_code``/``sform_code``) of scanner and MNI-152 world coordinates
NIFTI_XFORM_SCANNER_ANAT = 1
NIFTI_XFORM_MNI_152 = 4


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    overwrite: bool = False,
    description: str = "",
    xform_code: int = NIFTI_XFORM_SCANNER_ANAT,
) -> str:
    """Write a 3D array with its voxel-to-world affine (RAS mm) as NIfTI, atomically; returns the path.

    Args:
        xform_code: qform and sform code, :data:`NIFTI_XFORM_SCANNER_ANAT` or :data:`NIFTI_XFORM_MNI_152`.
    """
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=xform_code)
    img.set_sform(affine, code=xform_code)
    img.header.set_xyzt_units(xyz="mm")
    img.header["descrip"] = description.encode()[:79]
    with atomic_output(path, overwrite=overwrite) as tmp:
        nib.save(img, tmp)
    return os.fspath(path)
