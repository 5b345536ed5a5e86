"""The disk caches of volumes (bundle/data/cache.py): keyed by the contents of the files a record names.

A label corrected in place -- same path, what MONAI Label's *Submit Label* does to
``labels/final/<id>.nii.gz`` -- must be read again, never served from the cache; here even with
the same size and the modification time set back to the old one.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from bundle.data.cache import DiskCachedTransform, content_digest, record_fingerprint
from bundle.data.slices import VolumeSliceDataset
from monai.transforms import Compose, LoadImaged, Transform


class _ReadBytes(Transform):
    """A deterministic transform reading the record's files (counts its calls; picklable)."""

    calls = 0

    def __call__(self, d: dict) -> dict:
        type(self).calls += 1
        return {key: torch.tensor(list(Path(d[key]).read_bytes()), dtype=torch.float32) for key in ("image", "label")}


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrite ``path`` with ``data`` (same inode) and set its modification time back to the old one."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns


def test_record_fingerprint_follows_file_contents(tmp_path: Path) -> None:
    image, label = tmp_path / "image.bin", tmp_path / "label.bin"
    image.write_bytes(b"image")
    label.write_bytes(b"lesion")
    record = {"image": str(image), "label": str(label), "subject": "sub-1"}
    first = record_fingerprint(record)
    assert first == record_fingerprint(dict(record)) and len(first) == 64
    _rewrite_in_place(label, b"erased")  # same size, same mtime, other bytes
    assert record_fingerprint(record) != first
    _rewrite_in_place(label, b"lesion")  # the old contents: the old key
    assert record_fingerprint(record) == first
    assert record_fingerprint({**record, "subject": "sub-2"}) != first  # the record itself counts
    # a folder (a DICOM series) is keyed by its files' names and contents
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"slice 1")
    digest = content_digest(series)
    (series / "2.dcm").write_bytes(b"slice 2")
    assert content_digest(series) != digest


def test_disk_cache_reads_a_label_edited_in_place(tmp_path: Path) -> None:
    image, label = tmp_path / "image.bin", tmp_path / "label.bin"
    image.write_bytes(b"\x01\x02\x03")
    label.write_bytes(b"\x01\x01\x00")
    record = {"image": str(image), "label": str(label)}
    cache = tmp_path / "cache"
    _ReadBytes.calls = 0
    first = DiskCachedTransform(Compose([_ReadBytes()]), cache_dir=cache)(record)
    again = DiskCachedTransform(Compose([_ReadBytes()]), cache_dir=cache)(record)
    assert _ReadBytes.calls == 1, "an unchanged record was not served from the cache"
    torch.testing.assert_close(again["label"], first["label"])

    _rewrite_in_place(label, b"\x00\x00\x00")  # the label corrected in place
    corrected = DiskCachedTransform(Compose([_ReadBytes()]), cache_dir=cache)(record)
    assert _ReadBytes.calls == 2
    torch.testing.assert_close(corrected["label"], torch.zeros(3))
    assert len(list(cache.glob("*.pt"))) == 2


def _volume(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return str(path)


def test_slice_dataset_disk_cache_reads_a_label_edited_in_place(tmp_path: Path) -> None:
    """VolumeSliceDataset(cache="disk") -- the MAE pre-training's ``volume_cache: disk`` -- too."""
    rng = np.random.default_rng(0)
    image = _volume(tmp_path / "image.nii.gz", rng.random((8, 8, 4)).astype(np.float32))
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[2:5, 2:5, 1:3] = 1
    label = tmp_path / "label.nii.gz"
    _volume(label, mask)
    records = [{"image": image, "label": str(label)}]
    transform = Compose([LoadImaged(keys=["image", "label"], ensure_channel_first=True)])
    cache = tmp_path / "cache"
    before = VolumeSliceDataset(records, transform, cache="disk", cache_dir=cache)
    assert int(before.lesion_voxels.sum()) == 18

    mtime = label.stat().st_mtime_ns
    _volume(label, np.zeros_like(mask))  # saved again under the same name
    os.utime(label, ns=(mtime, mtime))
    after = VolumeSliceDataset(records, transform, cache="disk", cache_dir=cache)
    assert int(after.lesion_voxels.sum()) == 0, "the slices were built from the cached old label"
