"""The synthetic MSD Task06 Lung and orCaScore look-alikes (bundle.data.synthetic.ct)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle.data.synthetic.ct import (
    CT_TISSUE_NAMES,
    MSD_LUNG_NODULE_INDEX,
    ORCASCORE_REFERENCE_SCORES,
    generate_msd_lung_like,
    generate_orcascore_like,
    make_msd_lung_case,
    make_orcascore_case,
    write_metaimage,
)
from bundle.metrics.calcium import agatston_scores, calcium_candidates
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage
from scipy import ndimage

LUNG_SHAPE, LUNG_SPACING = (96, 96, 48), (3.0, 3.0, 5.0)
LUNG_CASES, LUNG_TEST = 4, 1
ORCA_SHAPE, ORCA_SPACING = (96, 96, 12), (1.8, 1.8, 3.0)
ORCA_CASES = 4  # one case of each burden pattern
SEED = 0
TISSUE = {name: code for code, name in CT_TISSUE_NAMES.items()}


def _read_nifti(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


def _read_mhd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) array and RAS affine of a MetaImage through MONAI's ITK reader."""
    img = LoadImage(reader="ITKReader", image_only=True)(str(path))
    return np.asarray(img), np.asarray(img.affine, dtype=np.float64)


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(affine[:3, :3], axis=0)


@pytest.fixture(scope="module")
def lung_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ct") / "Task06_Lung"
    out = generate_msd_lung_like(
        root,
        num_cases=LUNG_CASES,
        num_test=LUNG_TEST,
        shape=LUNG_SHAPE,
        spacing=LUNG_SPACING,
        seed=SEED,
        progress=False,
    )
    assert Path(out) == root.resolve()
    return root


@pytest.fixture(scope="module")
def lung_cases():
    return [make_msd_lung_case(i, seed=SEED, shape=LUNG_SHAPE, spacing=LUNG_SPACING) for i in range(LUNG_CASES)]


@pytest.fixture(scope="module")
def orca_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ct") / "orCaScore"
    generate_orcascore_like(
        root, num_cases=ORCA_CASES, shape=ORCA_SHAPE, spacing=ORCA_SPACING, seed=SEED, progress=False
    )
    return root


@pytest.fixture(scope="module")
def orca_index(orca_root) -> dict:
    with open(orca_root / ORCASCORE_REFERENCE_SCORES, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------- MSD Task06 Lung


def test_msd_layout_and_dataset_json(lung_root):
    with open(lung_root / "dataset.json", encoding="utf-8") as f:
        dataset = json.load(f)
    assert dataset["name"] == "Lung"
    assert dataset["modality"] == {"0": "CT"}
    assert dataset["labels"] == {"0": "background", "1": "cancer"}
    assert dataset["tensorImageSize"] == "3D"
    assert dataset["numTraining"] == len(dataset["training"]) == LUNG_CASES
    assert dataset["numTest"] == len(dataset["test"]) == LUNG_TEST
    expected = [f"lung_{i:03d}" for i in range(1, LUNG_CASES + 1)]
    assert [e["image"] for e in dataset["training"]] == [f"./imagesTr/{s}.nii.gz" for s in expected]
    assert [e["label"] for e in dataset["training"]] == [f"./labelsTr/{s}.nii.gz" for s in expected]
    assert dataset["test"] == [f"./imagesTs/lung_{LUNG_CASES + 1:03d}.nii.gz"]  # strings, as in MSD
    on_disk = {p.relative_to(lung_root).as_posix() for p in lung_root.rglob("*.nii.gz")}
    listed = {e[k][2:] for e in dataset["training"] for k in ("image", "label")} | {t[2:] for t in dataset["test"]}
    assert on_disk == listed
    assert not list(lung_root.rglob(".*")), "temporary files left behind"
    readme = (lung_root / "README.md").read_text()
    assert "Synthetic data" in readme and "no patients" in readme
    # MONAI reads the MSD file as it is
    items = load_decathlon_datalist(str(lung_root / "dataset.json"), data_list_key="training")
    assert all(Path(item["image"]).is_file() and Path(item["label"]).is_file() for item in items)


def test_msd_files_hold_the_cases(lung_root, lung_cases):
    with open(lung_root / MSD_LUNG_NODULE_INDEX, encoding="utf-8") as f:
        index = json.load(f)
    assert [c["subject"] for c in index["cases"]] == [f"lung_{i:03d}" for i in range(1, LUNG_CASES + LUNG_TEST + 1)]
    for case, entry in zip(lung_cases, index["cases"]):
        image = _read_nifti(lung_root / entry["image"])
        label = _read_nifti(lung_root / entry["label"])
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert image.shape == label.shape == LUNG_SHAPE
        np.testing.assert_allclose(image.header.get_zooms(), LUNG_SPACING)
        np.testing.assert_allclose(image.affine, case.affine, atol=1e-4)
        np.testing.assert_allclose(label.affine, case.affine, atol=1e-4)
        assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # DICOM order, as scanners store it
        np.testing.assert_array_equal(np.asarray(image.dataobj), case.image)
        np.testing.assert_array_equal(np.asarray(label.dataobj), case.label)
        assert set(np.unique(case.label)) <= {0, 1}
        assert entry["nodules"] == case.lesions


def test_msd_hounsfield_units_by_tissue(lung_cases):
    for case in lung_cases:
        img = case.image.astype(float)
        median = {
            name: float(np.median(img[case.tissues == code]))
            for name, code in TISSUE.items()
            if (case.tissues == code).any()
        }

        assert img.min() >= -1024 and img.max() <= 3071
        corners = img[[0, 0, -1, -1], [0, -1, 0, -1], :]
        assert -1024 <= np.median(corners) <= -970  # air
        assert -1024 <= median["air"] <= -970
        assert -900 <= median["lung"] <= -750
        assert -900 <= float(np.median(img[case.lungs])) <= -700  # parenchyma and its vessels
        assert -150 <= median["fat"] <= -60
        assert 20 <= median["soft tissue"] <= 60
        assert 20 <= median["heart"] <= 60
        assert median["bone"] > 300 and np.percentile(img[case.tissues == TISSUE["bone"]], 95) > 500
        assert median["airway"] < -600
        # the lung window (-1000..400) has both ends occupied: air/lung below, bone above
        assert (img < -700).mean() > 0.2 and (img > 300).sum() > 1000
        # noise: the soft tissue is not flat
        assert 5 < img[case.tissues == TISSUE["soft tissue"]].std() < 200


def test_msd_tumours_are_nodules_inside_the_lungs(lung_cases):
    struct = ndimage.generate_binary_structure(3, 3)
    for index, case in enumerate(lung_cases):
        label = case.label.astype(bool)
        assert label.any()
        assert not (label & ~case.lungs).any(), f"{case.subject}: tumour voxels outside the lungs"
        components, n = ndimage.label(label, structure=struct)
        assert n == len(case.lesions), f"{case.subject}: nodules touch or are missing"
        for nodule in case.lesions:
            centre = tuple(nodule["centre_vox"])
            assert label[centre]
            assert int((components == components[centre]).sum()) == nodule["voxels"]
            assert 0.0 <= nodule["hu"] <= 60.0
        # a nodule is brighter than the lung around it
        ring = ndimage.binary_dilation(label, iterations=2) & ~label & case.lungs
        assert np.median(case.image[ring]) < -500
        assert np.median(case.image[label]) > np.median(case.image[ring]) + 300
        assert (case.tissues[label] == TISSUE["lesion"]).all()
        if index % 4 == 3:
            assert case.info["tiny_nodule"] and len(case.lesions) == 1 and case.lesions[0]["voxels"] <= 30
        else:
            assert not case.info["tiny_nodule"] and 1 <= len(case.lesions) <= 3
            assert max(nod["voxels"] for nod in case.lesions) > 30


def test_msd_same_seed_same_bytes(lung_root, tmp_path):
    # fewer cases: case i does not depend on how many are made
    again = Path(generate_msd_lung_like(tmp_path / "a", num_cases=2, num_test=0, seed=SEED, progress=False))
    for rel in ("imagesTr/lung_001.nii.gz", "labelsTr/lung_001.nii.gz", "imagesTr/lung_002.nii.gz"):
        assert (again / rel).read_bytes() == (lung_root / rel).read_bytes()
    other = make_msd_lung_case(0, seed=SEED + 1)
    assert not np.array_equal(other.image, make_msd_lung_case(0, seed=SEED).image)


def test_output_folder_rules(lung_root, tmp_path):
    small = {"shape": (48, 48, 16), "spacing": (6.0, 6.0, 15.0), "progress": False}
    with pytest.raises(FileExistsError, match="not empty"):
        generate_msd_lung_like(lung_root, num_cases=1, **small)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        generate_msd_lung_like(tmp_path / "file", **small)

    root = tmp_path / "lung"
    generate_msd_lung_like(root, num_cases=3, num_test=1, **small)
    (root / "notes.txt").write_text("user file")
    generate_msd_lung_like(root, num_cases=2, num_test=0, overwrite=True, **small)
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["lung_001.nii.gz", "lung_002.nii.gz"]
    assert not (root / "labelsTr" / "lung_003.nii.gz").exists() and not list((root / "imagesTs").iterdir())
    assert (root / "notes.txt").read_text() == "user file"
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 2


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"num_cases": 0}, "num_cases"),
        ({"seed": -1}, "seed"),
        ({"num_test": -1}, "num_test"),
        ({"shape": (16, 16, 4)}, "too small"),
        ({"shape": (64, 64)}, "3 integers"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
    ],
)
def test_msd_bad_arguments(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        generate_msd_lung_like(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- orCaScore


def test_orcascore_layout(orca_root, orca_index):
    cases = orca_index["cases"]
    assert [c["subject"] for c in cases] == ["TRV1P1", "TRV2P1", "TRV3P1", "TRV4P1"]
    assert [c["burden"] for c in cases] == ["moderate", "minimal", "none", "severe"]
    training = orca_root / "Training Set"
    for case in cases:
        s = case["subject"]
        for rel in (f"Images/{s}CTI.mhd", f"Images/{s}CTI.raw", f"Reference standard/{s}CTR.mhd"):
            assert (training / rel).is_file(), rel
        assert case["image"] == f"Training Set/Images/{s}CTI.mhd"
        assert case["reference"] == f"Training Set/Reference standard/{s}CTR.mhd"
        assert case["image_dicom"] == f"Training Set/DICOM/{s}"
        assert len(list((training / "DICOM" / s).iterdir())) == ORCA_SHAPE[2]  # one file per slice
        header = (training / f"Images/{s}CTI.mhd").read_text()
        assert "ElementType = MET_SHORT" in header and f"ElementDataFile = {s}CTI.raw" in header
        assert (training / f"Images/{s}CTI.raw").stat().st_size == 2 * math.prod(ORCA_SHAPE)
    assert "Synthetic data" in (orca_root / "README.md").read_text()
    assert orca_index["agatston_definition"]["threshold_hu"] == 130
    assert not list(orca_root.rglob(".*")), "temporary files left behind"


def test_orcascore_mhd_and_dicom_hold_the_same_volume(orca_root, orca_index):
    from bundle.data.dicom import read_dicom_series

    for index, case in enumerate(orca_index["cases"]):
        image, affine = _read_mhd(orca_root / case["image"])
        reference, ref_affine = _read_mhd(orca_root / case["reference"])
        volume, dicom_affine = read_dicom_series(orca_root / case["image_dicom"])
        assert image.shape == reference.shape == volume.shape == ORCA_SHAPE
        np.testing.assert_array_equal(volume, image)
        np.testing.assert_allclose(dicom_affine, affine, atol=1e-3)
        np.testing.assert_allclose(ref_affine, affine, atol=1e-3)
        np.testing.assert_allclose(_spacing(affine), ORCA_SPACING, atol=1e-6)
        # and both are the generator's case
        made = make_orcascore_case(index, seed=SEED, shape=ORCA_SHAPE, spacing=ORCA_SPACING)
        np.testing.assert_array_equal(image, made.image)
        np.testing.assert_array_equal(reference, made.label)
        np.testing.assert_allclose(affine, made.affine, atol=1e-3)
        assert set(np.unique(reference)) <= {0, 1}


def test_agatston_scores_match_the_construction(orca_root, orca_index):
    categories = set()
    for case in orca_index["cases"]:
        image, affine = _read_mhd(orca_root / case["image"])
        reference, _ = _read_mhd(orca_root / case["reference"])
        result = agatston_scores(reference, image, _spacing(affine))
        assert result.total == pytest.approx(case["total"], rel=1e-9, abs=1e-9)
        assert result.category == case["category"]
        categories.add(result.category)
        assert len(result.lesions) == case["n_lesions"] == len(case["lesions"])
        for lesion in case["lesions"]:
            (i0, _), (j0, _), (k0, _) = lesion["bbox_vox"]
            got = result.lesions[int(result.labels[i0, j0, k0]) - 1]
            assert got.label == lesion["lesion"]  # numbered in the documented order
            assert got.agatston == pytest.approx(lesion["agatston"], rel=1e-9)
            assert got.n_voxels == lesion["n_voxels"]
            assert got.volume_mm3 == pytest.approx(lesion["volume_mm3"], rel=1e-9)
            assert got.peak_hu == lesion["peak_hu"]
            assert got.n_slices == lesion["n_slices"]
    assert {"0", "I"} < categories and len(categories) >= 3  # the burden patterns give varied categories


def test_reference_scores_are_closed_form(orca_index):
    """Recompute every score from the per-slice pixels with the textbook Agatston rule."""
    sx, sy, sz = ORCA_SPACING
    bands_seen = set()
    for case in orca_index["cases"]:
        total = 0.0
        for lesion in case["lesions"]:
            score = 0.0
            for sl in lesion["slices"]:
                weight = 1 if sl["peak_hu"] < 200 else 2 if sl["peak_hu"] < 300 else 3 if sl["peak_hu"] < 400 else 4
                assert sl["peak_hu"] >= 130 and sl["weight"] == weight
                assert sl["area_mm2"] == pytest.approx(sl["pixels"] * sx * sy) and sl["area_mm2"] >= 1.5
                score += sl["pixels"] * sx * sy * weight
            assert lesion["agatston"] == pytest.approx(score)
            assert lesion["volume_mm3"] == pytest.approx(lesion["n_voxels"] * sx * sy * sz)
            assert lesion["n_voxels"] == sum(sl["pixels"] for sl in lesion["slices"])
            total += score
            bands_seen.add(lesion["band"])
        assert case["total"] == pytest.approx(total)
        expected = (
            "0" if total == 0 else "I" if total <= 10 else "II" if total <= 100 else "III" if total <= 400 else "IV"
        )
        assert case["category"] == expected
        bands = {lesion["band"] for lesion in case["lesions"]}
        if case["burden"] in ("moderate", "severe"):
            assert bands == {1, 2, 3, 4}, "every density band in each moderate/severe case"
        elif case["burden"] == "minimal":
            assert case["n_lesions"] == 1 and case["category"] == "I"
        else:
            assert case["n_lesions"] == 0 and case["total"] == 0 and case["category"] == "0"
    assert bands_seen == {1, 2, 3, 4}


def test_calcium_candidates_find_exactly_the_lesions(orca_root, orca_index):
    six = ndimage.generate_binary_structure(3, 1)
    for case in orca_index["cases"]:
        image, _ = _read_mhd(orca_root / case["image"])
        reference = _read_mhd(orca_root / case["reference"])[0].astype(bool)
        found = calcium_candidates(reference, image)
        np.testing.assert_array_equal(found, reference)  # every reference voxel is >= 130 HU
        components, n = ndimage.label(found, structure=six)
        assert n == case["n_lesions"]
        for lesion in case["lesions"]:
            (i0, i1), (j0, j1), (k0, k1) = lesion["bbox_vox"]
            number = components[i0, j0, k0]
            voxels = np.argwhere(components == number)
            assert voxels.min(axis=0).tolist() == [i0, j0, k0] and voxels.max(axis=0).tolist() == [i1, j1, k1]
            for sl in lesion["slices"]:
                assert int((components[:, :, sl["slice"]] == number).sum()) == sl["pixels"]
                assert int(image[:, :, sl["slice"]][components[:, :, sl["slice"]] == number].max()) == sl["peak_hu"]
        # no other voxel >= 130 HU touches a lesion (not even diagonally): noise and partial
        # volume leave the construction intact
        bright, _ = ndimage.label(image >= 130, structure=np.ones((3, 3, 3)))
        touching = np.unique(bright[reference])
        assert not (np.isin(bright, touching[touching > 0]) & ~reference).any()


def test_orcascore_anatomy_is_cardiac_ct():
    case = make_orcascore_case(0, seed=SEED, shape=ORCA_SHAPE, spacing=ORCA_SPACING)
    img = case.image.astype(float)
    for name, low, high in (("heart", 20, 60), ("fat", -150, -50), ("lung", -900, -750)):
        assert low <= np.median(img[case.tissues == TISSUE[name]]) <= high, name
    assert (case.tissues == TISSUE["heart"]).mean() > 0.1  # the field of view is centred on the heart
    soft = np.isin(case.tissues, [TISSUE[n] for n in ("heart", "soft tissue", "fat", "blood vessel")])
    assert img[soft & ~ndimage.binary_dilation(case.tissues == TISSUE["bone"], iterations=2)].max() < 130


def test_orcascore_same_seed_same_bytes(orca_root, orca_index, tmp_path):
    from bundle.data.dicom import read_dicom_series

    again = Path(
        generate_orcascore_like(
            tmp_path / "a", num_cases=2, shape=ORCA_SHAPE, spacing=ORCA_SPACING, seed=SEED, progress=False
        )
    )
    for s in ("TRV1P1", "TRV2P1"):
        for rel in (f"Images/{s}CTI.mhd", f"Images/{s}CTI.raw", f"Reference standard/{s}CTR.raw"):
            assert (again / "Training Set" / rel).read_bytes() == (orca_root / "Training Set" / rel).read_bytes()
        first = read_dicom_series(orca_root / "Training Set" / "DICOM" / s)
        second = read_dicom_series(again / "Training Set" / "DICOM" / s)
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])
    index = json.loads((again / ORCASCORE_REFERENCE_SCORES).read_text())
    assert index["cases"] == orca_index["cases"][:2]


def test_orcascore_mhd_only_and_bad_arguments(tmp_path):
    root = Path(
        generate_orcascore_like(
            tmp_path / "m", num_cases=1, shape=(64, 64, 8), spacing=(2.7, 2.7, 3.0), formats=("mhd",), progress=False
        )
    )
    assert not (root / "Training Set" / "DICOM").exists()
    assert "image_dicom" not in json.loads((root / ORCASCORE_REFERENCE_SCORES).read_text())["cases"][0]
    with pytest.raises(ValueError, match="formats"):
        generate_orcascore_like(tmp_path / "x", formats=("png",), progress=False)
    with pytest.raises(ValueError, match="num_cases"):
        generate_orcascore_like(tmp_path / "x", num_cases=0, progress=False)
    with pytest.raises(ValueError, match="too small"):
        generate_orcascore_like(tmp_path / "x", shape=(32, 32, 4), progress=False)
    assert not (tmp_path / "x").exists()


def test_write_metaimage_rules(tmp_path):
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    affine = np.diag([-0.5, -0.5, 3.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    path = write_metaimage(array, affine, tmp_path / "a.mhd")
    read, read_affine = _read_mhd(Path(path))
    np.testing.assert_array_equal(read, array)
    np.testing.assert_allclose(read_affine, affine, atol=1e-6)
    with pytest.raises(FileExistsError):
        write_metaimage(array, affine, tmp_path / "a.mhd")
    with pytest.raises(ValueError, match=r"\.mhd"):
        write_metaimage(array, affine, tmp_path / "a.nii")
    tilted = affine.copy()
    tilted[:3, :3] = [[0.6, 0.8, 0], [-0.8, 0.6, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="axis-aligned"):
        write_metaimage(array, tilted, tmp_path / "b.mhd")
    with pytest.raises(ValueError, match="int16"):
        write_metaimage(array.astype(np.int64), affine, tmp_path / "c.mhd")
