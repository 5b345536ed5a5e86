"""Volume preprocessing (bundle.transforms.io) and 2D slice data sets (bundle.data.slices)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle.data.slices import VolumeSliceDataset, slice_sampling_weights
from bundle.transforms.brain import brain_preprocessing
from bundle.utils.errors import InvalidVolumeError, find_volume_error
from monai.data import DataLoader, MetaTensor
from monai.transforms import Compose, RandFlipd
from torch.utils.data import WeightedRandomSampler

SHAPE = (12, 10, 9)  # X, Y, Z; slices along Z (axis -1)
LESION_SLICES = (2, 5, 6)
AFFINE = np.array([[2.0, 0, 0, -10.0], [0, 2.0, 0, -20.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1]])


def _save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def _image(rng: np.random.Generator, empty_slices: tuple[int, ...] = ()) -> np.ndarray:
    image = rng.uniform(50.0, 100.0, SHAPE).astype(np.float32)
    for k in empty_slices:
        image[..., k] = 0.0
    return image


@pytest.fixture()
def volumes(tmp_path: Path) -> list[dict]:
    """Two subjects: sub-a with lesion voxels on LESION_SLICES (2, 3, 1 voxels), sub-b lesion-free."""
    rng = np.random.default_rng(0)
    label = np.zeros(SHAPE, np.float32)
    label[3, 4, 2] = 1
    label[3:5, 4, 5] = 1
    label[5:8, 2, 6] = 255  # other label values count as lesion too
    return [
        {
            "subject": "sub-a",
            "cohort": "c1",
            "image": _save(_image(rng, empty_slices=(0, 8)), tmp_path / "a_img.nii.gz"),
            "label": _save(label, tmp_path / "a_lab.nii.gz"),
        },
        {
            "subject": "sub-b",
            "cohort": "c2",
            "image": _save(_image(rng), tmp_path / "b_img.nii.gz"),
            "label": _save(np.zeros(SHAPE, np.float32), tmp_path / "b_lab.nii.gz"),
        },
    ]


def _pairs(ds: VolumeSliceDataset) -> set[tuple[int, int]]:
    return set(zip(ds.volume_index.tolist(), ds.slice_index.tolist()))


def test_selection_rules(volumes: list[dict]) -> None:
    pre = brain_preprocessing()
    everything = {(v, k) for v in range(2) for k in range(SHAPE[2])}
    lesion = {(0, k) for k in LESION_SLICES}

    ds_all = VolumeSliceDataset(volumes, pre, select="all")
    assert len(ds_all) == 2 * SHAPE[2] and _pairs(ds_all) == everything
    ds_free = VolumeSliceDataset(volumes, pre, select="lesion_free")
    assert _pairs(ds_free) == everything - lesion  # lesion-free slices of lesion subjects are kept
    assert not bool(ds_free.has_lesion.any())
    ds_lesion = VolumeSliceDataset(volumes, pre, select="lesion")
    assert _pairs(ds_lesion) == lesion
    assert dict(zip(ds_lesion.slice_index.tolist(), ds_lesion.lesion_voxels.tolist())) == {2: 1, 5: 2, 6: 3}
    for i in range(len(ds_lesion)):
        assert int(ds_lesion[i]["label"].sum()) > 0
    for i in range(len(ds_free)):
        assert int(ds_free[i]["label"].sum()) == 0

    # sub-a's slices 0 and 8 are empty (zero image): dropped by the foreground rule
    ds_fg = VolumeSliceDataset(volumes, pre, select="lesion_free", min_foreground_fraction=0.5)
    assert _pairs(ds_fg) == everything - lesion - {(0, 0), (0, 8)}
    ds_stride = VolumeSliceDataset(volumes, pre, select="all", slice_stride=4)
    assert ds_stride.slice_index.tolist() == [0, 4, 8, 0, 4, 8]

    # slicing along the first axis: sub-a's lesion voxels lie at x = 3, 4, 5, 6, 7
    ds_x = VolumeSliceDataset(volumes, pre, select="lesion", slice_axis=0)
    assert _pairs(ds_x) == {(0, x) for x in (3, 4, 5, 6, 7)}
    assert tuple(ds_x[0]["image"].shape) == (1, SHAPE[1], SHAPE[2])


def test_sampling_weights_oversample_lesion_slices(volumes: list[dict]) -> None:
    ds = VolumeSliceDataset(volumes, brain_preprocessing(), keys=("image",), select="all")
    weights = slice_sampling_weights(ds, lesion_oversampling=4.0)
    assert weights.shape == (len(ds),) and weights.dtype == torch.float64
    assert torch.equal(weights[ds.has_lesion], torch.full((3,), 4.0, dtype=torch.float64))
    assert torch.equal(weights[~ds.has_lesion], torch.ones(len(ds) - 3, dtype=torch.float64))
    assert torch.equal(slice_sampling_weights(ds, 1.0), torch.ones(len(ds), dtype=torch.float64))

    sampler = WeightedRandomSampler(weights, num_samples=60_000, generator=torch.Generator().manual_seed(0))
    draws = torch.bincount(torch.tensor(list(sampler)), minlength=len(ds)).double()
    per_lesion_slice = draws[ds.has_lesion].mean()
    per_other_slice = draws[~ds.has_lesion].mean()
    assert abs(float(per_lesion_slice / per_other_slice) - 4.0) < 0.4
    with pytest.raises(ValueError, match="lesion_oversampling"):
        slice_sampling_weights(ds, 0.0)


def test_slice_items_keep_meta_and_collate(volumes: list[dict]) -> None:
    ds = VolumeSliceDataset(volumes, brain_preprocessing(), select="all")
    item = ds[SHAPE[2] + 4]  # sub-b, slice 4
    image, label = item["image"], item["label"]
    assert isinstance(image, MetaTensor) and tuple(image.shape) == (1, SHAPE[0], SHAPE[1])
    assert tuple(label.shape) == (1, SHAPE[0], SHAPE[1]) and label.dtype == torch.uint8
    assert item["subject"] == "sub-b" and item["cohort"] == "c2"
    assert item["volume_index"] == 1 and item["slice_index"] == 4
    assert image.meta["filename_or_obj"] == volumes[1]["image"]
    assert image.meta["slice_index"] == 4 and image.meta["slice_axis"] == 2
    assert torch.allclose(image.meta["volume_affine"], torch.as_tensor(AFFINE))
    # the in-plane affine keeps the in-plane axes; its origin is the slice's first voxel
    expected = torch.tensor([[2.0, 0, -10.0], [0, 2.0, -20.0], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(image.affine, expected)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # with keys=("image",) the label guides selection only; the record's label path is not passed on
    image_only = VolumeSliceDataset(volumes, brain_preprocessing(), keys=("image",), select="lesion")
    assert set(image_only[0]) == {"image", "subject", "cohort", "volume_index", "slice_index"}

    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert tuple(batch["image"].shape) == (4, 1, SHAPE[0], SHAPE[1])
    assert batch["subject"] == ["sub-a"] * 4 and batch["slice_index"].tolist() == [0, 1, 2, 3]


def test_unlabeled_records(volumes: list[dict]) -> None:
    unlabeled = [{"subject": r["subject"], "image": r["image"]} for r in volumes]
    ds = VolumeSliceDataset(unlabeled, brain_preprocessing(), keys=("image", "label"), select="all")
    assert len(ds) == 2 * SHAPE[2] and "label" not in ds[0]
    assert not bool(slice_sampling_weights(ds, 3.0).ne(1.0).any())
    with pytest.raises(ValueError, match="needs labels.*sub-a"):
        VolumeSliceDataset(unlabeled, brain_preprocessing(), select="lesion_free")
    # an image-only pipeline ignores the label key entirely
    ds_img = VolumeSliceDataset(unlabeled, brain_preprocessing(keys=("image",), label_key=None), label_key=None)
    assert len(ds_img) == 2 * SHAPE[2]


def test_preprocessing_pipeline(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = np.zeros(SHAPE, np.float32)
    image[2:10, 2:8, 1:8] = rng.uniform(100.0, 1100.0, (8, 6, 7))
    image[2, 2, 1] = 1e6  # a hot voxel: above the 99.5th percentile, clipped
    label = np.zeros(SHAPE, np.float32)
    label[4, 3, 2] = 255
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS-oriented input (DICOM convention)
    rec = {
        "subject": "s",
        "image": _save(image, tmp_path / "img.nii.gz", lps),
        "label": _save(label, tmp_path / "lab.nii.gz", lps),
    }
    out = brain_preprocessing()(rec)
    img, lab = out["image"], out["label"]
    assert isinstance(img, MetaTensor) and tuple(img.shape) == (1, *SHAPE) and img.dtype == torch.float32
    assert np.allclose(np.diag(img.affine.numpy())[:3], [1.0, 1.0, 1.0])  # RAS after Orientationd
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    inside = img[img > 0]
    assert float((inside == 1.0).float().mean()) < 0.02  # only the top 0.5 % saturate
    assert lab.dtype == torch.uint8 and set(torch.unique(lab).tolist()) == {0, 1}
    flipped_index = (SHAPE[0] - 1 - 4, SHAPE[1] - 1 - 3, 2)  # x and y flipped by LPS -> RAS
    assert int(lab[(0, *flipped_index)]) == 1
    assert img.meta["filename_or_obj"] == rec["image"] and out["subject"] == "s"
    assert float(img[(0, SHAPE[0] - 1, SHAPE[1] - 1, 0)]) == 0.0  # background stays 0


def _error_of(records: list[dict]) -> BaseException:
    with pytest.raises(Exception) as info:
        VolumeSliceDataset(records, brain_preprocessing(), select="all")
    return info.value


def test_clear_errors_name_the_files(volumes: list[dict], tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    small_label = _save(np.zeros((12, 10, 8), np.float32), tmp_path / "small_lab.nii.gz")
    err = _error_of([{"image": volumes[0]["image"], "label": small_label}])
    assert isinstance(err, InvalidVolumeError)
    assert "shape mismatch" in str(err) and volumes[0]["image"] in str(err) and small_label in str(err)

    nan_image = _image(rng)
    nan_image[1, 1, 1] = np.nan
    nan_path = _save(nan_image, tmp_path / "nan.nii.gz")
    err = _error_of([{"image": nan_path, "label": volumes[0]["label"]}])
    assert isinstance(err, InvalidVolumeError) and nan_path in str(err) and "NaN" in str(err)

    four_d = _save(rng.uniform(size=(*SHAPE, 3)).astype(np.float32), tmp_path / "fmri.nii.gz")
    err = _error_of([{"image": four_d}])
    assert isinstance(err, InvalidVolumeError) and four_d in str(err) and "4D" in str(err)

    constant = _save(np.full(SHAPE, 7.0, np.float32), tmp_path / "flat.nii.gz")
    err = _error_of([{"image": constant}])
    assert isinstance(err, InvalidVolumeError) and constant in str(err) and "constant" in str(err)

    missing = str(tmp_path / "nowhere.nii.gz")
    err = _error_of([{"image": missing}])
    assert isinstance(err, FileNotFoundError) and missing in str(err)

    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not a nifti")
    err = _error_of([{"image": str(garbage)}])
    assert isinstance(err, InvalidVolumeError) and str(garbage) in str(err)

    # used directly, the pipeline raises MONAI's wrapper; find_volume_error digs out the clear error
    with pytest.raises(RuntimeError) as info:
        brain_preprocessing()({"image": nan_path})
    assert nan_path in str(find_volume_error(info.value))


def test_disk_cache_and_no_cache(volumes: list[dict], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = VolumeSliceDataset(volumes, brain_preprocessing(), select="lesion", cache="disk", cache_dir=cache_dir)
    entries = {p: p.stat().st_mtime_ns for p in cache_dir.glob("*.pt")}
    assert len(entries) == 2
    # a second run reads the cached volumes: no entry is computed or written again
    second = VolumeSliceDataset(volumes, brain_preprocessing(), select="lesion", cache="disk", cache_dir=cache_dir)
    assert {p: p.stat().st_mtime_ns for p in cache_dir.glob("*.pt")} == entries
    assert _pairs(second) == _pairs(first)
    a, b = first[1], second[1]
    assert torch.equal(a["image"], b["image"]) and torch.allclose(a["image"].affine, b["image"].affine)
    assert b["image"].meta["filename_or_obj"] == volumes[0]["image"]
    # the cache is keyed by the files' contents (tests/data/test_cache.py): it serves nothing for a
    # file that is gone, which is reported with or without a cache
    for rec in volumes:
        os.remove(rec["image"])
    for cache in ("disk", None):
        with pytest.raises(FileNotFoundError, match="nowhere|a_img"):
            VolumeSliceDataset(volumes, brain_preprocessing(), cache=cache, cache_dir=cache_dir)


def test_bad_arguments(volumes: list[dict]) -> None:
    with pytest.raises(ValueError, match="deterministic"):
        VolumeSliceDataset(volumes, Compose([brain_preprocessing(), RandFlipd(keys="image", prob=0.5)]))
    with pytest.raises(ValueError, match="select"):
        VolumeSliceDataset(volumes, brain_preprocessing(), select="lesions")
    with pytest.raises(ValueError, match="cache_dir"):
        VolumeSliceDataset(volumes, brain_preprocessing(), cache="disk")
    with pytest.raises(ValueError, match="no records"):
        VolumeSliceDataset([], brain_preprocessing())
