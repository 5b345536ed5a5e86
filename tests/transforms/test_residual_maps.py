"""Residual-map transforms: batched vs reference, meta data, caching, reproducibility, lesions (CPU)."""

from __future__ import annotations

import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bundle.networks.mae import MaskedAutoencoderViT, mae_preset, save_mae
from bundle.transforms.residual_maps import (
    ConcatResidualMapsd,
    ResidualMapd,
    compute_residual_maps,
    draw_residual_masks,
    foreground_slice_indices,
    residual_maps_reference,
)
from monai.data import MetaTensor, PersistentDataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRangePercentilesd
from torch import nn

AFFINE = np.array([[2.0, 0, 0, -40], [0, 2.0, 0, -50], [0, 0, 3.0, -10], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def mae() -> MaskedAutoencoderViT:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return mae_preset("tiny").eval()


class IdentityMAE(nn.Module):
    """A stub whose reconstruction is its input (and counts its calls)."""

    def __init__(self, img_size: int = 64, patch_size: int = 8, in_channels: int = 1) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.in_channels = img_size, patch_size, in_channels
        self.calls = 0

    def reconstruct(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, paste_visible: bool = True
    ) -> torch.Tensor:
        self.calls += 1
        return x.clone()


class CountingMAE(nn.Module):
    """Wraps an MAE and counts the batches it reconstructs."""

    def __init__(self, mae: MaskedAutoencoderViT) -> None:
        super().__init__()
        self.mae = mae
        self.img_size, self.patch_size, self.in_channels = mae.img_size, mae.patch_size, mae.in_channels
        self.calls = 0

    def reconstruct(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, paste_visible: bool = True
    ) -> torch.Tensor:
        self.calls += 1
        return self.mae.reconstruct(x, mask=mask, paste_visible=paste_visible)


def _volume(shape: tuple[int, ...] = (1, 40, 48, 5), seed: int = 0) -> torch.Tensor:
    """Smooth positive structure plus noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    spatial = len(shape) - 1
    coarse = torch.rand(1, 1, *([4] * spatial), generator=g)
    mode = "trilinear" if spatial == 3 else "bilinear"
    smooth = F.interpolate(coarse, size=shape[1:], mode=mode, align_corners=False)[0]
    return (0.7 * smooth + 0.3 * torch.rand(shape, generator=g)).clamp(0, 1)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), str(path))
    return str(path)


# ------------------------------------------------------------------------- batched == reference
@pytest.mark.parametrize("masking", ["random", "stratified"])
@pytest.mark.parametrize("paste_visible", [True, False])
def test_batched_equals_reference(mae: MaskedAutoencoderViT, masking: str, paste_visible: bool) -> None:
    image = _volume()  # slices 40 x 48, resized to 64 x 64 and back
    masks = draw_residual_masks(64, 5, (0.5, 0.75), 3, masking, torch.Generator().manual_seed(0))
    assert masks.shape == (2, 3, 5, 64)
    reference = residual_maps_reference(mae, image, masks, paste_visible=paste_visible)
    for batch_size in (4, 256):
        batched = compute_residual_maps(mae, image, masks, batch_size=batch_size, paste_visible=paste_visible)
        assert batched.shape == (2, 40, 48, 5) and batched.dtype == torch.float32
        assert torch.allclose(batched, reference, atol=1e-5)
    assert reference.abs().sum() > 0


def test_slice_axis(mae: MaskedAutoencoderViT) -> None:
    image = _volume((1, 4, 40, 48))
    masks = draw_residual_masks(64, 4, (0.5,), 2, "random", torch.Generator().manual_seed(1))
    along_x = compute_residual_maps(mae, image, masks, slice_axis=0)
    along_z = compute_residual_maps(mae, image.permute(0, 2, 3, 1), masks, slice_axis=-1)
    assert along_x.shape == (1, 4, 40, 48)
    assert torch.allclose(along_x, along_z.permute(0, 3, 1, 2), atol=1e-6)


def test_amp_close_to_float32(mae: MaskedAutoencoderViT) -> None:
    image = _volume((1, 64, 64))
    masks = draw_residual_masks(64, 1, (0.75,), 2, "random", torch.Generator().manual_seed(0))
    exact = compute_residual_maps(mae, image, masks)
    autocast = compute_residual_maps(mae, image, masks, amp=True)  # bfloat16 on the CPU
    assert autocast.dtype == torch.float32
    assert (autocast - exact).abs().mean() < 0.05


# -------------------------------------------------------------------------------- zero residual
def test_zero_residual_where_reconstruction_is_input() -> None:
    image = _volume((1, 64, 64, 3))
    out = ResidualMapd("image", IdentityMAE(), paste_visible=False)({"image": image})["residual_maps"]
    assert out.shape == (2, 64, 64, 3)
    assert torch.count_nonzero(out) == 0


def test_zero_residual_ratio_zero_with_paste(mae: MaskedAutoencoderViT) -> None:
    # every patch visible: the pasted reconstruction is the slice itself, also through the resizing
    image = _volume()
    out = ResidualMapd("image", mae, mask_ratios=(0.0,), num_passes=2)({"image": image})["residual_maps"]
    assert out.shape == (1, 40, 48, 5) and torch.count_nonzero(out) == 0


# --------------------------------------------------------------------------- the dict transform
def test_compose_on_nifti_keeps_meta(tmp_path: Path, mae: MaskedAutoencoderViT) -> None:
    path = _write_nifti(tmp_path / "sub-01_T1w.nii.gz", _volume()[0].numpy())
    pipeline = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            ResidualMapd(keys="image", mae=mae, num_passes=2, batch_size=16),
            ConcatResidualMapsd(keys="image", output_key="net_input"),
        ]
    )
    out = pipeline({"image": path})
    image, maps, net_input = out["image"], out["residual_maps"], out["net_input"]
    assert isinstance(maps, MetaTensor) and maps.dtype == torch.float32
    assert maps.shape == (2, 40, 48, 5)
    assert np.allclose(maps.affine.numpy(), AFFINE) and np.allclose(maps.affine.numpy(), image.affine.numpy())
    assert maps.meta["filename_or_obj"] == path
    assert maps.abs().sum() > 0
    assert isinstance(net_input, MetaTensor) and net_input.shape == (3, 40, 48, 5)
    assert np.allclose(net_input.affine.numpy(), AFFINE)
    assert torch.equal(net_input[:1].as_tensor(), image.as_tensor())
    assert torch.equal(net_input[1:].as_tensor(), maps.as_tensor())


def test_2d_input_and_numpy(mae: MaskedAutoencoderViT) -> None:
    image = _volume((1, 56, 72))
    out = ResidualMapd("image", mae, num_passes=2)({"image": image})["residual_maps"]
    assert isinstance(out, torch.Tensor) and out.shape == (2, 56, 72)
    out_np = ResidualMapd("image", mae, num_passes=2)({"image": image.numpy()})["residual_maps"]
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    assert np.allclose(out_np, out.numpy())


def test_foreground_slice_indices() -> None:
    slices = torch.zeros(4, 1, 3, 3)
    slices[1, 0, 0, 0] = 0.3
    slices[3, 0, 2, 2] = 0.2
    assert foreground_slice_indices(slices, 0.25).tolist() == [1]
    assert foreground_slice_indices(slices, 0.0).tolist() == [1, 3]  # strictly above the threshold
    assert foreground_slice_indices(slices, None).tolist() == [0, 1, 2, 3]


def test_foreground_skipping_gives_exact_zeros(mae: MaskedAutoencoderViT) -> None:
    image = _volume()
    image[..., 1] = 0.0
    image[..., 3] = 0.05
    counting = CountingMAE(mae)
    transform = ResidualMapd("image", counting, num_passes=2, batch_size=100, foreground_threshold=0.1)
    out = transform({"image": image})["residual_maps"]
    assert torch.count_nonzero(out[..., 1]) == 0 and torch.count_nonzero(out[..., 3]) == 0
    assert (out[..., [0, 2, 4]].flatten(1).amax(dim=1) > 0).all()
    assert counting.calls == 2  # one batch per ratio: 3 kept slices x 2 passes
    # the kept slices are the same as without skipping (masks do not depend on the threshold)
    full = ResidualMapd("image", mae, num_passes=2)({"image": image})["residual_maps"]
    assert torch.allclose(out[..., [0, 2, 4]], full[..., [0, 2, 4]], atol=1e-6)


def test_default_skips_empty_slices_and_the_reference_agrees(mae: MaskedAutoencoderViT) -> None:
    image = _volume()
    image[..., 2] = 0.0  # an empty slice (zero padding, outside a skull-stripped brain)
    counting = CountingMAE(mae)
    out = ResidualMapd("image", counting, num_passes=2, batch_size=100)({"image": image})["residual_maps"]
    assert torch.count_nonzero(out[..., 2]) == 0 and counting.calls == 2  # 4 slices x 2 passes per ratio
    masks = draw_residual_masks(64, 5, (0.5, 0.75), 2, "stratified", torch.Generator().manual_seed(0))
    fast = compute_residual_maps(mae, image, masks, foreground_threshold=0.0)
    reference = residual_maps_reference(mae, image, masks, foreground_threshold=0.0)
    assert torch.allclose(fast, reference, atol=1e-5) and torch.count_nonzero(reference[..., 2]) == 0
    # without skipping, the MAE "reconstructs" the empty slice into non-zero maps
    no_skip = ResidualMapd("image", mae, num_passes=2, foreground_threshold=None)
    full = no_skip({"image": image})["residual_maps"]
    assert torch.count_nonzero(full[..., 2]) > 0
    assert torch.allclose(full[..., [0, 1, 3, 4]], out[..., [0, 1, 3, 4]], atol=1e-6)


def test_draw_masks_reproduce_the_transform(mae: MaskedAutoencoderViT) -> None:
    transform = ResidualMapd("image", mae, num_passes=2, masking="stratified")
    image = MetaTensor(_volume(), meta={"filename_or_obj": "/data/sub-03.nii.gz"})
    masks = transform.draw_masks(image)
    assert masks.shape == (2, 2, 5, 64) and masks.dtype == torch.bool
    assert torch.equal(masks, transform.draw_masks(image))
    out = transform({"image": image})["residual_maps"]
    expected = compute_residual_maps(mae, image, masks, foreground_threshold=0.0)
    assert torch.allclose(out.as_tensor(), expected, atol=1e-6)


def test_amp_dtype_and_output_device(mae: MaskedAutoencoderViT) -> None:
    image = _volume((1, 64, 64))
    masks = draw_residual_masks(64, 1, (0.75,), 2, "random", torch.Generator().manual_seed(0))
    by_name = compute_residual_maps(mae, image, masks, amp=True, amp_dtype="bf16")
    by_dtype = compute_residual_maps(mae, image, masks, amp=True, amp_dtype=torch.bfloat16)
    assert torch.equal(by_name, by_dtype) and by_name.dtype == torch.float32
    with pytest.raises(ValueError, match="amp_dtype"):
        compute_residual_maps(mae, image, masks, amp=True, amp_dtype="int8")
    with pytest.raises(ValueError, match="amp_dtype"):
        ResidualMapd("image", mae, amp=True, amp_dtype=torch.float64)
    # None: returned where computed (the CPU here); the default stays the CPU
    assert compute_residual_maps(mae, image, masks, output_device=None).device.type == "cpu"
    assert residual_maps_reference(mae, image, masks, output_device=None).device.type == "cpu"


def test_seed_reproducibility(mae: MaskedAutoencoderViT) -> None:
    image = _volume()

    def maps(seed: int | None, masking: str = "random") -> torch.Tensor:
        return ResidualMapd("image", mae, num_passes=2, seed=seed, masking=masking)({"image": image})["residual_maps"]

    assert torch.equal(maps(0), maps(0))
    assert not torch.allclose(maps(0), maps(1))
    assert torch.equal(maps(3, "stratified"), maps(3, "stratified"))
    assert not torch.allclose(maps(3, "stratified"), maps(3))
    # the file name takes part in the mask seed: another subject gets other masks
    named = MetaTensor(image, meta={"filename_or_obj": "/data/sub-02.nii.gz"})
    other = ResidualMapd("image", mae, num_passes=2)({"image": named})["residual_maps"]
    assert not torch.allclose(other.as_tensor(), maps(0))


def test_mae_from_path_callable_and_pickle(tmp_path: Path, mae: MaskedAutoencoderViT) -> None:
    path = tmp_path / "mae.pt"
    save_mae(mae, path)
    image = _volume()
    expected = ResidualMapd("image", mae, num_passes=2)({"image": image})["residual_maps"]
    from_path = ResidualMapd("image", str(path), num_passes=2)
    assert torch.allclose(from_path({"image": image})["residual_maps"], expected, atol=1e-6)
    # pickled after use: the lazily loaded model is not pickled, it is reloaded from the path
    state = pickle.dumps(from_path)
    assert len(state) < 10_000
    assert torch.allclose(pickle.loads(state)({"image": image})["residual_maps"], expected, atol=1e-6)
    from_callable = ResidualMapd("image", lambda: mae, num_passes=2)
    assert torch.allclose(from_callable({"image": image})["residual_maps"], expected)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ResidualMapd("image", str(tmp_path / "missing.pt"))({"image": image})


def test_persistent_dataset_caches_maps(tmp_path: Path, mae: MaskedAutoencoderViT) -> None:
    paths = [_write_nifti(tmp_path / f"sub-{i}.nii.gz", _volume(seed=i)[0].numpy()) for i in range(2)]
    counting = CountingMAE(mae)
    pipeline = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            ResidualMapd(keys="image", mae=counting, num_passes=2),
        ]
    )
    cache = tmp_path / "cache"
    data = [{"image": p} for p in paths]

    def dataset() -> PersistentDataset:
        # track_meta + weights_only=False: the cache keeps the MetaTensors (MONAI drops meta by default)
        return PersistentDataset(data, pipeline, cache_dir=cache, track_meta=True, weights_only=False)

    first = [item["residual_maps"] for item in dataset()]
    calls_after_first = counting.calls
    assert calls_after_first > 0
    assert len(list(cache.glob("*.pt"))) == 2
    second = [item["residual_maps"] for item in dataset()]
    assert counting.calls == calls_after_first  # served from the cache, the MAE did not run
    for a, b in zip(first, second):
        assert isinstance(b, MetaTensor) and np.allclose(b.affine.numpy(), AFFINE)
        assert torch.equal(a.as_tensor(), b.as_tensor())
    # a fresh computation gives the cached maps again: the transform is deterministic
    fresh = pipeline({"image": paths[1]})["residual_maps"]
    assert torch.equal(fresh.as_tensor(), second[1].as_tensor())


# ----------------------------------------------------------------------------------- bad input
def test_bad_inputs(mae: MaskedAutoencoderViT) -> None:
    transform = ResidualMapd("image", mae, num_passes=1)
    image = _volume()
    bad = image.clone()
    bad[0, 3, 4, 2] = float("nan")
    with pytest.raises(ValueError, match=r"'image'.*NaN"):
        transform({"image": bad})
    named = MetaTensor(bad, meta={"filename_or_obj": "/data/sub-07.nii.gz"})
    with pytest.raises(ValueError, match=r"sub-07\.nii\.gz.*NaN"):
        transform({"image": named})
    with pytest.raises(ValueError, match="channel-first"):
        transform({"image": torch.rand(40, 48)})
    with pytest.raises(ValueError, match="channel-first"):
        transform({"image": torch.rand(1, 1, 8, 8, 8)})
    with pytest.raises(ValueError, match="in_channels=1"):
        transform({"image": torch.rand(3, 32, 32)})
    with pytest.raises(KeyError, match="image"):
        transform({"label": image})
    assert "residual_maps" not in ResidualMapd("image", mae, allow_missing_keys=True)({"label": image})
    with pytest.raises(ValueError, match="not divisible by the MAE patch size"):
        ResidualMapd("image", mae, mae_input_size=60)({"image": image})
    with pytest.raises(ValueError, match="masking"):
        ResidualMapd("image", mae, masking="checkerboard")
    with pytest.raises(ValueError, match="mask_ratio"):
        ResidualMapd("image", mae, mask_ratios=(0.5, 1.5))
    with pytest.raises(ValueError, match="slice_axis"):
        ResidualMapd("image", mae, slice_axis=3)
    with pytest.raises(ValueError, match="one output key per key"):
        ResidualMapd(("image", "flair"), mae)
    with pytest.raises(ValueError, match="img_size"):
        ResidualMapd("image", nn.Linear(2, 2))({"image": image})
    no_reconstruct = nn.Identity()
    no_reconstruct.img_size, no_reconstruct.patch_size, no_reconstruct.in_channels = 64, 8, 1
    with pytest.raises(ValueError, match="reconstruct"):
        ResidualMapd("image", no_reconstruct)({"image": image})
    concat = ConcatResidualMapsd(keys="image")
    with pytest.raises(KeyError, match="residual_maps"):
        concat({"image": image})
    with pytest.raises(ValueError, match="spatial shape"):
        concat({"image": image, "residual_maps": torch.zeros(2, 40, 48, 4)})


# ------------------------------------------------------------------------- lesions stand out
def _train_tiny_mae(slices: torch.Tensor, steps: int, batch_size: int = 16, seed: int = 0) -> MaskedAutoencoderViT:
    """A tiny MAE fitted to ``(N, 1, 64, 64)`` healthy slices with the paper's two mask ratios."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mae = mae_preset("tiny")
    optimizer = torch.optim.Adam(mae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    mae.train()
    for step in range(steps):
        batch = slices[torch.randint(0, slices.shape[0], (batch_size,), generator=generator)]
        if step % 2:
            batch = batch.flip(-2)  # left-right flip: cheap augmentation
        ratio = 0.5 if step % 2 else 0.75
        loss, _, _ = mae(batch, mask=mae.random_masks(batch_size, ratio, generator=generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return mae.eval()


@pytest.fixture
def single_thread():
    # the tiny model's ops are far too small to gain from threads; on a shared CPU they only contend
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trained_mae_highlights_lesions(tmp_path: Path, single_thread: None) -> None:
    from bundle.data.synthetic.atlas import SyntheticAtlasParams, generate_atlas_like_dataset

    # clearly visible lesions (at 4 mm a lesion of 3000 mm^3 is ~47 voxels)
    params = SyntheticAtlasParams(lesion_volume_mm3=(3000.0, 20000.0), lesion_contrast=(0.4, 0.7))
    records = generate_atlas_like_dataset(
        tmp_path / "atlas",
        num_subjects=8,
        num_cohorts=2,
        lesion_free_fraction=0.5,
        resolution_mm=4,
        seed=0,
        progress=False,
        params=params,
    )
    load = Compose(
        [
            LoadImaged(keys=["image", "label"]),
            EnsureChannelFirstd(keys=["image", "label"]),
            ScaleIntensityRangePercentilesd(keys="image", lower=0, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    items = [load({"image": r["image"], "label": r["label"]}) for r in records]
    healthy = [item for item, r in zip(items, records) if r["num_lesions"] == 0]
    lesioned = [item for item, r in zip(items, records) if r["num_lesions"] > 0]
    assert healthy and lesioned

    # train on the axial slices (last axis) of the lesion-free subjects, resized to the MAE size
    slices = torch.cat([item["image"].as_tensor().permute(3, 0, 1, 2) for item in healthy])
    slices = slices[slices.flatten(1).amax(dim=1) > 0.05]
    slices = F.interpolate(slices, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    mae = _train_tiny_mae(slices, steps=400)

    transform = ResidualMapd("image", mae, mask_ratios=(0.5, 0.75), num_passes=5, foreground_threshold=0.05)
    inside, outside = [[], []], [[], []]
    for item in lesioned:
        maps = transform(item)["residual_maps"].as_tensor()
        lesion = item["label"][0].as_tensor() > 0
        brain = (item["image"][0].as_tensor() > 0.05) & ~lesion
        for r in range(2):
            inside[r].append(maps[r][lesion])
            outside[r].append(maps[r][brain])
    for r in range(2):
        mean_in, mean_out = torch.cat(inside[r]).mean().item(), torch.cat(outside[r]).mean().item()
        # measured: 2.38 (ratio 0.50) and 2.43 (ratio 0.75) times the mean outside the lesions
        assert mean_in > 1.5 * mean_out, (r, mean_in, mean_out)


def test_pad_to_square_matches_padded_volume(mae: MaskedAutoencoderViT) -> None:
    # Non-square slices are zero-padded to a square (the MAE pre-training's geometry) before the
    # resize: the maps must equal those of the explicitly padded volume, cropped back.
    image = _volume((1, 40, 48, 3))  # 40 x 48 slices: 4 rows of zeros above and below
    masks = draw_residual_masks(mae.num_patches, 3, (0.5, 0.75), 2, "random", torch.Generator().manual_seed(1))
    maps = compute_residual_maps(mae, image, masks, pad_to_square=True)
    padded = F.pad(image, (0, 0, 0, 0, 4, 4))
    expected = compute_residual_maps(mae, padded, masks, pad_to_square=False)[:, 4:44]
    assert maps.shape == (2, 40, 48, 3)
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-6)
    reference = residual_maps_reference(mae, image, masks, pad_to_square=True)
    torch.testing.assert_close(maps, reference, rtol=1e-5, atol=1e-5)
    # without padding the slices are stretched: a different geometry, different maps
    stretched = compute_residual_maps(mae, image, masks, pad_to_square=False)
    assert not torch.allclose(maps, stretched, atol=1e-4)
