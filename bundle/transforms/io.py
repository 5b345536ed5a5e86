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
"""Volumes in and predictions out: reading with errors that name the file, checking, saving.

- :class:`LoadVolumed` -- MONAI's ``LoadImaged`` (NIfTI, NRRD, MetaImage, DICOM folders) with clear errors.
- :class:`ValidateVolumed` -- refuses volumes the slice-wise pipeline cannot use (4D, NaN, constant,
  image/label shape or grid mismatch).
- :class:`SavePredictiond` -- MONAI's ``SaveImaged`` in the input's geometry, atomic, never over an
  existing file unless asked; MONAI Label drops it (it writes its own result).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from bundle.data.dicom import DicomSeriesReader
from bundle.data.inputs import prediction_path
from bundle.data.writers import AtomicNibabelWriter, PredictionLayout
from bundle.utils.errors import InvalidVolumeError, source_of
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor
from monai.transforms import LoadImage, LoadImaged, MapTransform, SaveImaged

__all__ = ["LoadVolumed", "SavePredictiond", "ValidateVolumed"]


class SavePredictiond(SaveImaged):
    """``SaveImaged`` for predictions in the input's geometry: atomic, no silent overwrite.

    The item must already be in the input's space (``Invertd`` first): no resampling happens here,
    the data is written with the affine of its metadata. Being a ``SaveImaged``, it is dropped by
    MONAI Label, which writes its own result.

    Args:
        keys: item keys to save, e.g. ``"pred"``.
        output_dir: output folder.
        output_postfix: appended to the input file name, see :func:`prediction_path`.
        output_ext: file extension, ``".nii.gz"`` or ``".nii"``.
        output_dtype: data type on disk, e.g. ``numpy.uint8`` for masks, ``numpy.float32`` for
            probabilities.
        overwrite: replace existing outputs; otherwise an existing output raises FileExistsError.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        output_dir: str | os.PathLike,
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        output_dtype: Any = np.uint8,
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        self.layout = PredictionLayout(output_dir, output_postfix, output_ext, overwrite=overwrite)
        super().__init__(
            keys=keys,
            output_dir=output_dir,
            output_postfix=output_postfix,
            output_ext=output_ext,
            output_dtype=output_dtype,
            resample=False,
            squeeze_end_dims=True,
            separate_folder=False,
            print_log=False,
            writer=AtomicNibabelWriter,
            folder_layout=self.layout,
            savepath_in_metadict=True,
            allow_missing_keys=allow_missing_keys,
        )

    def output_path(self, image_path: str | os.PathLike) -> str:
        """Where the prediction of ``image_path`` is written."""
        return prediction_path(image_path, self.layout.output_dir, self.layout.postfix, self.layout.extension)


@contextmanager
def _quiet_reader_registration() -> Iterator[None]:
    """MONAI's LoadImage registers every reader it knows, and its GPU DICOM codec reader warns twice
    (a log line and a warning) that nvImageCodec is absent, at every construction: noise before
    every run of every command. The bundle reads DICOM with its own reader and never uses it."""
    plugin_logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_logger.level
    plugin_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            yield
    finally:
        plugin_logger.setLevel(level)


class LoadVolumed(MapTransform):
    """Load volumes with errors that name the file: a file through MONAI's ``LoadImage`` (NIfTI,
    NRRD, MetaImage and the other ITK formats), a folder as one DICOM series.

    DICOM folders are read by :class:`~bundle.data.dicom.DicomSeriesReader` in every domain, with
    its checks (one series, no missing or duplicate slice, regular spacing, consistent orientation,
    the expected modality): ITK's own DICOM reading accepts a series with a missing slice and only
    warns on stderr, which gives a mask in a wrong geometry.

    Args:
        keys: keys of the file paths to load.
        reader: reader name or class of files for :class:`~monai.transforms.LoadImage`, None for
            MONAI's choice by file type.
        dicom_modality: the Modality a DICOM series must have (``"CT"``, ``"MR"``); None accepts any.
        series_uid: the series to read from DICOM folders that hold several.
        dtype: data type of the loaded arrays.
        allow_missing_keys: skip keys absent from the data (e.g. no label for unlabeled data).

    Output: MetaTensors ``(X, Y, Z)`` (channel added later by ``EnsureChannelFirstd``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: str | ImageReader | None = None,
        dicom_modality: str | None = None,
        series_uid: str | None = None,
        dtype: Any = np.float32,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        with _quiet_reader_registration():
            self.loader = LoadImaged(keys, reader=reader, dtype=dtype, image_only=True, allow_missing_keys=True)
            self.dicom_reader = DicomSeriesReader(require_modality=dicom_modality, series_uid=series_uid)
            self.dicom_loader = LoadImage(reader=self.dicom_reader, dtype=dtype, image_only=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
                raise FileNotFoundError(f"{path}: the {key} file does not exist.")
            dicom = isinstance(path, (str, os.PathLike)) and os.path.isdir(path)
            try:
                if dicom:
                    d[key] = self.dicom_loader(path, reader=self.dicom_reader)
                else:
                    d[key] = self.loader._loader(path)  # the array-level LoadImage of LoadImaged
            except InvalidVolumeError:
                raise
            except Exception as e:
                what = "DICOM series" if dicom else "file"
                raise InvalidVolumeError(f"{path}: cannot read the {key} {what} ({type(e).__name__}: {e})") from e
        return d


class ValidateVolumed(MapTransform):
    """Refuse volumes the slice-wise pipeline cannot use, with messages naming the files.

    Expects channel-first data, i.e. after :class:`~monai.transforms.EnsureChannelFirstd`, where a
    3D volume is (1, X, Y, Z) and a 4D NIfTI (X, Y, Z, T) became (T, X, Y, Z).

    Checks: every key holds a single 3D volume (not 4D, not 2D); the image is finite and not
    constant; the label is finite and has the image's spatial shape and (within ``affine_atol``
    mm) its voxel-to-world affine.

    Args:
        image_key: key of the image.
        label_key: key of the label, None for image-only data. A missing label is allowed.
        affine_atol: tolerance of the image/label affine comparison in mm, None to skip it.
        allow_missing_keys: skip keys absent from the data.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        affine_atol: float | None = 1e-3,
        allow_missing_keys: bool = True,
    ) -> None:
        keys = [image_key] if label_key is None else [image_key, label_key]
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.label_key = label_key
        self.affine_atol = affine_atol

    def _check_3d(self, data: Mapping[Hashable, Any], key: str) -> torch.Tensor:
        volume = data[key]
        shape = tuple(volume.shape)
        if len(shape) == 4 and shape[0] > 1:
            raise InvalidVolumeError(
                f"{source_of(data[key], key)}: the {key} is 4D ({shape[0]} volumes/channels of spatial shape {shape[1:]}); "
                "a single 3D volume is expected (extract one volume first)."
            )
        if len(shape) != 4:
            raise InvalidVolumeError(
                f"{source_of(data[key], key)}: the {key} has shape {shape[1:]} (channel first {shape}); a 3D volume is expected."
            )
        return torch.as_tensor(volume)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.image_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"no {self.image_key!r} in the data (keys: {list(d)}).")
        image = self._check_3d(d, self.image_key)
        finite = torch.isfinite(image)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise InvalidVolumeError(
                f"{source_of(d[self.image_key], self.image_key)}: the {self.image_key} holds {bad} NaN/inf "
                f"voxel(s) of {image.numel()}."
            )
        if bool(image.max() == image.min()):
            raise InvalidVolumeError(
                f"{source_of(d[self.image_key], self.image_key)}: the {self.image_key} is constant ({float(image.min())}); "
                "it cannot be intensity-normalised."
            )
        if self.label_key is None or self.label_key not in d:
            return d
        label = self._check_3d(d, self.label_key)
        if label.shape[1:] != image.shape[1:]:
            raise InvalidVolumeError(
                f"image/label shape mismatch: image {source_of(d[self.image_key], self.image_key)} has spatial shape "
                f"{tuple(image.shape[1:])}, label {source_of(d[self.label_key], self.label_key)} has {tuple(label.shape[1:])}."
            )
        if not bool(torch.isfinite(label).all()):
            raise InvalidVolumeError(
                f"{source_of(d[self.label_key], self.label_key)}: the {self.label_key} holds NaN/inf values."
            )
        img, lab = d[self.image_key], d[self.label_key]
        if self.affine_atol is not None and isinstance(img, MetaTensor) and isinstance(lab, MetaTensor):
            a_img, a_lab = img.affine.double(), lab.affine.double()
            if a_img.shape != a_lab.shape or not torch.allclose(a_img, a_lab, atol=self.affine_atol, rtol=0.0):
                raise InvalidVolumeError(
                    f"image/label grid mismatch: image {source_of(d[self.image_key], self.image_key)} and label "
                    f"{source_of(d[self.label_key], self.label_key)} have the same shape but different affines "
                    f"(max difference {float((a_img - a_lab).abs().max()):.4g} mm)."
                )
        return d
