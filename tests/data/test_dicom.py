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
"""DICOM series writing and reading (bundle.data.dicom)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from bundle.data.dicom import (
    CT_IMAGE_STORAGE,
    DicomSeriesError,
    DicomSeriesReader,
    LoadDicomSeriesd,
    load_dicom_series,
    ras_to_lps,
    read_dicom_series,
    write_dicom_series,
)
from bundle.utils.errors import find_volume_error
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage

SHAPE = (14, 11, 7)  # X (columns), Y (rows), Z (slices): all different to catch transposes


def _volume(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Integer HU (exact through int16) with air, tissue and bone."""
    return np.random.default_rng(seed).integers(-1024, 2500, shape).astype(np.float32)


def _rotation_z(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def _affine(linear: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = origin
    return a


# anisotropic, rotated 30 degrees, X and Y axes swapped and Z reversed: a right-handed oblique grid
ROTATED_AFFINE = _affine(
    _rotation_z(30.0) @ np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]]) @ np.diag([0.7, 0.9, 2.5]), (10.0, -20.0, 30.0)
)
AXIAL_AFFINE = np.diag([0.8, 0.8, 2.0, 1.0])


def _write(folder: Path, volume: np.ndarray | None = None, affine: np.ndarray = AXIAL_AFFINE, **kwargs) -> list[str]:
    return write_dicom_series(_volume() if volume is None else volume, affine, folder, **kwargs)


def _rewrite(path: str, **changes) -> None:
    """Set (value) or delete (None) tags of one file in place."""
    ds = pydicom.dcmread(path)
    for tag, value in changes.items():
        if value is None:
            delattr(ds, tag)
        else:
            setattr(ds, tag, value)
    ds.save_as(path)


def test_round_trip_matches_nifti_and_itk(tmp_path: Path) -> None:
    volume = _volume()
    folder = tmp_path / "series"
    files = write_dicom_series(volume, ROTATED_AFFINE, folder, shuffle_files_seed=7)
    names = [os.path.basename(f) for f in files]
    assert sorted(os.listdir(folder)) == sorted(names)
    assert sorted(names) != names  # the names do not encode the slice order

    read, affine = read_dicom_series(folder)
    assert read.dtype == np.float32 and read.shape == SHAPE
    np.testing.assert_array_equal(read, volume)
    np.testing.assert_allclose(affine, ROTATED_AFFINE, atol=1e-6)

    # the same volume as NIfTI through MONAI's own reader
    nifti = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(volume, ROTATED_AFFINE), str(nifti))
    reference = LoadImage(image_only=True)(str(nifti))
    np.testing.assert_allclose(affine, reference.affine.numpy(), atol=1e-4)

    # MONAI's reader interface on the folder: a MetaTensor with the NIfTI's affine
    loaded = LoadImage(reader=DicomSeriesReader(), image_only=True)(str(folder))
    assert isinstance(loaded, MetaTensor) and loaded.meta["filename_or_obj"] == str(folder)
    np.testing.assert_array_equal(loaded.numpy(), reference.numpy())
    np.testing.assert_allclose(loaded.affine.numpy(), reference.affine.numpy(), atol=1e-4)
    assert loaded.meta["space"] == reference.meta["space"] == "RAS"

    # ITK (GDCM) reads the files the same way
    itk_image = LoadImage(reader="ITKReader", image_only=True)(str(folder))
    np.testing.assert_array_equal(itk_image.numpy(), volume)
    np.testing.assert_allclose(itk_image.affine.numpy(), reference.affine.numpy(), atol=1e-4)


def test_written_tags(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.1234567"
    files = _write(tmp_path / "s", affine=ROTATED_AFFINE, series_uid=uid, patient_id="p01")
    first = pydicom.dcmread(files[0])
    assert first.SOPClassUID == CT_IMAGE_STORAGE == first.file_meta.MediaStorageSOPClassUID
    assert first.Modality == "CT" and first.PatientID == "p01" and first.SeriesInstanceUID == uid
    assert (first.Rows, first.Columns) == (SHAPE[1], SHAPE[0])
    assert (first.BitsAllocated, first.BitsStored, first.PixelRepresentation) == (16, 16, 1)
    assert (float(first.RescaleSlope), float(first.RescaleIntercept), first.RescaleType) == (1.0, -1024.0, "HU")
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([0.9, 0.7])  # (row spacing = Y, column spacing = X)
    assert float(first.SliceThickness) == pytest.approx(2.5)
    lps = ras_to_lps(ROTATED_AFFINE)
    assert [float(v) for v in first.ImagePositionPatient] == pytest.approx(lps[:3, 3].tolist())
    assert [float(v) for v in first.ImageOrientationPatient] == pytest.approx(
        [*(lps[:3, 0] / 0.7), *(lps[:3, 1] / 0.9)]
    )
    datasets = [pydicom.dcmread(f) for f in files]
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, SHAPE[2] + 1))
    assert len({ds.SOPInstanceUID for ds in datasets}) == SHAPE[2]
    assert len({(ds.StudyInstanceUID, ds.FrameOfReferenceUID) for ds in datasets}) == 1
    # the stored slice is (rows, columns) = volume[:, :, k].T with HU = stored - 1024
    np.testing.assert_array_equal(datasets[3].pixel_array, (_volume()[:, :, 3].T + 1024).astype(np.int16))
    # a given series UID makes the files reproducible
    again = _write(tmp_path / "again", affine=ROTATED_AFFINE, series_uid=uid, patient_id="p01")
    assert [Path(f).read_bytes() for f in again] == [Path(f).read_bytes() for f in files]


def test_order_comes_from_positions_not_instance_numbers(tmp_path: Path) -> None:
    volume = _volume(1)
    files = _write(tmp_path / "s", volume, shuffle_files_seed=3)
    for k, path in enumerate(files):  # reversed and duplicated instance numbers must not matter
        _rewrite(path, InstanceNumber=1 + (len(files) - k) // 2)
    read, affine = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(read, volume)
    np.testing.assert_allclose(affine, AXIAL_AFFINE, atol=1e-6)


def test_left_handed_grid_is_read_along_the_slice_normal(tmp_path: Path) -> None:
    """One flipped in-plane axis: the slice normal points against Z, so the series comes back Z-reversed."""
    volume = _volume(2)
    affine = _affine(np.diag([-0.8, 0.6, 2.0]), (5.0, 6.0, 7.0))
    _write(tmp_path / "s", volume, affine)
    read, read_affine = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(read, volume[:, :, ::-1])
    flip_z = np.eye(4)
    flip_z[2, 2], flip_z[2, 3] = -1.0, SHAPE[2] - 1
    np.testing.assert_allclose(read_affine, affine @ flip_z, atol=1e-6)  # the same voxels in space


def test_gantry_tilt_and_rescale(tmp_path: Path) -> None:
    tilted = AXIAL_AFFINE.copy()
    tilted[1, 2] = 0.5  # each slice shifted 0.5 mm along Y: a tilted stack
    volume = _volume(3)
    files = _write(tmp_path / "s", volume, tilted, rescale_slope=0.5, rescale_intercept=-1100.0, dtype=np.uint16)
    assert pydicom.dcmread(files[0]).PixelRepresentation == 0
    read, affine = read_dicom_series(tmp_path / "s")
    np.testing.assert_allclose(read, volume, atol=0.25)  # rounded to the 0.5 HU slope
    np.testing.assert_allclose(affine, tilted, atol=1e-6)


def test_writer_refuses_to_overwrite_and_is_atomic(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    _write(folder)  # an empty existing folder is fine
    with pytest.raises(FileExistsError, match=str(folder)):
        _write(folder, _volume(5))
    np.testing.assert_array_equal(read_dicom_series(folder)[0], _volume())
    (folder / "notes.txt").write_text("old")
    _write(folder, _volume(5), overwrite=True)
    assert not (folder / "notes.txt").exists()
    np.testing.assert_array_equal(read_dicom_series(folder)[0], _volume(5))
    with pytest.raises(ValueError, match="int16"):  # HU out of the stored range: nothing written
        _write(tmp_path / "big", np.full(SHAPE, 40000.0))
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no temporary or partial folders left


def test_empty_and_non_dicom_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DicomSeriesError, match=f"{empty}: no DICOM image files.*empty"):
        read_dicom_series(empty)
    (empty / "README.txt").write_text("not an image")
    with pytest.raises(DicomSeriesError, match="README.txt"):
        read_dicom_series(empty)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_dicom_series(tmp_path / "missing")


@pytest.mark.parametrize("damage", ["garbage", "truncated_header", "truncated_pixels"])
def test_corrupt_file(tmp_path: Path, damage: str) -> None:
    files = _write(tmp_path / "s", _volume(shape=(40, 32, 5)))
    bad = files[2]
    data = Path(bad).read_bytes()
    if damage == "garbage":
        Path(bad).write_bytes(np.random.default_rng(0).bytes(3000))
    elif damage == "truncated_header":
        Path(bad).write_bytes(data[:400])
    else:
        Path(bad).write_bytes(data[:-100])
    with pytest.raises(DicomSeriesError, match=f"{bad}: .*(corrupt|truncated)"):
        read_dicom_series(tmp_path / "s")


def test_two_series_in_one_folder(tmp_path: Path) -> None:
    uid_a, uid_b = "1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.22"
    _write(tmp_path / "a", series_uid=uid_a)
    other = _write(tmp_path / "b", _volume(4, (14, 11, 3)), series_uid=uid_b, shuffle_files_seed=1)
    for path in other:
        shutil.copy(path, tmp_path / "a")
    with pytest.raises(DicomSeriesError, match=rf"{tmp_path / 'a'}: 2 DICOM series") as info:
        read_dicom_series(tmp_path / "a")
    assert f"{uid_a} (7 file(s)" in str(info.value) and f"{uid_b} (3 file(s)" in str(info.value)
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "a", series_uid=uid_b)[0], _volume(4, (14, 11, 3)))
    with pytest.raises(DicomSeriesError, match="no series 1.2.3"):
        read_dicom_series(tmp_path / "a", series_uid="1.2.3")


def test_missing_and_duplicate_slices(tmp_path: Path) -> None:
    files = _write(tmp_path / "gap")
    os.remove(files[3])
    with pytest.raises(DicomSeriesError, match=rf"{tmp_path / 'gap'}: missing slice.*gap of 4.000 mm"):
        read_dicom_series(tmp_path / "gap")
    files = _write(tmp_path / "dup")
    shutil.copy(files[2], tmp_path / "dup" / "copy.dcm")
    with pytest.raises(DicomSeriesError, match="same position"):
        read_dicom_series(tmp_path / "dup")


def test_inconsistent_slices(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.33"
    _write(tmp_path / "a", series_uid=uid)
    moved = AXIAL_AFFINE.copy()
    moved[2, 3] = 100.0
    other = _write(tmp_path / "b", _volume(0, (12, 11, 2)), moved, series_uid=uid, shuffle_files_seed=2)
    shutil.copy(other[0], tmp_path / "a")
    with pytest.raises(
        DicomSeriesError, match=r"inconsistent slice shapes.*(11 x 14\b.*11 x 12\b|11 x 12\b.*11 x 14\b)"
    ):
        read_dicom_series(tmp_path / "a")
    files = _write(tmp_path / "c")
    _rewrite(files[1], ImageOrientationPatient=[0, 1, 0, 1, 0, 0])
    with pytest.raises(DicomSeriesError, match=f"inconsistent ImageOrientationPatient.*{files[1]}"):
        read_dicom_series(tmp_path / "c")
    files = _write(tmp_path / "d")
    _rewrite(files[4], ImagePositionPatient=None)
    with pytest.raises(DicomSeriesError, match=f"{files[4]}: no ImagePositionPatient"):
        read_dicom_series(tmp_path / "d")


def test_modality(tmp_path: Path) -> None:
    files = _write(tmp_path / "mr", modality="MR")
    with pytest.raises(DicomSeriesError, match=f"{files[0]}: Modality is 'MR', 'CT' is required"):
        read_dicom_series(tmp_path / "mr")
    series = load_dicom_series(tmp_path / "mr", require_modality=None)
    assert series.modality == "MR" and series.volume.shape == SHAPE


def test_missing_rescale_tags(tmp_path: Path) -> None:
    # stored values that are HU already (signed, air at -1000): accepted as they are
    volume = _volume()
    files = _write(tmp_path / "hu", volume, rescale_intercept=0.0)
    for path in files:
        _rewrite(path, RescaleSlope=None, RescaleIntercept=None, RescaleType=None)
    series = load_dicom_series(tmp_path / "hu")
    assert not series.rescaled
    np.testing.assert_array_equal(series.volume, volume)
    # raw stored values (air near 0, tissue near 1024) without the intercept: refused
    body = np.full(SHAPE, 40.0, np.float32)
    body[:4] = -1000.0  # air beside the body
    files = _write(tmp_path / "raw", body)
    for path in files:
        _rewrite(path, RescaleSlope=None, RescaleIntercept=None, RescaleType=None)
    with pytest.raises(
        DicomSeriesError, match=rf"{tmp_path / 'raw'}: no RescaleSlope/RescaleIntercept.*without the RescaleIntercept"
    ):
        read_dicom_series(tmp_path / "raw")


def test_load_dicom_seriesd_errors_are_clear(tmp_path: Path) -> None:
    volume = _volume()
    _write(tmp_path / "s", volume, ROTATED_AFFINE)
    out = Compose([LoadDicomSeriesd("image"), EnsureChannelFirstd("image")])({"image": str(tmp_path / "s")})
    assert tuple(out["image"].shape) == (1, *SHAPE)
    assert out["image"].meta["filename_or_obj"] == str(tmp_path / "s")
    assert out["image"].meta["modality"] == "CT" and out["image"].meta["n_slices"] == SHAPE[2]
    files = _write(tmp_path / "gap", volume)
    os.remove(files[2])
    with pytest.raises(Exception) as info:  # MONAI wraps transform errors; the clear one is inside
        Compose([LoadDicomSeriesd("image")])({"image": str(tmp_path / "gap")})
    found = find_volume_error(info.value)
    assert isinstance(found, DicomSeriesError) and str(tmp_path / "gap") in str(found)
    assert DicomSeriesReader().verify_suffix(str(tmp_path / "s"))
    assert not DicomSeriesReader().verify_suffix(files[0])
