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
"""CT windows, the HU check, CT preprocessing (NIfTI / MetaImage / DICOM) and calcium post-processing."""

from __future__ import annotations

from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from bundle.data.checks import hounsfield_problem
from bundle.data.dicom import DicomSeriesError, ras_to_lps, write_dicom_series
from bundle.transforms.ct import CT_WINDOWS, CalciumCandidatesd, HUWindow, HUWindowd, ct_preprocessing, resolve_window
from bundle.utils.errors import InvalidVolumeError, find_volume_error
from monai.data import MetaTensor
from monai.transforms import Invertd

SHAPE = (20, 16, 6)  # X, Y, Z
# not RAS: X runs right-to-left, Y runs inferior-superior and Z posterior-anterior; anisotropic spacing
AFFINE = np.array([[-0.8, 0.0, 0.0, 12.0], [0.0, 0.0, 2.5, -30.0], [0.0, 0.9, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]])


def _phantom(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A chest-like CT in integer HU: air around an elliptic body with two lungs, bone and calcium."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = x**2 / 0.8 + y**2 / 0.7 < 1.0
    lungs = ((np.abs(x) - 0.4) ** 2 + y**2 < 0.12) & body
    ct = np.where(body, 40.0, -1000.0)
    ct = np.where(lungs, -820.0, ct)[..., None].repeat(shape[2], axis=2)
    ct[shape[0] // 2, 2:4, :] = 700.0  # a bone
    ct[shape[0] // 2 + 2, shape[1] // 2, 2:4] = 300.0  # a calcification
    return np.rint(ct + rng.normal(0.0, 10.0, shape)).astype(np.float32)


def _label(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    label = np.zeros(shape, np.float32)
    label[3:7, 4:9, 1:4] = 1.0
    return label


def _meta(values: np.ndarray, name: str = "/data/scan.nii.gz") -> MetaTensor:
    return MetaTensor(torch.as_tensor(values)[None], meta={"filename_or_obj": name})


# ----------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    "window, low, high", [("lung", -1350.0, 150.0), ("mediastinum", -125.0, 225.0), ("calcium", -500.0, 1100.0)]
)
def test_window_presets_map_their_edges_to_0_and_1(window: str, low: float, high: float) -> None:
    hu = torch.tensor([[low - 500.0, low, (low + high) / 2, high, high + 500.0]])
    out = HUWindowd("image", window=window, check_hu=False)({"image": hu})["image"]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]))
    assert (CT_WINDOWS[window].min_hu, CT_WINDOWS[window].max_hu) == (low, high)


def test_calcium_window_keeps_the_agatston_bands_inside() -> None:
    w = CT_WINDOWS["calcium"]
    position = (np.array([130.0, 200.0, 300.0, 400.0, 1000.0]) - w.min_hu) / w.width
    assert 0.3 < position[0] < 0.5 and np.all(np.diff(position) > 0) and position[-1] < 1.0
    assert w.min_hu < -100.0  # fat and soft tissue are not clipped


def test_custom_windows_and_output_range() -> None:
    assert resolve_window((40, 400)) == HUWindow(40.0, 400.0)
    assert resolve_window({"level": 40, "width": 400}) == HUWindow(40.0, 400.0)
    assert resolve_window({"min": -160, "max": 240}) == HUWindow(40.0, 400.0)
    assert resolve_window("Lung") is CT_WINDOWS["lung"]
    hu = torch.tensor([-200.0, -160.0, 40.0, 240.0, 300.0])
    out = HUWindowd("x", window={"min": -160, "max": 240}, output_range=(-1.0, 1.0), check_hu=False)({"x": hu})["x"]
    torch.testing.assert_close(out, torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize(
    "window, message",
    [
        ("bone_marrow", "unknown CT window 'bone_marrow'; presets: calcium, lung, mediastinum"),
        ((40, 0), "width > 0"),
        ((40, -10), "width > 0"),
        ((float("nan"), 400), "finite level"),
        ((1, 2, 3), "cannot read"),
        (("a", "b"), "two numbers"),
        ({"min": 100, "max": 100}, "min < max"),
        ({"low": 0, "high": 1}, "keys"),
    ],
)
def test_bad_windows_are_refused(window, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HUWindowd("image", window=window)
    with pytest.raises(ValueError, match="output_range"):
        HUWindowd("image", output_range=(1.0, 1.0))


# ----------------------------------------------------------------------------- HU check


def test_real_hu_images_pass_the_check() -> None:
    ct = _phantom()
    assert hounsfield_problem(ct) is None
    padded = ct.copy()
    padded[:3] = -3024.0  # outside the scanner's field of view
    assert hounsfield_problem(padded) is None
    out = HUWindowd("image")({"image": _meta(padded)})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "/data/scan.nii.gz"
    assert float(out.min()) == 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize(
    "transform, cause",
    [
        (lambda ct: (ct + 1024.0) / 4095.0, "normalised"),
        (lambda ct: np.clip((ct + 160.0) / 400.0 * 255.0, 0, 255), "8-bit"),
        (lambda ct: ct + 1024.0, "without the RescaleIntercept"),
        (lambda ct: np.where(np.arange(SHAPE[0])[:, None, None] < 3, -2000.0, ct + 1024.0), "without the Rescale"),
        (lambda ct: ct[9:11, 2:6], "no air"),  # a crop of the mediastinum and bone (opt-out case)
    ],
)
def test_non_hu_images_are_refused_naming_the_file(transform, cause: str) -> None:
    values = transform(_phantom()).astype(np.float32)
    assert cause in hounsfield_problem(values)
    with pytest.raises(InvalidVolumeError, match=rf"/data/scan.nii.gz: the image is not in Hounsfield units.*{cause}"):
        HUWindowd("image", window="mediastinum")({"image": _meta(values)})
    out = HUWindowd("image", window="mediastinum", check_hu=False)({"image": _meta(values)})["image"]
    assert out.shape == (1, *values.shape)


# ----------------------------------------------------------------------------- preprocessing


def _write_metaimage(volume: np.ndarray, affine: np.ndarray, path: Path) -> str:
    """A .mhd with ITK (LPS world) holding the volume whose RAS affine is ``affine``."""
    lps = ras_to_lps(affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = itk.image_from_array(np.ascontiguousarray(volume.transpose(2, 1, 0)))  # itk arrays are (Z, Y, X)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(lps[:3, :3] / spacing)))
    itk.imwrite(image, str(path))
    return str(path)


@pytest.fixture()
def ct_files(tmp_path: Path) -> dict[str, str]:
    ct, label = _phantom(), _label()
    nib.save(nib.Nifti1Image(ct, AFFINE), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(label, AFFINE), str(tmp_path / "label.nii.gz"))
    write_dicom_series(ct, AFFINE, tmp_path / "dicom", shuffle_files_seed=0)
    return {
        "nifti": str(tmp_path / "ct.nii.gz"),
        "dicom": str(tmp_path / "dicom"),
        "mhd": _write_metaimage(ct, AFFINE, tmp_path / "ct.mhd"),
        "label": str(tmp_path / "label.nii.gz"),
    }


def test_ct_preprocessing_same_result_from_dicom_nifti_and_metaimage(ct_files: dict[str, str]) -> None:
    pre = ct_preprocessing(window="lung", keep_hu_key="image_hu")
    outs = {fmt: pre({"image": ct_files[fmt], "label": ct_files["label"]}) for fmt in ("nifti", "dicom", "mhd")}
    ref = outs["nifti"]
    # RAS: X flipped to left-to-right, then the 2.5 mm (A) axis, then the 0.9 mm (S) axis
    assert tuple(ref["image"].shape) == (1, 20, 6, 16)
    np.testing.assert_allclose(np.diag(ref["image"].affine.numpy())[:3], [0.8, 2.5, 0.9], atol=1e-6)
    expected_hu = np.transpose(_phantom(), (0, 2, 1))[::-1]
    np.testing.assert_array_equal(ref["image_hu"][0].numpy(), expected_hu)
    torch.testing.assert_close(ref["image"][0], torch.from_numpy(np.clip((expected_hu + 1350.0) / 1500.0, 0, 1).copy()))
    assert ref["label"].dtype == torch.uint8 and int(ref["label"].sum()) == int(_label().sum())
    for fmt in ("dicom", "mhd"):
        out = outs[fmt]
        torch.testing.assert_close(out["image"].as_tensor(), ref["image"].as_tensor(), rtol=0, atol=0)
        torch.testing.assert_close(out["image_hu"].as_tensor(), ref["image_hu"].as_tensor(), rtol=0, atol=0)
        np.testing.assert_allclose(out["image"].affine.numpy(), ref["image"].affine.numpy(), atol=1e-4)
    assert outs["dicom"]["image"].meta["filename_or_obj"] == ct_files["dicom"]


def test_invertd_takes_predictions_back_to_the_input_grid(ct_files: dict[str, str]) -> None:
    for pixdim in (None, (1.6, 1.8, 2.5)):
        pre = ct_preprocessing(pixdim=pixdim)
        out = pre({"image": ct_files["dicom"], "label": ct_files["label"]})
        out["pred"] = out["label"].clone().float()  # a perfect prediction on the preprocessed grid
        back = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(out)["pred"]
        assert tuple(back.shape) == (1, *SHAPE)
        np.testing.assert_allclose(back.affine.numpy(), AFFINE, atol=1e-4)
        if pixdim is None:  # orientation only: exact
            np.testing.assert_array_equal(back[0].numpy(), _label())
        else:  # through a coarser grid: the lesion comes back approximately
            overlap = float((back[0].numpy() > 0.5)[_label() > 0].mean())
            assert overlap > 0.5


def test_ct_preprocessing_errors_name_the_input(ct_files: dict[str, str], tmp_path: Path) -> None:
    pre = ct_preprocessing(keys=["image"], label_key=None)
    empty = tmp_path / "no_series"
    empty.mkdir()
    with pytest.raises(Exception) as info:
        pre({"image": str(empty)})
    assert isinstance(find_volume_error(info.value), DicomSeriesError) and str(empty) in str(
        find_volume_error(info.value)
    )
    with pytest.raises(Exception) as info:
        pre({"image": str(tmp_path / "nothing.nii.gz")})
    assert isinstance(find_volume_error(info.value), FileNotFoundError)
    raw = tmp_path / "raw.nii.gz"
    nib.save(nib.Nifti1Image(_phantom() + 1024.0, AFFINE), str(raw))
    with pytest.raises(Exception) as info:
        pre({"image": str(raw)})
    found = find_volume_error(info.value)
    assert isinstance(found, InvalidVolumeError) and f"{raw}: the image is not in Hounsfield units" in str(found)
    with pytest.raises(ValueError, match="keep_hu_key"):
        ct_preprocessing(keep_hu_key="label")


# ----------------------------------------------------------------------------- calcium


def test_calcium_candidates_keep_calcium_and_split_lesions() -> None:
    hu = np.full((12, 12, 6), 40.0, np.float32)
    hu[0] = -1000.0  # air, for the HU check
    hu[3:5, 3:5, 2] = 300.0  # lesion A
    hu[5, 5, 3] = 450.0  # lesion B: touches A only diagonally (not 6-connected)
    hu[8, 8, 1:3] = 129.0  # just below the threshold
    pred = np.zeros_like(hu)
    pred[2:7, 2:7, 1:5] = 1.0  # covers A, B and soft tissue
    pred[8, 8, 1:3] = 1.0
    affine = torch.diag(torch.tensor([0.5, 0.5, 3.0, 1.0], dtype=torch.float64))
    data = {
        "pred": MetaTensor(torch.from_numpy(pred)[None], affine=affine),
        "image_hu": MetaTensor(torch.from_numpy(hu)[None], affine=affine),
    }
    out = CalciumCandidatesd("pred", components_key="lesions")(data)
    expected = np.zeros_like(pred)
    expected[3:5, 3:5, 2] = 1.0
    expected[5, 5, 3] = 1.0
    assert out["pred"].shape == (1, 12, 12, 6) and out["pred"].dtype == torch.float32
    np.testing.assert_array_equal(out["pred"][0].numpy(), expected)
    lesions = out["pred_lesions"][0].numpy()
    assert lesions.max() == 2 and len(np.unique(lesions[expected > 0])) == 2
    assert torch.equal(out["pred"].affine, affine)
    joined = CalciumCandidatesd("pred", connectivity=26, components_key="lesions")(data)["pred_lesions"]
    assert int(joined.max()) == 1
    single = CalciumCandidatesd("pred", min_voxels=2)(data)["pred"][0].numpy()
    assert single.sum() == 4 and single[5, 5, 3] == 0


def test_calcium_candidates_refuse_mismatched_inputs() -> None:
    hu = torch.from_numpy(_phantom())[None]
    pred = torch.zeros_like(hu)
    with pytest.raises(ValueError, match="apply CalciumCandidatesd before Invertd"):
        CalciumCandidatesd()({"pred": pred[:, :10], "image_hu": hu})
    with pytest.raises(ValueError, match="different affines"):
        CalciumCandidatesd()(
            {"pred": MetaTensor(pred, affine=torch.eye(4) * 2), "image_hu": MetaTensor(hu, affine=torch.eye(4))}
        )
    with pytest.raises(ValueError, match="binary mask"):
        CalciumCandidatesd()({"pred": pred + 0.3, "image_hu": hu})
    with pytest.raises(KeyError, match="image_hu"):
        CalciumCandidatesd()({"pred": pred})
