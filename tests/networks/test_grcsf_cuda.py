"""GRCSF on CUDA against the CPU (tests marked ``cuda``: skipped with "no CUDA device" elsewhere).

``scripts/device_suite.py`` runs them (``pytest -m cuda``). The first test checks the same math
on the CPU, so that the fused path is covered in CI without a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from bundle.networks.compensation import RegionalCompensationUnit
from bundle.networks.grcsf import GRCSF, grcsf_preset

# float32 on the GPU without TF32 against the CPU: the same arithmetic in another order
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """Full float32 matrix products and convolutions on CUDA (TF32 would round to 10 mantissa bits)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _rcu_inputs(seed: int = 0) -> tuple[RegionalCompensationUnit, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    rcu = RegionalCompensationUnit(channels=16, num_maps=2, patch_size=8)
    up, maps = torch.randn(2, 16, 32, 32), torch.rand(2, 2, 64, 64)
    return rcu, up, maps


def _small(seed: int = 0) -> GRCSF:
    torch.manual_seed(seed)
    return grcsf_preset("small").eval()


def _input(size: int = 64, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_fused_attention_equals_the_mixed_path_on_the_cpu() -> None:
    # the SDPA path that CUDA inputs take, computed on CPU tensors, against the chunked CPU path
    rcu, up, maps = _rcu_inputs()
    maps = torch.nn.functional.interpolate(maps, size=[32, 32], mode="area")
    queries = rcu._queries(maps)
    keys, values = rcu._keys_values(up)
    coefficients = torch.rand(2, queries.shape[1], 2)
    fused = rcu._attend_fused(queries, keys, values, coefficients)  # (B, N, T, C)
    mixed = rcu._attend_mixed(queries, keys, values, coefficients)  # (B, N, C, T)
    torch.testing.assert_close(fused, mixed.transpose(2, 3), atol=ATOL, rtol=RTOL)


@pytest.mark.cuda
@pytest.mark.parametrize("channels_last", [False, True])
def test_rcu_cuda_fused_path_equals_cpu_path(no_tf32: None, channels_last: bool) -> None:
    rcu, up, maps = _rcu_inputs()
    outputs, grads = {}, {}
    for device in ("cpu", "cuda"):
        unit = rcu.to(device)
        x = up.to(device).requires_grad_(True)
        if channels_last:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        unit.zero_grad(set_to_none=True)
        out, scores = unit.forward_with_scores(x, maps.to(device))
        (out * torch.linspace(-1, 1, out.numel(), device=device).reshape(out.shape)).sum().backward()
        outputs[device] = (out.detach().cpu(), scores.detach().cpu())
        grads[device] = [x.grad.cpu()] + [p.grad.detach().cpu() for p in unit.parameters()]
    for a, b in zip(outputs["cuda"], outputs["cpu"]):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)
    for a, b in zip(grads["cuda"], grads["cpu"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.cuda
def test_grcsf_on_cuda_equals_the_cpu(no_tf32: None) -> None:
    net, x = _small(), _input()
    with torch.no_grad():
        expected = net(x)
        actual = net.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.cuda
def test_bf16_autocast_paper_preset_is_finite() -> None:
    # the training configuration of a GPU: bf16 autocast, channels-last, forward and backward
    torch.manual_seed(0)
    net = grcsf_preset("paper", in_channels=3).cuda().to(memory_format=torch.channels_last).train()
    x = _input(size=224).cuda().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = net(x)
    assert y.shape == (2, 1, 224, 224)
    assert torch.isfinite(y.float()).all()
    y.float().mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.cuda
def test_torchscript_on_cuda_equals_eager(no_tf32: None) -> None:
    # scripted on the CPU: TorchScript compiles both branches of the RCU (fused on CUDA, chunked on the CPU)
    net = _small()
    scripted = torch.jit.script(net).cuda()
    net, x = net.cuda(), _input().cuda()
    with torch.no_grad():
        y, scores = net.forward_with_scores(x)
        ys, scores_s = scripted.forward_with_scores(x)
        torch.testing.assert_close(scripted(x), y, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ys, y, atol=1e-5, rtol=1e-4)
    assert len(scores_s) == len(scores)
    for a, b in zip(scores_s, scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
