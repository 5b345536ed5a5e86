"""The MNI-152 template loader and the synthetic ATLAS v2.0 look-alike demo data set."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle.data.mni import MNI152_AFFINE, MNI152_SHAPE, block_average, load_mni152_template, mni152_grid
from bundle.data.synthetic.atlas import (
    ATLAS_LESION_INDEX,
    SyntheticAtlasParams,
    atlas_subject_paths,
    generate_atlas_like_dataset,
    load_atlas_like_records,
    parse_atlas_subject_id,
)
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
RESOLUTION = 3
NUM_SUBJECTS = 6
NUM_COHORTS = 3
LESION_FREE_FRACTION = 0.34
SEED = 0
GRID_SHAPE = tuple(math.ceil(n / RESOLUTION) for n in MNI152_SHAPE)


def _read(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def template_1mm():
    return load_mni152_template(1)


@pytest.fixture(scope="module")
def template_coarse():
    return load_mni152_template(RESOLUTION)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One small data set shared by the module: (root, records)."""
    root = tmp_path_factory.mktemp("atlas") / "atlas_demo"
    records = generate_atlas_like_dataset(
        root,
        num_subjects=NUM_SUBJECTS,
        num_cohorts=NUM_COHORTS,
        lesion_free_fraction=LESION_FREE_FRACTION,
        resolution_mm=RESOLUTION,
        seed=SEED,
        progress=False,
    )
    return root, records


# --------------------------------------------------------------------------- template


def test_template_1mm_is_the_atlas_grid(template_1mm):
    assert template_1mm.shape == (197, 233, 189) == MNI152_SHAPE
    np.testing.assert_array_equal(template_1mm.affine, MNI152_AFFINE)
    for name in ("t1", "gm", "wm"):
        arr = getattr(template_1mm, name)
        assert arr.dtype == np.float32 and arr.shape == MNI152_SHAPE, name
        assert arr.min() >= 0.0 and arr.max() <= 1.0, name
    assert template_1mm.brain_mask.dtype == bool
    # An adult brain (CSF included) is 1 to 2.5 litres; at 1 mm a voxel is 1e-3 ml.
    assert 1000 < template_1mm.brain_mask.sum() / 1000 < 2500
    # The T1 template is brain-extracted: no signal outside the mask.
    assert not template_1mm.t1[~template_1mm.brain_mask].any()


def test_coarse_template_is_block_average(template_1mm, template_coarse):
    r = RESOLUTION
    shape, affine = mni152_grid(r)
    assert template_coarse.shape == shape == GRID_SHAPE
    np.testing.assert_array_equal(template_coarse.affine, affine)
    np.testing.assert_array_equal(np.diag(affine)[:3], [r, r, r])
    # Coarse voxel (0,0,0) sits at the world centre of 1 mm voxels 0..r-1 along each axis.
    first_block = np.array(np.meshgrid(*[np.arange(r)] * 3, indexing="ij")).reshape(3, -1)
    world = MNI152_AFFINE[:3, :3] @ first_block + MNI152_AFFINE[:3, 3:]
    np.testing.assert_allclose(affine[:3, 3], world.mean(axis=1))
    # One interior block, averaged by hand.
    i, j, k = 20, 30, 25
    block = template_1mm.t1[i * r : (i + 1) * r, j * r : (j + 1) * r, k * r : (k + 1) * r]
    assert template_coarse.t1[i, j, k] == pytest.approx(block.mean(), rel=1e-5)


def test_block_average_pads_the_far_end():
    volume = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    out = block_average(volume, 2)
    assert out.shape == (3, 2, 2)
    assert out[0, 0, 0] == pytest.approx(volume[:2, :2, :2].mean())
    # The last block along x holds one real row and one zero-padded row.
    assert out[2, 1, 1] == pytest.approx(volume[4:, 2:, 2:].sum() / 8)
    with pytest.raises(ValueError, match="3D"):
        block_average(volume[0], 2)


def test_bad_template_resolution():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="resolution_mm"):
            mni152_grid(bad)


def test_missing_nilearn_names_the_demo_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)
    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)
    with pytest.raises(ImportError, match=re.escape('pip install ".[demo]"')):
        load_mni152_template(4)


# --------------------------------------------------------------------------- files and layout


def test_files_load_with_monai(dataset, template_coarse):
    _, records = dataset
    loader = Compose([LoadImaged(["image", "label"], dtype=None), EnsureChannelFirstd(["image", "label"])])
    for rec in records:
        data = loader({"image": rec["image"], "label": rec["label"]})
        image, label = data["image"], data["label"]
        assert tuple(image.shape) == tuple(label.shape) == (1, *GRID_SHAPE)
        np.testing.assert_allclose(image.affine.numpy(), template_coarse.affine)
        np.testing.assert_allclose(label.affine.numpy(), template_coarse.affine)
        image_np, label_np = image.numpy(), label.numpy()
        assert image_np.dtype == np.float32 and label_np.dtype == np.uint8
        assert np.isfinite(image_np).all() and image_np.min() >= 0
        expected_values = {0, 1} if rec["num_lesions"] else {0}
        assert set(np.unique(label_np).tolist()) == expected_values, rec["subject"]
        # Every lesion voxel lies inside the template's brain.
        assert not (label_np[0].astype(bool) & ~template_coarse.brain_mask).any(), rec["subject"]


def test_nifti_headers(dataset):
    _, records = dataset
    for key in ("image", "label"):
        path = records[0][key]
        with open(path, "rb") as f:
            assert f.read(2) == b"\x1f\x8b", f"{path} is not gzip-compressed"
        img = nib.load(path)
        for affine, code in (img.header.get_qform(coded=True), img.header.get_sform(coded=True)):
            assert code > 0, f"{path} lacks a coded qform/sform"
            np.testing.assert_allclose(affine, img.affine)
        assert img.header.get_xyzt_units()[0] == "mm"
    assert nib.load(records[0]["image"]).get_data_dtype() == np.float32
    assert nib.load(records[0]["label"]).get_data_dtype() == np.uint8


def test_layout_and_names_follow_atlas(dataset):
    root, records = dataset
    pattern = re.compile(r"Training/R(\d{3})/sub-r\1s(\d{3})/ses-1/anat/sub-r\1s\2_ses-1_space-MNI152NLin2009aSym_")
    for i, rec in enumerate(records):
        cohort, number = parse_atlas_subject_id(rec["subject"])
        assert rec["cohort"] == cohort == f"r{i % NUM_COHORTS + 1:03d}"
        assert number == f"s{i // NUM_COHORTS + 1:03d}"
        image_rel = Path(rec["image"]).relative_to(root).as_posix()
        label_rel = Path(rec["label"]).relative_to(root).as_posix()
        assert pattern.match(image_rel) and image_rel.endswith("_T1w.nii.gz"), image_rel
        assert pattern.match(label_rel), label_rel
        assert label_rel.endswith("_label-L_desc-T1lesion_mask.nii.gz"), label_rel
        paths = atlas_subject_paths(root, rec["subject"])
        assert (str(paths["image"]), str(paths["label"])) == (rec["image"], rec["label"])
    # The glob an ATLAS v2.0 reader would use finds every mask and nothing else.
    masks = sorted(root.glob("Training/*/*/*/anat/*_label-L_desc-T1lesion_mask.nii.gz"))
    assert [str(m) for m in masks] == sorted(rec["label"] for rec in records)
    for bad in ("sub-001", "sub-r01s001", "r001s001", "sub-r001s001_ses-1"):
        with pytest.raises(ValueError, match="ATLAS subject id"):
            parse_atlas_subject_id(bad)


def test_participants_and_description(dataset):
    root, records = dataset
    with open(root / "participants.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [row["participant_id"] for row in rows] == [rec["subject"] for rec in records]
    for row, rec in zip(rows, records):
        assert row["cohort"] == rec["cohort"]
        assert int(row["num_lesions"]) == rec["num_lesions"]
        assert int(row["lesion_voxels"]) == rec["lesion_voxels"]
        if rec["num_lesions"]:
            contrasts = [les["contrast"] for les in rec["lesions"]]
            assert float(row["lesion_contrast_mean"]) == pytest.approx(np.mean(contrasts), abs=1e-4)
        else:
            assert row["lesion_contrast_mean"] == "n/a"
    with open(root / "dataset_description.json") as f:
        description = json.load(f)
    assert {"Name", "BIDSVersion", "GeneratedBy"} <= set(description)
    assert description["GeneratorParameters"]["seed"] == SEED


# --------------------------------------------------------------------------- content


def test_records_match_the_masks(dataset):
    _, records = dataset
    for rec in records:
        label = _read(rec["label"]).astype(bool)
        assert rec["num_lesions"] == len(rec["lesions"])
        assert rec["lesion_voxels"] == int(label.sum()) == sum(les["voxels"] for les in rec["lesions"])
        # Lesions are grown 6-connected and do not overlap, but two may touch.
        _, components = ndimage.label(label)
        assert components <= rec["num_lesions"]
        low, high = SyntheticAtlasParams().lesion_contrast
        for les in rec["lesions"]:
            assert les["voxels"] >= 1
            assert low <= les["contrast"] <= high
            assert all(0 <= c <= n - 1 for c, n in zip(les["centroid_vox"], GRID_SHAPE))


def test_lesion_free_subjects(dataset):
    _, records = dataset
    lesion_free = [rec for rec in records if rec["num_lesions"] == 0]
    expected = NUM_SUBJECTS * LESION_FREE_FRACTION
    assert math.floor(expected) <= len(lesion_free) <= math.ceil(expected)
    for rec in lesion_free:
        assert rec["lesion_voxels"] == 0 and rec["lesions"] == []
        assert not _read(rec["label"]).any(), rec["subject"]
    for rec in records:
        if rec["num_lesions"]:
            assert 1 <= rec["num_lesions"] <= len(SyntheticAtlasParams().lesion_count_probs)


def test_lesions_are_hypointense(dataset, template_coarse):
    _, records = dataset
    tissue = (template_coarse.gm + template_coarse.wm) >= 0.5
    ratios = []
    for rec in records:
        if not rec["num_lesions"]:
            continue
        image = _read(rec["image"]).astype(np.float64)
        label = _read(rec["label"]).astype(bool)
        ring = ndimage.binary_dilation(label, iterations=2) & ~label & tissue
        ratios.append(image[label].mean() / image[ring].mean())
    assert ratios, "the test data set needs lesion-bearing subjects"
    assert np.mean(ratios) < 1.0


def test_subjects_differ_and_have_noise(dataset):
    _, records = dataset
    images = [_read(rec["image"]) for rec in records]
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            assert not np.array_equal(images[a], images[b]), (records[a]["subject"], records[b]["subject"])
    # Rician noise: the background (far corner) is not constant.
    assert images[0][:5, :5, :5].std() > 0


# --------------------------------------------------------------------------- determinism and I/O


def test_same_seed_same_subjects_regardless_of_num_subjects(dataset, tmp_path):
    _, records = dataset
    again = generate_atlas_like_dataset(
        tmp_path / "again",
        num_subjects=NUM_COHORTS,
        num_cohorts=NUM_COHORTS,
        lesion_free_fraction=LESION_FREE_FRACTION,
        resolution_mm=RESOLUTION,
        seed=SEED,
        progress=False,
    )
    for old, new in zip(records, again):
        assert old["subject"] == new["subject"]
        assert {k: v for k, v in old.items() if k not in ("image", "label")} == {
            k: v for k, v in new.items() if k not in ("image", "label")
        }
        for key in ("image", "label"):
            np.testing.assert_array_equal(_read(old[key]), _read(new[key]))

    other = generate_atlas_like_dataset(
        tmp_path / "other_seed", num_subjects=1, num_cohorts=1, resolution_mm=RESOLUTION, seed=SEED + 1, progress=False
    )
    assert other[0]["subject"] == records[0]["subject"]
    assert not np.array_equal(_read(other[0]["image"]), _read(records[0]["image"]))


def test_records_round_trip(dataset):
    root, records = dataset
    assert load_atlas_like_records(root) == records
    assert load_atlas_like_records(str(root)) == records


def test_load_records_errors(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(FileNotFoundError, match=ATLAS_LESION_INDEX):
        load_atlas_like_records(tmp_path)
    with open(root / ATLAS_LESION_INDEX) as f:
        index = json.load(f)
    index["subjects"][0]["image"] = "Training/R001/nowhere.nii.gz"
    (tmp_path / ATLAS_LESION_INDEX).write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="nowhere.nii.gz"):
        load_atlas_like_records(tmp_path)
    (tmp_path / ATLAS_LESION_INDEX).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a valid"):
        load_atlas_like_records(tmp_path)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"num_subjects": 0}, "num_subjects"),
        ({"num_subjects": 2.0}, "num_subjects"),
        ({"num_cohorts": 0}, "num_cohorts"),
        ({"num_subjects": 2, "num_cohorts": 3}, "num_cohorts"),
        ({"lesion_free_fraction": 1.0}, "lesion_free_fraction"),
        ({"lesion_free_fraction": -0.1}, "lesion_free_fraction"),
        ({"resolution_mm": 5}, "resolution_mm"),
        ({"resolution_mm": 1.5}, "resolution_mm"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        generate_atlas_like_dataset(tmp_path / "out", **{"num_subjects": 4, "num_cohorts": 2, **kwargs})
    assert not (tmp_path / "out").exists()


def test_bad_params():
    with pytest.raises(ValueError, match="lesion_count_probs"):
        SyntheticAtlasParams(lesion_count_probs=(0.5, 0.2))
    with pytest.raises(ValueError, match="lesion_contrast"):
        SyntheticAtlasParams(lesion_contrast=(0.1, 1.0))


def test_output_dir_rules(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match="not a directory"):
        generate_atlas_like_dataset(a_file, num_subjects=1, num_cohorts=1, resolution_mm=4, progress=False)

    root = tmp_path / "data"
    first = generate_atlas_like_dataset(root, num_subjects=2, num_cohorts=1, resolution_mm=4, progress=False)
    (root / "notes.txt").write_text("user file")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_atlas_like_dataset(root, num_subjects=1, num_cohorts=1, resolution_mm=4, progress=False)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before

    # With overwrite, the earlier data set's extra subject folder goes, the user's file stays.
    again = generate_atlas_like_dataset(
        root, num_subjects=1, num_cohorts=1, resolution_mm=4, seed=7, overwrite=True, progress=False
    )
    assert load_atlas_like_records(root) == again
    assert not Path(first[1]["image"]).exists()
    assert (root / "notes.txt").read_text() == "user file"
    assert not [p for p in root.rglob(".*") if p.is_file()], "temporary files left behind"


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--output-dir", str(out)]
    cmd += ["--num-subjects", "2", "--num-cohorts", "2", "--resolution-mm", "4", "--seed", "3"]
    cmd += ["--no-progress"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "2 subjects, 2 cohorts" in done.stdout
    assert str(out) in done.stdout
    records = load_atlas_like_records(out)
    assert [rec["cohort"] for rec in records] == ["r001", "r002"]
    with gzip.open(records[0]["image"]) as f:
        assert len(f.read(348)) == 348  # a complete NIfTI-1 header

    # Refusing to write into the now non-empty folder is a clean error, not a traceback.
    from bundle.tools import make_demo_data as make_demo_data

    with pytest.raises(SystemExit) as exit_info:
        make_demo_data.main(["--output-dir", str(out), "--num-subjects", "1", "--num-cohorts", "1"])
    assert exit_info.value.code == 2
