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
"""DICOM series (one file per axial slice) to and from a volume in Hounsfield units (``docs/ct.md``).

Array and affine conventions are those of NIfTI and MONAI's readers: a volume is ``(X, Y, Z)``
(``X`` = DICOM columns, ``Y`` = rows, ``Z`` = slices) and its 4 x 4 voxel-to-world affine is in
RAS millimetres. DICOM itself stores LPS coordinates; the conversion is a sign flip of the first
two world axes (:func:`ras_to_lps`).

- :func:`write_dicom_series` -- a volume in HU as a CT series (int16 stored values with
  RescaleSlope/Intercept), written atomically into a new folder.
- :func:`read_dicom_series` / :func:`load_dicom_series` -- a folder back to a float32 HU volume
  and its RAS affine with pydicom. Slices are ordered by their ImagePositionPatient projected on
  the slice normal (never by file name or InstanceNumber); the slice step comes from the
  positions. Every refusal raises :class:`DicomSeriesError` naming the folder or the file.
- :class:`DicomSeriesReader` -- the same reader as a MONAI :class:`~monai.data.ImageReader`
  (``LoadImage(reader=DicomSeriesReader())``), and :class:`LoadDicomSeriesd`, the dictionary
  transform; both return a MetaTensor whose affine is the one MONAI's NIfTI reader gives for the
  same volume, so the result composes with ``Orientationd`` / ``Invertd`` and NIfTI saving.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from bundle.data.checks import hounsfield_problem
from bundle.utils.errors import InvalidVolumeError
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import LoadImage, MapTransform
from monai.utils import ensure_tuple
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "CT_IMAGE_STORAGE",
    "DicomSeries",
    "DicomSeriesError",
    "DicomSeriesReader",
    "LoadDicomSeriesd",
    "load_dicom_series",
    "ras_to_lps",
    "read_dicom_series",
    "write_dicom_series",
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_SOP_CLASS = {"CT": CT_IMAGE_STORAGE, "MR": "1.2.840.10008.5.1.4.1.1.4"}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
#: extensions of files that are read as DICOM even without the "DICM" preamble
_DICOM_EXTENSIONS = ("", ".dcm", ".dicom", ".dic", ".ima")
_STORED_DTYPES = (np.dtype(np.int16), np.dtype(np.uint16))

# tolerances of the geometry checks
_ORIENTATION_ATOL = 1e-4  # direction cosines of two slices of one series
_SPACING_RTOL = 1e-4  # PixelSpacing of two slices
_DUPLICATE_MM = 1e-3  # two slices closer than this along the normal are the same position
_GAP_FACTOR = 1.5  # a step larger than this x the median step means missing slices
_IRREGULAR_RTOL = 0.1  # steps deviating more than this from the median are irregular


class DicomSeriesError(InvalidVolumeError):
    """A DICOM folder or file that cannot be read as one volume; the message names it and the problem.

    A :class:`ValueError` (through :class:`~bundle.transforms.io.InvalidVolumeError`, so
    that :func:`~bundle.transforms.io.find_volume_error` finds it in MONAI error chains).
    """


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """A 4 x 4 affine in RAS world coordinates as LPS (and back: the map is its own inverse)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)


def _ds(value: float) -> str:
    """A number as a DICOM decimal string (at most 16 characters)."""
    return format_number_as_ds(float(value))


# ----------------------------------------------------------------------------- writing


def _check_affine(affine: Any) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"affine must be a finite 4 x 4 matrix, got shape {a.shape}.")
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"the last row of the affine must be [0, 0, 0, 1], got {a[3].tolist()}.")
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"the affine has a zero-length axis (column norms {spacing.tolist()}).")
    return a


def _slice_geometry(affine_ras: np.ndarray, n_slices: int) -> dict[str, Any]:
    """DICOM geometry tags of each slice of a volume with the RAS ``affine_ras``."""
    lps = ras_to_lps(affine_ras)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    if abs(float(row_dir @ col_dir)) > 1e-6:
        raise ValueError(
            "the first two axes of the affine are not orthogonal (in-plane shear); a DICOM slice "
            f"is a rectangular grid (cosine between them: {float(row_dir @ col_dir):.3g})."
        )
    normal = np.cross(row_dir, col_dir)
    step = lps[:3, 2]
    along_normal = float(step @ normal)
    if abs(along_normal) < 1e-6 * spacing[2]:
        raise ValueError("the third axis of the affine lies in the plane of the first two (degenerate).")
    positions = lps[:3, 3][None, :] + np.arange(n_slices)[:, None] * step[None, :]
    return {
        "orientation": [*row_dir.tolist(), *col_dir.tolist()],
        # PixelSpacing is (distance between rows, distance between columns) = (Y spacing, X spacing)
        "pixel_spacing": [float(spacing[1]), float(spacing[0])],
        "thickness": abs(along_normal),
        "positions": positions,
        "locations": positions @ normal,
    }


def _stored_values(volume_hu: np.ndarray, slope: float, intercept: float, dtype: np.dtype) -> np.ndarray:
    stored = np.rint((volume_hu.astype(np.float64) - intercept) / slope)
    info = np.iinfo(dtype)
    lo, hi = float(stored.min()), float(stored.max())
    if lo < info.min or hi > info.max:
        raise ValueError(
            f"the volume's HU range [{float(volume_hu.min()):g}, {float(volume_hu.max()):g}] gives stored values "
            f"[{lo:g}, {hi:g}] with RescaleSlope {slope:g} and RescaleIntercept {intercept:g}, outside "
            f"{dtype.name}'s [{info.min}, {info.max}]; choose another slope/intercept or dtype."
        )
    return stored.astype(dtype)


def _file_names(n: int, shuffle_files_seed: int | None) -> tuple[list[str], list[int]]:
    """File names (in slice order) and the order the files are written in."""
    if shuffle_files_seed is None:
        return [f"slice_{k + 1:04d}.dcm" for k in range(n)], list(range(n))
    rng = np.random.default_rng(shuffle_files_seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:  # random hexadecimal names: neither their sort order nor their text tells the slice
        name = f"{rng.bytes(8).hex()}.dcm"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names, [int(k) for k in rng.permutation(n)]


def _publish_folder(tmp: str, folder: str, overwrite: bool) -> None:
    """Move the finished temporary folder ``tmp`` onto ``folder`` (replacing it only if ``overwrite``)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700 folders
    if not os.path.exists(folder):
        os.rename(tmp, folder)
        return
    if not os.listdir(folder):
        os.rmdir(folder)
        os.rename(tmp, folder)
        return
    if not overwrite:  # checked before writing too; the folder was filled meanwhile
        raise FileExistsError(f"{folder} is not empty; set overwrite=True to replace it.")
    parent, name = os.path.split(folder)
    backup = tempfile.mkdtemp(prefix=".old-", suffix=f"-{name}", dir=parent)
    os.rmdir(backup)
    os.rename(folder, backup)
    try:
        os.rename(tmp, folder)
    except BaseException:
        os.rename(backup, folder)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def write_dicom_series(
    volume_hu: np.ndarray,
    affine: np.ndarray,
    folder: str | os.PathLike,
    *,
    modality: str = "CT",
    series_uid: str | None = None,
    patient_id: str = "anon",
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    dtype: Any = np.int16,
    overwrite: bool = False,
    shuffle_files_seed: int | None = None,
) -> list[str]:
    """Write a volume in HU as a DICOM series, one file per slice along the third axis.

    Every file is a complete DICOM Part 10 file (explicit VR little endian) of the CT Image
    Storage SOP class (MR Image Storage for ``modality="MR"``, Secondary Capture otherwise) with
    patient, study, series, frame-of-reference and SOP instance identifiers, the image plane tags
    (ImagePositionPatient, ImageOrientationPatient in LPS, PixelSpacing, SliceThickness,
    SliceLocation), InstanceNumber (1 = first slice of the array), the pixel module (16 bits,
    MONOCHROME2) and RescaleSlope/RescaleIntercept/RescaleType.

    The files are written into a temporary folder next to ``folder`` that is renamed onto it when
    complete, so an interrupted call leaves no partial series.

    Args:
        volume_hu: ``(X, Y, Z)`` volume in HU; ``X`` becomes the DICOM columns, ``Y`` the rows.
        affine: 4 x 4 voxel-to-world affine in RAS mm (as in NIfTI). The first two axes must be
            orthogonal; the third may be tilted (gantry tilt), it is stored through the positions.
        folder: output folder; created, or must be empty unless ``overwrite``.
        modality: the Modality tag (``"CT"``; ``"MR"`` for tests of modality checks).
        series_uid: SeriesInstanceUID; None generates one. The study, frame-of-reference and SOP
            instance UIDs are derived from it, so a given ``series_uid`` gives reproducible files.
        patient_id: PatientID (and PatientName).
        rescale_slope: RescaleSlope, HU = stored x slope + intercept (> 0).
        rescale_intercept: RescaleIntercept.
        dtype: stored value type, ``np.int16`` or ``np.uint16``; values are rounded to it.
        overwrite: replace a non-empty ``folder`` (all of its contents).
        shuffle_files_seed: when given, the file names are random hexadecimal strings (seeded) and
            the files are written in a random order, so that neither the names nor the directory
            order tell the slice order.

    Returns:
        the file paths in slice order (index ``k`` holds ``volume_hu[:, :, k]``).

    Raises:
        ValueError: a bad volume, affine, slope or dtype, or HU values the dtype cannot store.
        FileExistsError: ``folder`` is a non-empty folder (or a file) and ``overwrite`` is False.
    """
    volume = np.asarray(volume_hu)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"volume_hu must be a non-empty 3D (X, Y, Z) array, got shape {volume.shape}.")
    if not np.issubdtype(volume.dtype, np.number) or not np.all(np.isfinite(volume)):
        raise ValueError("volume_hu must hold finite numbers.")
    affine_ras = _check_affine(affine)
    slope, intercept = float(rescale_slope), float(rescale_intercept)
    if not (np.isfinite(slope) and slope > 0 and np.isfinite(intercept)):
        raise ValueError(f"need a finite rescale_slope > 0 and a finite intercept, got {slope}, {intercept}.")
    stored_dtype = np.dtype(dtype)
    if stored_dtype not in _STORED_DTYPES:
        raise ValueError(f"dtype must be int16 or uint16, got {stored_dtype}.")
    modality = str(modality).upper()
    if series_uid is None:
        series_uid = generate_uid()
    elif not UID(series_uid).is_valid:
        raise ValueError(f"series_uid {series_uid!r} is not a valid DICOM UID.")
    folder = os.path.abspath(os.fspath(folder))
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            raise FileExistsError(f"{folder} exists and is not a folder.")
        if os.listdir(folder) and not overwrite:
            raise FileExistsError(f"{folder} is not empty; set overwrite=True to replace it.")

    stored = _stored_values(volume, slope, intercept, stored_dtype)
    n_slices = volume.shape[2]
    geometry = _slice_geometry(affine_ras, n_slices)
    names, write_order = _file_names(n_slices, shuffle_files_seed)
    sop_class = _SOP_CLASS.get(modality, _SECONDARY_CAPTURE)
    study_uid = generate_uid(entropy_srcs=[series_uid, "study"])
    frame_uid = generate_uid(entropy_srcs=[series_uid, "frame-of-reference"])

    parent, name = os.path.split(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", suffix=f"-{name}", dir=parent)
    try:
        for k in write_order:
            sop_uid = generate_uid(entropy_srcs=[series_uid, "instance", str(k)])
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = FileDataset(names[k], {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.PatientName = patient_id
            ds.PatientID = patient_id
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.StudyInstanceUID = study_uid
            ds.StudyDate = ""
            ds.StudyTime = ""
            ds.StudyID = ""
            ds.AccessionNumber = ""
            ds.ReferringPhysicianName = ""
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = 1
            ds.Modality = modality
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.InstanceNumber = k + 1
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.ImagePositionPatient = [_ds(v) for v in geometry["positions"][k]]
            ds.ImageOrientationPatient = [_ds(v) for v in geometry["orientation"]]
            ds.PixelSpacing = [_ds(v) for v in geometry["pixel_spacing"]]
            ds.SliceThickness = _ds(geometry["thickness"])
            ds.SliceLocation = _ds(geometry["locations"][k])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = volume.shape[1]
            ds.Columns = volume.shape[0]
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1 if stored_dtype == np.int16 else 0
            ds.RescaleSlope = _ds(slope)
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleType = "HU" if modality == "CT" else "US"
            # rows along Y, columns along X: the slice's (Rows, Columns) array is the transpose
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype(stored_dtype.newbyteorder("<")).tobytes()
            ds.save_as(os.path.join(tmp, names[k]), enforce_file_format=True)
        _publish_folder(tmp, folder, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [os.path.join(folder, n) for n in names]


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True, eq=False)
class DicomSeries:
    """One DICOM series read as a volume.

    Attributes:
        volume: ``(X, Y, Z)`` float32 values (HU for CT: stored x RescaleSlope + RescaleIntercept).
        affine: 4 x 4 float64 voxel-to-world affine in RAS mm.
        files: the files in slice order (``volume[:, :, k]`` comes from ``files[k]``).
        series_uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID ("" when absent).
        modality: Modality tag.
        patient_id: PatientID ("" when absent).
        rescaled: False when the files had no RescaleIntercept and the stored values were
            taken as they are.
    """

    volume: np.ndarray
    affine: np.ndarray
    files: tuple[str, ...]
    series_uid: str
    study_uid: str
    modality: str
    patient_id: str
    rescaled: bool


def _has_dicm_preamble(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise DicomSeriesError(f"{path}: cannot open the file ({e}).") from e
    return len(head) == 132 and head[128:] == b"DICM"


def _sop_class(ds: pydicom.Dataset) -> str:
    """The SOP class UID of a file (file meta first, then the data set), "" when unreadable."""
    meta = getattr(ds, "file_meta", None)
    uid = (meta.get("MediaStorageSOPClassUID") if meta is not None else None) or ds.get("SOPClassUID")
    return str(uid) if uid else ""


def _candidate_headers(folder: str) -> tuple[list[tuple[str, pydicom.Dataset]], list[str]]:
    """Headers (no pixel data) of the DICOM image files in ``folder`` and the names of skipped files.

    Skipped: hidden files, sub-folders, DICOMDIR, files without the DICM preamble whose extension
    is not a DICOM one (e.g. ``README.txt``), and DICOM objects of a non-image SOP class (reports,
    structure sets). A file that should be an image but cannot be parsed raises.
    """
    headers: list[tuple[str, pydicom.Dataset]] = []
    skipped: list[str] = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path) or name.upper() == "DICOMDIR":
            skipped.append(name)
            continue
        magic = _has_dicm_preamble(path)
        if not magic and os.path.splitext(name)[1].lower() not in _DICOM_EXTENSIONS:
            skipped.append(name)
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=not magic)
            ds.get("Rows")  # parse errors of forced reads surface on access
            sop_class = _sop_class(ds)
        except Exception as e:
            raise DicomSeriesError(f"{path}: corrupt or unreadable DICOM file ({type(e).__name__}: {e}).") from e
        if sop_class == _MEDIA_STORAGE_DIRECTORY:
            skipped.append(name)
            continue
        if "Rows" not in ds or "Columns" not in ds:
            if magic and sop_class and "Image" not in UID(sop_class).name:
                skipped.append(name)  # a valid non-image object of the study (report, structure set)
                continue
            raise DicomSeriesError(
                f"{path}: corrupt or truncated DICOM file (no Rows/Columns; SOP class {sop_class or 'unreadable'})."
            )
        headers.append((path, ds))
    return headers, skipped


def _select_series(
    folder: str, headers: list[tuple[str, pydicom.Dataset]], series_uid: str | None
) -> list[tuple[str, pydicom.Dataset]]:
    groups: dict[str, list[tuple[str, pydicom.Dataset]]] = {}
    for path, ds in headers:
        uid = ds.get("SeriesInstanceUID")
        if uid is None:
            raise DicomSeriesError(f"{path}: no SeriesInstanceUID.")
        groups.setdefault(str(uid), []).append((path, ds))
    listing = ", ".join(
        f"{uid} ({len(files)} file(s), {files[0][1].get('Modality', '?')}"
        f"{', ' + str(files[0][1].SeriesDescription) if files[0][1].get('SeriesDescription') else ''})"
        for uid, files in sorted(groups.items(), key=lambda item: -len(item[1]))
    )
    if series_uid is not None:
        if str(series_uid) not in groups:
            raise DicomSeriesError(f"{folder}: no series {series_uid}; the folder holds {listing}.")
        return groups[str(series_uid)]
    if len(groups) > 1:
        raise DicomSeriesError(
            f"{folder}: {len(groups)} DICOM series in one folder: {listing}. "
            "Pass series_uid=... to choose one (or give each series its own folder)."
        )
    return next(iter(groups.values()))


def _float_list(path: str, ds: pydicom.Dataset, tag: str, length: int) -> np.ndarray:
    if tag not in ds or ds.get(tag) is None:
        raise DicomSeriesError(f"{path}: no {tag}; the slice cannot be placed in space.")
    try:
        values = np.array([float(v) for v in ensure_tuple(ds.get(tag))], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DicomSeriesError(f"{path}: unreadable {tag} {ds.get(tag)!r}.") from e
    if values.shape != (length,) or not np.all(np.isfinite(values)):
        raise DicomSeriesError(f"{path}: {tag} must hold {length} finite numbers, got {list(values)}.")
    return values


def _geometry(folder: str, series: list[tuple[str, pydicom.Dataset]]) -> tuple[list[int], np.ndarray]:
    """Slice order (indices into ``series``) and the RAS affine, from the image plane tags."""
    path0, ds0 = series[0]
    shape0 = (int(ds0.Rows), int(ds0.Columns))
    iop0 = _float_list(path0, ds0, "ImageOrientationPatient", 6)
    spacing0 = _float_list(path0, ds0, "PixelSpacing", 2)
    positions = []
    for path, ds in series:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise DicomSeriesError(f"{path}: a multi-frame image ({frames} frames); only one slice per file is read.")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise DicomSeriesError(f"{path}: {ds.SamplesPerPixel} samples per pixel (colour); a grey CT is expected.")
        shape = (int(ds.Rows), int(ds.Columns))
        if shape != shape0:
            raise DicomSeriesError(
                f"{folder}: inconsistent slice shapes in one series: {path0} is {shape0[0]} x {shape0[1]} "
                f"(rows x columns), {path} is {shape[0]} x {shape[1]}."
            )
        iop = _float_list(path, ds, "ImageOrientationPatient", 6)
        if not np.allclose(iop, iop0, atol=_ORIENTATION_ATOL, rtol=0.0):
            raise DicomSeriesError(
                f"{folder}: inconsistent ImageOrientationPatient in one series: {path0} has "
                f"{np.round(iop0, 5).tolist()}, {path} has {np.round(iop, 5).tolist()}."
            )
        spacing = _float_list(path, ds, "PixelSpacing", 2)
        if not np.allclose(spacing, spacing0, rtol=_SPACING_RTOL, atol=0.0):
            raise DicomSeriesError(
                f"{folder}: inconsistent PixelSpacing in one series: {path0} has {spacing0.tolist()}, "
                f"{path} has {spacing.tolist()}."
            )
        positions.append(_float_list(path, ds, "ImagePositionPatient", 3))
    if np.any(spacing0 <= 0):
        raise DicomSeriesError(f"{path0}: PixelSpacing must be positive, got {spacing0.tolist()}.")
    row_dir, col_dir = iop0[:3], iop0[3:]
    norms = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if min(norms) < 1e-3 or abs(float(row_dir @ col_dir)) / (norms[0] * norms[1]) > 1e-3:
        raise DicomSeriesError(
            f"{path0}: ImageOrientationPatient {iop0.tolist()} is not two orthogonal direction cosines."
        )
    row_dir, col_dir = row_dir / norms[0], col_dir / norms[1]
    normal = np.cross(row_dir, col_dir)
    pos = np.stack(positions)
    along = pos @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    pos, along = pos[order], along[order]
    n = len(order)
    files = [series[i][0] for i in order]
    if n == 1:
        ds = series[0][1]
        thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0
        step = normal * abs(float(thickness))
    else:
        steps = np.diff(along)
        k = int(np.argmin(steps))
        if steps[k] < _DUPLICATE_MM:
            raise DicomSeriesError(
                f"{folder}: two slices at the same position ({along[k]:.3f} mm along the slice normal): "
                f"{files[k]} and {files[k + 1]} (a duplicated file, or several acquisitions in one series)."
            )
        median = float(np.median(steps))
        k = int(np.argmax(steps))
        if steps[k] > _GAP_FACTOR * median:
            raise DicomSeriesError(
                f"{folder}: missing slice(s): a gap of {steps[k]:.3f} mm between {files[k]} and "
                f"{files[k + 1]} (median slice spacing {median:.3f} mm, about "
                f"{max(1, round(steps[k] / median) - 1)} slice(s) missing)."
            )
        irregular = np.abs(steps - median) > _IRREGULAR_RTOL * median
        if np.any(irregular):
            k = int(np.flatnonzero(irregular)[0])
            raise DicomSeriesError(
                f"{folder}: irregular slice spacing: {steps[k]:.3f} mm between {files[k]} and {files[k + 1]}, "
                f"median {median:.3f} mm; one affine cannot describe the series."
            )
        step = (pos[-1] - pos[0]) / (n - 1)
        off_line = np.linalg.norm(pos - (pos[0] + np.arange(n)[:, None] * step[None, :]), axis=1)
        if float(off_line.max()) > _IRREGULAR_RTOL * float(np.linalg.norm(step)):
            k = int(np.argmax(off_line))
            raise DicomSeriesError(
                f"{folder}: the slice positions do not lie on a line ({files[k]} is {off_line[k]:.3f} mm off it)."
            )
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing0[1]  # along the columns index (X): the column spacing
    lps[:3, 1] = col_dir * spacing0[0]  # along the rows index (Y): the row spacing
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    return order, ras_to_lps(lps)


def _pixels(path: str) -> tuple[np.ndarray, pydicom.Dataset]:
    try:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            raise DicomSeriesError(f"{path}: no pixel data (truncated file?).")
        rows, cols = int(ds.Rows), int(ds.Columns)
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            expected = rows * cols * int(ds.BitsAllocated) // 8
            if len(ds.PixelData) < expected:
                raise DicomSeriesError(
                    f"{path}: truncated pixel data ({len(ds.PixelData)} bytes, {expected} expected)."
                )
        array = ds.pixel_array
    except DicomSeriesError:
        raise
    except Exception as e:
        raise DicomSeriesError(f"{path}: cannot decode the pixel data ({type(e).__name__}: {e}).") from e
    if array.shape != (rows, cols):
        raise DicomSeriesError(f"{path}: pixel data of shape {array.shape}, Rows x Columns is {rows} x {cols}.")
    return array, ds


def _rescale(path: str, ds: pydicom.Dataset) -> tuple[float, float]:
    """RescaleSlope (1 when absent) and RescaleIntercept of a file that has the intercept."""
    try:
        slope_value = ds.get("RescaleSlope")
        slope = 1.0 if slope_value in (None, "") else float(slope_value)
        intercept = float(ds.RescaleIntercept)
    except (TypeError, ValueError) as e:
        raise DicomSeriesError(f"{path}: unreadable RescaleSlope/RescaleIntercept ({e}).") from e
    if not (np.isfinite(slope) and slope != 0 and np.isfinite(intercept)):
        raise DicomSeriesError(f"{path}: invalid RescaleSlope {slope} / RescaleIntercept {intercept}.")
    return slope, intercept


def load_dicom_series(
    folder: str | os.PathLike, require_modality: str | None = "CT", series_uid: str | None = None
) -> DicomSeries:
    """Read the DICOM series of ``folder`` (not its sub-folders) with pydicom.

    Rules (``docs/ct.md``): the files of one SeriesInstanceUID are ordered by ImagePositionPatient
    projected on the slice normal (row cosine x column cosine); the affine's third column is the
    step between the first and last positions divided by the slice count - 1 (so a gantry tilt is
    kept); values are stored x RescaleSlope + RescaleIntercept per file.

    Args:
        folder: the series folder.
        require_modality: refuse files whose Modality differs (``"CT"``); None accepts any.
        series_uid: the SeriesInstanceUID to read when the folder holds several series.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        DicomSeriesError: not a folder, no DICOM images, a corrupt file, several series (listed
            with their file counts) and no ``series_uid``, missing / duplicate slices, irregular
            spacing, inconsistent orientation, shape or pixel spacing, the wrong modality, or no
            rescale tags on CT values that are not HU.
    """
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"DICOM folder does not exist: {folder}")
    if not os.path.isdir(folder):
        raise DicomSeriesError(f"{folder}: not a folder; a DICOM series is read from the folder of its files.")
    headers, skipped = _candidate_headers(folder)
    if not headers:
        detail = f" ({len(skipped)} other file(s) skipped, e.g. {skipped[:3]})" if skipped else " (the folder is empty)"
        raise DicomSeriesError(f"{folder}: no DICOM image files{detail}.")
    series = _select_series(folder, headers, series_uid)
    if require_modality is not None:
        for path, ds in series:
            modality = str(ds.get("Modality", "")).upper()
            if modality != require_modality.upper():
                raise DicomSeriesError(
                    f"{path}: Modality is {modality or 'missing'!r}, {require_modality.upper()!r} is required "
                    f"(folder {folder}); pass require_modality=None to read it anyway."
                )
    order, affine = _geometry(folder, series)
    files = [series[i][0] for i in order]
    rows, cols = int(series[0][1].Rows), int(series[0][1].Columns)
    volume = np.empty((cols, rows, len(files)), dtype=np.float32)
    has_rescale = []
    for k, path in enumerate(files):
        array, ds = _pixels(path)
        has_rescale.append("RescaleIntercept" in ds)
        if has_rescale[-1]:
            slope, intercept = _rescale(path, ds)
            volume[:, :, k] = (array.T.astype(np.float64) * slope + intercept).astype(np.float32)
        else:
            volume[:, :, k] = array.T
    modality = str(series[0][1].get("Modality", ""))
    if any(has_rescale) and not all(has_rescale):
        missing = files[has_rescale.index(False)]
        raise DicomSeriesError(
            f"{folder}: RescaleIntercept present in some files and missing in others (e.g. {missing})."
        )
    if not any(has_rescale) and modality.upper() == "CT":
        # imported here: bundle.transforms.ct imports this module

        problem = hounsfield_problem(volume)
        if problem is not None:
            raise DicomSeriesError(
                f"{folder}: no RescaleSlope/RescaleIntercept (e.g. {files[0]}) and the stored values are not "
                f"Hounsfield units: {problem}"
            )
    first = series[0][1]
    return DicomSeries(
        volume=volume,
        affine=affine,
        files=tuple(files),
        series_uid=str(first.SeriesInstanceUID),
        study_uid=str(first.get("StudyInstanceUID", "")),
        modality=modality,
        patient_id=str(first.get("PatientID", "")),
        rescaled=all(has_rescale),
    )


def read_dicom_series(
    folder: str | os.PathLike, require_modality: str | None = "CT", series_uid: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The DICOM series of ``folder`` as ``(volume (X, Y, Z) float32 in HU, 4 x 4 RAS affine)``.

    See :func:`load_dicom_series` for the rules, arguments and errors.
    """
    series = load_dicom_series(folder, require_modality=require_modality, series_uid=series_uid)
    return series.volume, series.affine


# ----------------------------------------------------------------------------- MONAI


class DicomSeriesReader(ImageReader):
    """:func:`load_dicom_series` as a MONAI image reader of series folders.

    Use it as ``LoadImage(reader=DicomSeriesReader())`` (or ``LoadImaged``). The metadata holds
    what :class:`~monai.data.NibabelReader` gives for a NIfTI of the same volume -- ``affine`` and
    ``original_affine`` (RAS), ``spatial_shape``, ``space`` ("RAS"), ``original_channel_dim``
    ("no channel") -- plus ``series_instance_uid``, ``study_instance_uid``, ``modality``,
    ``patient_id`` and ``n_slices``. ``LoadImage`` sets ``filename_or_obj`` to the folder.

    Args:
        require_modality: refuse series of another Modality (``"CT"``); None accepts any.
        series_uid: the series to read from folders holding several.
    """

    def __init__(self, require_modality: str | None = "CT", series_uid: str | None = None) -> None:
        super().__init__()
        self.require_modality = require_modality
        self.series_uid = series_uid

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True when every given path is a folder (a DICOM series is a folder of files)."""
        return all(os.path.isdir(os.fspath(f)) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> DicomSeries:
        """Read one series folder (a sequence must hold exactly one folder)."""
        paths = ensure_tuple(data)
        if len(paths) != 1:
            raise ValueError(f"DicomSeriesReader reads one series folder at a time, got {len(paths)}: {paths}.")
        return load_dicom_series(paths[0], require_modality=self.require_modality, series_uid=self.series_uid)

    def get_data(self, img: DicomSeries) -> tuple[np.ndarray, dict]:
        """The ``(X, Y, Z)`` volume and its metadata (see the class docstring)."""
        meta = {
            "affine": img.affine.copy(),
            "original_affine": img.affine.copy(),
            "spatial_shape": np.asarray(img.volume.shape),
            "space": "RAS",
            "original_channel_dim": float("nan"),
            "series_instance_uid": img.series_uid,
            "study_instance_uid": img.study_uid,
            "modality": img.modality,
            "patient_id": img.patient_id,
            "n_slices": len(img.files),
        }
        return img.volume, meta


class LoadDicomSeriesd(MapTransform):
    """Load DICOM series folders as MetaTensors ``(X, Y, Z)`` in HU (no channel; add one with
    :class:`~monai.transforms.EnsureChannelFirstd`).

    Errors are the :class:`DicomSeriesError` of :func:`load_dicom_series` (not MONAI's "cannot find
    a suitable reader" chain), a missing folder a :class:`FileNotFoundError`.

    Args:
        keys: keys of the folders to load.
        require_modality: refuse series of another Modality; None accepts any.
        series_uid: the series to read from folders holding several.
        dtype: data type of the loaded arrays.
        allow_missing_keys: skip keys absent from the data.
    """

    def __init__(
        self,
        keys: KeysCollection,
        require_modality: str | None = "CT",
        series_uid: str | None = None,
        dtype: Any = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reader = DicomSeriesReader(require_modality=require_modality, series_uid=series_uid)
        self.loader = LoadImage(reader=self.reader, dtype=dtype, image_only=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            # the runtime reader argument: LoadImage then uses this reader only, no fallbacks
            d[key] = self.loader(d[key], reader=self.reader)
        return d
