"""Residual maps on CUDA against the reference implementation on the CPU (tests marked ``cuda``).

Skipped with the reason "no CUDA device" where CUDA is unavailable; ``scripts/device_suite.py``
runs them (``pytest -m cuda``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from bundle.networks.mae import MaskedAutoencoderViT, mae_preset
from bundle.transforms.residual_maps import (
    ResidualMapd,
    compute_residual_maps,
    draw_residual_masks,
    residual_maps_reference,
)
from monai.data import MetaTensor

pytestmark = pytest.mark.cuda

# float32 on the GPU without TF32 against the CPU reference (the benchmark's tolerance)
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def mae() -> MaskedAutoencoderViT:
    """A tiny random MAE on the CPU (the reference's); tests use copies of it on the GPU."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return mae_preset("tiny").eval()


def _on_cuda(mae: MaskedAutoencoderViT) -> MaskedAutoencoderViT:
    return copy.deepcopy(mae).cuda()


def _volume(shape: tuple[int, ...] = (1, 40, 48, 6), seed: int = 0) -> torch.Tensor:
    """Smooth positive structure plus noise in [0, 1]; the last slice empty (skipped, exact zeros)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, 4, 4, 4, generator=g)
    smooth = F.interpolate(coarse, size=shape[1:], mode="trilinear", align_corners=False)[0]
    volume = (0.7 * smooth + 0.3 * torch.rand(shape, generator=g)).clamp(0, 1)
    volume[..., -1] = 0
    return volume


@pytest.mark.parametrize("masking", ["random", "stratified"])
def test_batched_maps_on_cuda_equal_the_cpu_reference(mae: MaskedAutoencoderViT, masking: str) -> None:
    image = _volume()
    masks = draw_residual_masks(64, 6, (0.5, 0.75), 3, masking, torch.Generator().manual_seed(0))
    reference = residual_maps_reference(mae, image, masks, foreground_threshold=0.0)  # CPU
    gpu = _on_cuda(mae)
    for batch_size in (4, 256):
        on_cuda = compute_residual_maps(
            gpu, image.cuda(), masks, batch_size=batch_size, foreground_threshold=0.0, output_device=None
        )
        assert on_cuda.device.type == "cuda" and on_cuda.dtype == torch.float32
        torch.testing.assert_close(on_cuda.cpu(), reference, atol=ATOL, rtol=RTOL)
    assert torch.count_nonzero(reference[..., -1]) == 0 and reference.abs().sum() > 0


def test_transform_keeps_the_maps_on_the_gpu(mae: MaskedAutoencoderViT) -> None:
    image = MetaTensor(_volume(), meta={"filename_or_obj": "/data/sub-01_T1w.nii.gz"})
    transform = ResidualMapd("image", _on_cuda(mae), num_passes=2, masking="stratified", device="cuda")
    out = transform({"image": image.cuda()})["residual_maps"]
    assert isinstance(out, MetaTensor) and out.device.type == "cuda"
    expected = residual_maps_reference(mae, image, transform.draw_masks(image), foreground_threshold=0.0)
    torch.testing.assert_close(out.as_tensor().cpu(), expected, atol=ATOL, rtol=RTOL)


def test_bf16_maps_are_finite_and_close(mae: MaskedAutoencoderViT) -> None:
    image = _volume().cuda()
    masks = draw_residual_masks(64, 6, (0.75,), 2, "random", torch.Generator().manual_seed(0))
    gpu = _on_cuda(mae)
    exact = compute_residual_maps(gpu, image, masks, output_device=None)
    bf16 = compute_residual_maps(gpu, image, masks, amp=True, amp_dtype="bf16", output_device=None)
    assert torch.isfinite(bf16).all() and bf16.dtype == torch.float32
    assert (bf16 - exact).abs().mean() < 0.05
