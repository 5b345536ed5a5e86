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
"""MNI-152 grid checks, invertible resampling onto the grid, ITK affine registration to MNI."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle.data.mni import MNI152_AFFINE, MNI152_SHAPE, load_mni152_template, mni152_grid
from bundle.data.synthetic.atlas import SyntheticAtlasParams, generate_atlas_like_dataset
from bundle.registration import register_affine_to_mni
from bundle.transforms.brain import brain_preprocessing, mni_brain_preprocessing, native_brain_preprocessing
from bundle.transforms.mni import MNI152_BRAIN_BOX_MM, EnsureMNIGridd, RegisterToMNId, check_mni_grid, check_mni_space
from bundle.utils.errors import InvalidVolumeError
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from scipy import ndimage
from scipy.spatial.transform import Rotation

FLIP_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _volume(array: np.ndarray, affine: np.ndarray, name: str | None = None, **meta) -> MetaTensor:
    if name is not None:
        meta["filename_or_obj"] = name
    return MetaTensor(torch.as_tensor(array)[None], affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _random_affine(rng: np.random.Generator, centre: np.ndarray) -> np.ndarray:
    """Native-to-MNI world matrix about ``centre``: rotations <= 10 deg, translations <= 10 mm, scaling <= 5 %."""
    linear = Rotation.from_euler("xyz", rng.uniform(-10, 10, 3), degrees=True).as_matrix()
    linear = linear @ np.diag(1.0 + rng.uniform(-0.05, 0.05, 3))
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre - linear @ centre + rng.uniform(-10, 10, 3)
    return matrix


def _displacement_mm(estimated: np.ndarray, truth: np.ndarray, brain_world: np.ndarray) -> np.ndarray:
    """|estimated(x) - truth(x)| over the native brain points x = truth^-1(MNI brain points)."""
    native = np.linalg.inv(truth) @ np.vstack([brain_world, np.ones((1, brain_world.shape[1]))])
    return np.linalg.norm((estimated @ native)[:3] - brain_world, axis=0)


@pytest.fixture(scope="module")
def template3():
    return load_mni152_template(3)


@pytest.fixture(scope="module")
def subject3(tmp_path_factory):
    """One 3 mm synthetic subject whose anatomy is exactly the template's (no random deformation),
    so that a known affine applied to it is the registration's ground truth."""
    params = SyntheticAtlasParams(rotation_deg=0.0, scaling=0.0, translation_mm=0.0, elastic_mm=0.0)
    root = tmp_path_factory.mktemp("atlas3")
    record = generate_atlas_like_dataset(
        root, num_subjects=1, num_cohorts=1, lesion_free_fraction=0.0, resolution_mm=3, progress=False, params=params
    )[0]
    img = nib.load(record["image"])
    return {"record": record, "image": np.asarray(img.dataobj, dtype=np.float32), "affine": img.affine}


# --------------------------------------------------------------------------- grid checks


def test_brain_box_constant_matches_template():
    template = load_mni152_template(1)
    voxels = np.argwhere(template.brain_mask)
    low = MNI152_AFFINE[:3, :3] @ (voxels.min(axis=0) - 0.5) + MNI152_AFFINE[:3, 3]
    high = MNI152_AFFINE[:3, :3] @ (voxels.max(axis=0) + 0.5) + MNI152_AFFINE[:3, 3]
    np.testing.assert_allclose(MNI152_BRAIN_BOX_MM, (low, high))


def test_check_mni_grid():
    assert check_mni_grid(MNI152_AFFINE, MNI152_SHAPE) is None
    nudged = np.array(MNI152_AFFINE)
    nudged[:3, 3] += 0.005
    assert check_mni_grid(nudged, MNI152_SHAPE) is None  # within atol_mm
    nudged[:3, :3] *= 1.001  # 0.1 % larger voxels: 0.2 mm off at the far corner
    assert "off by up to" in check_mni_grid(nudged, MNI152_SHAPE)
    shape3, affine3 = mni152_grid(3)
    assert check_mni_grid(affine3, shape3, resolution_mm=3) is None

    shifted = np.array(MNI152_AFFINE)
    shifted[0, 3] += 1.0
    message = check_mni_grid(shifted, MNI152_SHAPE)
    assert message is not None and "off by up to 1 mm" in message
    message = check_mni_grid(affine3, shape3)
    assert message is not None and f"shape {tuple(shape3)} instead of {MNI152_SHAPE}" in message
    with pytest.raises(ValueError, match="4 x 4"):
        check_mni_grid(np.eye(3), MNI152_SHAPE)


def test_check_mni_space():
    shape2, affine2 = mni152_grid(2)
    assert check_mni_space(affine2, shape2) is None
    cropped = np.array(MNI152_AFFINE)
    cropped[:3, 3] += (20, 20, 0)
    assert check_mni_space(cropped, (160, 190, 160)) is None
    assert check_mni_space(FLIP_LPS @ MNI152_AFFINE, MNI152_SHAPE) is None  # flipped axes are not oblique

    assert "covers only" in check_mni_space(np.eye(4), (197, 233, 189))  # coordinates in voxel units
    oblique = np.array(MNI152_AFFINE)
    oblique[:3, :3] = Rotation.from_euler("z", 12, degrees=True).as_matrix()
    assert "oblique to the world axes by 12.0 deg" in check_mni_space(oblique, MNI152_SHAPE)
    assert "no world coordinates" in check_mni_space(MNI152_AFFINE, MNI152_SHAPE, xform_codes=(0, 0))


# --------------------------------------------------------------------------- EnsureMNIGridd


def test_ensure_grid_passes_on_grid_volumes_unchanged():
    data = torch.randint(0, 255, (1, *MNI152_SHAPE), dtype=torch.uint8)
    image = MetaTensor(data, affine=torch.as_tensor(np.array(MNI152_AFFINE)))
    transform = EnsureMNIGridd("image")
    out = transform({"image": image})["image"]
    assert out.dtype == torch.uint8 and torch.equal(out.as_tensor(), data)
    assert torch.equal(out.affine, image.affine) and len(image.applied_operations) == 0
    assert torch.equal(transform.inverse({"image": out})["image"].as_tensor(), data)

    # an image in LPS world coordinates (MONAI's ITK reader without the RAS conversion) is on the grid too
    shape3, affine3 = mni152_grid(3)
    lps = _volume(np.ones(shape3, np.float32), FLIP_LPS @ affine3, space="LPS")
    assert EnsureMNIGridd("image", resolution_mm=3)({"image": lps})["image"].shape[1:] == shape3


def test_ensure_grid_resamples_2mm_volume_and_invertd_brings_it_back():
    t1mm, t2mm = load_mni152_template(1), load_mni152_template(2)
    image = _volume(t2mm.t1, t2mm.affine, "/data/sub-x_space-MNI_res-2_T1w.nii.gz")
    label = _volume(t2mm.brain_mask.astype(np.uint8), t2mm.affine)
    pipeline = Compose([EnsureMNIGridd(["image", "label"])])
    out = pipeline({"image": image, "label": label})

    assert tuple(out["image"].shape) == (1, *MNI152_SHAPE)
    np.testing.assert_allclose(out["image"].affine.numpy(), MNI152_AFFINE, atol=1e-9)
    # the resampled volume is the template itself, i.e. world coordinates were respected
    assert np.corrcoef(out["image"][0].numpy().ravel(), t1mm.t1.ravel())[0, 1] > 0.99
    assert out["label"].dtype == torch.uint8 and _dice(out["label"][0].numpy(), t1mm.brain_mask) > 0.97

    back = Invertd(keys="image", transform=pipeline, orig_keys="image", nearest_interp=False)(dict(out))["image"]
    assert tuple(back.shape) == (1, *t2mm.t1.shape)
    np.testing.assert_allclose(back.affine.numpy(), t2mm.affine, atol=1e-6)
    assert float(np.abs(back[0].numpy() - t2mm.t1).mean()) < 0.01

    prediction = dict(out, pred=out["label"].clone())
    back = Invertd(keys="pred", transform=pipeline, orig_keys="label", nearest_interp=True)(prediction)["pred"]
    assert tuple(back.shape) == (1, *t2mm.t1.shape)
    assert _dice(back[0].numpy() > 0.5, t2mm.brain_mask) > 0.99


def test_ensure_grid_pads_a_crop_and_inverts_it_exactly():
    shape3, affine3 = mni152_grid(3)
    data = np.random.default_rng(0).random(shape3).astype(np.float32)
    crop = data[5:60, 3:70, 2:50]
    crop_affine = np.array(affine3)
    crop_affine[:3, 3] += affine3[:3, :3] @ np.array([5, 3, 2])
    pipeline = Compose([EnsureMNIGridd("image", resolution_mm=3)])
    out = pipeline({"image": _volume(crop, crop_affine)})["image"][0].numpy()
    np.testing.assert_allclose(out[5:60, 3:70, 2:50], crop, atol=1e-5)
    assert out[:5].max() == 0 and out[60:].max() == 0  # outside the crop: padding
    restored = pipeline.inverse({"image": pipeline({"image": _volume(crop, crop_affine)})["image"]})["image"]
    np.testing.assert_allclose(restored[0].numpy(), crop, atol=1e-5)
    np.testing.assert_allclose(restored.affine.numpy(), crop_affine, atol=1e-6)


def test_ensure_grid_error_mode_and_non_mni_volumes():
    shape2, affine2 = mni152_grid(2)
    name = "/data/sub-01_res-2_T1w.nii.gz"
    with pytest.raises(InvalidVolumeError, match=f"{name}: the image is not on the MNI-152 1 mm grid: shape"):
        EnsureMNIGridd("image", on_mismatch="error")({"image": _volume(np.ones(shape2, np.float32), affine2, name)})

    native = np.array(affine2)
    native[:3, :3] = Rotation.from_euler("xy", (8, -5), degrees=True).as_matrix() * 2.0
    with pytest.raises(InvalidVolumeError, match=f"{name}: .*oblique.*RegisterToMNId"):
        EnsureMNIGridd("image")({"image": _volume(np.ones(shape2, np.float32), native, name)})
    with pytest.raises(InvalidVolumeError, match="covers only.*RegisterToMNId"):
        EnsureMNIGridd("image")({"image": _volume(np.ones(shape2, np.float32), np.eye(4), name)})
    codes = {"qform_code": np.array(0), "sform_code": np.array(0)}
    with pytest.raises(InvalidVolumeError, match="no world coordinates"):
        EnsureMNIGridd("image")({"image": _volume(np.ones(shape2, np.float32), affine2, name, **codes)})
    with pytest.raises(ValueError, match="on_mismatch"):
        EnsureMNIGridd("image", on_mismatch="ignore")


def test_mni_brain_preprocessing_keeps_on_grid_files_as_brain_preprocessing_does(subject3):
    record = {"image": subject3["record"]["image"], "label": subject3["record"]["label"]}
    out = mni_brain_preprocessing(resolution_mm=3)(record)
    reference = brain_preprocessing()(record)
    assert torch.equal(out["image"].as_tensor(), reference["image"].as_tensor())
    assert torch.equal(out["label"].as_tensor(), reference["label"].as_tensor())
    with pytest.raises(RuntimeError) as info:  # MONAI wraps the error; the cause names the file
        mni_brain_preprocessing(resolution_mm=1, on_mismatch="error")(record)
    assert record["image"] in str(info.value.__cause__ or info.value)


# --------------------------------------------------------------------------- registration


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.5, 0.9)])
def test_moving_images_finer_than_the_template_are_block_averaged_in_place(spacing):
    from bundle.registration import _downsample

    affine = np.diag([*spacing, 1.0])
    affine[:3, :3] = Rotation.from_euler("z", 30, degrees=True).as_matrix() @ affine[:3, :3]
    affine[:3, 3] = (-40.0, 12.0, 7.0)
    data = np.random.default_rng(1).random((12, 12, 12)).astype(np.float32)
    small, small_affine = _downsample(data, affine, 3.0)
    factors = [int(3.0 // s) for s in spacing]
    assert small.shape == tuple(int(np.ceil(12 / f)) for f in factors)
    np.testing.assert_allclose(small[0, 0, 0], data[: factors[0], : factors[1], : factors[2]].mean(), rtol=1e-5)
    # the new voxel (0,0,0) sits at the mean world position of the block it averages
    block = np.argwhere(np.ones(factors, bool)).mean(axis=0)
    np.testing.assert_allclose(small_affine[:3, 3], affine[:3, :3] @ block + affine[:3, 3], atol=1e-9)
    np.testing.assert_allclose(small_affine[:3, :3], affine[:3, :3] @ np.diag(factors), atol=1e-9)


def test_register_to_mni_refuses_clashing_arguments():
    with pytest.raises(ValueError, match="registration_kwargs cannot set \\['template'\\]"):
        RegisterToMNId(["image"], registration_kwargs={"template": None})
    with pytest.raises(ValueError, match="image_key 'image' must be one of keys"):
        RegisterToMNId(["t1"])


def test_registration_recovers_a_known_affine(subject3, template3):
    rng = np.random.default_rng(11)
    brain_world = template3.affine[:3, :3] @ np.argwhere(template3.brain_mask).T + template3.affine[:3, 3:4]
    truth = _random_affine(rng, brain_world.mean(axis=1))
    # The same voxels placed in a "native" world: native point x shows what the subject shows at truth @ x.
    native_affine = np.linalg.inv(truth) @ subject3["affine"]
    moving = _volume(subject3["image"], native_affine, "/data/native_T1w.nii.gz")
    estimated, info = register_affine_to_mni(moving)
    error = _displacement_mm(estimated, truth, brain_world)
    assert error.mean() < 2.0 and error.max() < 4.0, (error.mean(), error.max())
    assert info["time_s"] > 0 and [s["transform"] for s in info["stages"]] == ["rigid", "affine"]
    # the registration must have moved away from the centre-of-mass start (>= 2 mm error there)
    start = np.eye(4)
    start[:3, 3] = -np.asarray(info["initial_translation_mm"])
    assert _displacement_mm(start, truth, brain_world).mean() > 2.0

    with pytest.raises(InvalidVolumeError, match="/data/flat.nii.gz: the image is constant"):
        register_affine_to_mni(_volume(np.ones((20, 20, 20), np.float32), np.eye(4), "/data/flat.nii.gz"))


def test_native_to_mni_to_native_round_trip(subject3, template3, tmp_path):
    rng = np.random.default_rng(5)
    brain_world = template3.affine[:3, :3] @ np.argwhere(template3.brain_mask).T + template3.affine[:3, 3:4]
    truth = _random_affine(rng, brain_world.mean(axis=1))
    # A native scan: 2.5 mm voxels on its own axis-aligned grid, resampled from the subject through truth.
    native_affine = np.diag([2.5, 2.5, 2.5, 1.0])
    native_affine[:3, 3] = (-92.0, -128.0, -78.0)
    native_shape = (74, 86, 76)
    voxel_map = np.linalg.inv(subject3["affine"]) @ truth @ native_affine
    resample = {"matrix": voxel_map[:3, :3], "offset": voxel_map[:3, 3], "output_shape": native_shape}
    head = (subject3["image"] > 0.25 * subject3["image"].max()).astype(np.float32)
    native_image = ndimage.affine_transform(subject3["image"], order=1, **resample)
    native_label = (ndimage.affine_transform(head, order=1, **resample) > 0.5).astype(np.uint8)
    paths = {"image": str(tmp_path / "native_T1w.nii.gz"), "label": str(tmp_path / "native_mask.nii.gz")}
    nib.save(nib.Nifti1Image(native_image, native_affine), paths["image"])
    nib.save(nib.Nifti1Image(native_label, native_affine), paths["label"])

    pipeline = native_brain_preprocessing(output_resolution_mm=3)
    out = pipeline(paths)
    shape3, affine3 = mni152_grid(3)
    assert tuple(out["image"].shape) == (1, *shape3)
    np.testing.assert_allclose(out["image"].affine.numpy(), affine3, atol=1e-9)
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) == 1.0
    error = _displacement_mm(out["mni_registration"]["moving_to_mni"], truth, brain_world)
    assert error.mean() < 2.0, error.mean()
    # on the MNI grid the label sits on the subject's (= template's) head
    assert _dice(out["label"][0].numpy(), head) > 0.8

    prediction = dict(out, pred=out["label"].clone())
    back = Invertd(keys="pred", transform=pipeline, orig_keys="label", nearest_interp=True)(prediction)["pred"]
    assert tuple(back.shape) == (1, *native_shape)
    np.testing.assert_allclose(back.affine.numpy(), native_affine, atol=1e-6)
    assert _dice(back[0].numpy() > 0.5, native_label) > 0.8
