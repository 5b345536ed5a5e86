"""The masked autoencoder: shapes, masking, loss, reconstruction, checkpoints (tiny preset, CPU)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from bundle.networks.mae import MAE_PRESETS, MaskedAutoencoderViT, load_mae, mae_preset, save_mae, sincos_pos_embed_2d
from bundle.networks.mae_checkpoint import load_official_mae_checkpoint
from bundle.networks.masking import num_masked_patches, random_masks, stratified_masks

TINY = MAE_PRESETS["tiny"]
P = TINY["patch_size"]
L = (TINY["img_size"] // P) ** 2


@pytest.fixture
def mae() -> MaskedAutoencoderViT:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return mae_preset("tiny").eval()


def _images(batch: int, channels: int = 1, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.3])
def test_forward_shapes_and_per_call_ratio(mae: MaskedAutoencoderViT, ratio: float) -> None:
    loss, pred, mask = mae(_images(3), mask_ratio=ratio)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (3, L, P * P)
    assert mask.shape == (3, L) and mask.dtype == pred.dtype
    assert mask.sum(dim=1).tolist() == [round(L * ratio)] * 3
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_presets() -> None:
    assert set(MAE_PRESETS) >= {"tiny", "base", "large"}
    large = MAE_PRESETS["large"]
    assert (large["img_size"], large["patch_size"], large["embed_dim"], large["depth"], large["num_heads"]) == (
        224,
        16,
        1024,
        24,
        16,
    )
    assert MAE_PRESETS["base"]["embed_dim"] == 768 and MAE_PRESETS["base"]["depth"] == 12
    small = mae_preset("tiny", img_size=32, patch_size=4)
    assert small.num_patches == 64 and small.config["img_size"] == 32
    with pytest.raises(ValueError, match="unknown MAE preset"):
        mae_preset("huge-ish")


def test_official_parameter_names(mae: MaskedAutoencoderViT) -> None:
    keys = set(mae.state_dict())
    for name in (
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "blocks.1.norm1.weight",
        "blocks.1.attn.qkv.weight",
        "blocks.1.attn.qkv.bias",
        "blocks.1.attn.proj.weight",
        "blocks.1.norm2.bias",
        "blocks.1.mlp.fc1.weight",
        "blocks.1.mlp.fc2.bias",
        "norm.weight",
        "decoder_embed.weight",
        "mask_token",
        "decoder_pos_embed",
        "decoder_blocks.0.attn.qkv.weight",
        "decoder_norm.bias",
        "decoder_pred.weight",
    ):
        assert name in keys, name
    # the fixed position embeddings are not trained
    assert "pos_embed" not in dict(mae.named_parameters())


def test_sincos_matches_monai_layout() -> None:
    # MONAI's builder is an independent implementation of the same (official MAE) layout
    from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_sincos_position_embedding([3, 5], 16, spatial_dims=2).detach()
    ours = sincos_pos_embed_2d((3, 5), 16)
    assert ours.shape == (1, 16, 16)
    assert torch.equal(ours[0, 0], torch.zeros(16))
    assert torch.allclose(ours[:, 1:], reference, atol=1e-6)


def test_patchify_layout_and_roundtrip() -> None:
    model = mae_preset("tiny", in_channels=3)
    x = _images(2, channels=3)
    patches = model.patchify(x)
    assert patches.shape == (2, L, P * P * 3)
    # patch (row 1, column 2), pixel (3, 4), channel 2: vector index (3 * p + 4) * C + 2
    assert patches[1, 1 * 8 + 2, (3 * P + 4) * 3 + 2] == x[1, 2, 1 * P + 3, 2 * P + 4]
    assert torch.equal(model.unpatchify(patches), x)
    wide = torch.rand(1, 3, 16, 40)
    assert torch.equal(model.unpatchify(model.patchify(wide), grid_size=(2, 5)), wide)


def test_loss_counts_masked_patches_only(mae: MaskedAutoencoderViT) -> None:
    x = _images(2)
    mask = mae.random_masks(2, 0.5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        loss, pred, mask_f = mae(x, mask=mask)
    target = mae.patchify(x)
    expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    visible_changed = torch.where(mask.unsqueeze(-1), pred, pred + 5.0)
    assert torch.allclose(mae.forward_loss(x, visible_changed, mask_f), loss, atol=1e-6)
    masked_changed = torch.where(mask.unsqueeze(-1), pred + 5.0, pred)
    assert mae.forward_loss(x, masked_changed, mask_f) > loss + 1.0
    # nothing masked: zero loss, not 0/0
    loss0, _, mask0 = mae(x, mask_ratio=0.0)
    assert mask0.sum() == 0 and loss0.item() == 0.0


def test_loss_backpropagates(mae: MaskedAutoencoderViT) -> None:
    mae.train()
    loss, _, _ = mae(_images(2), mask_ratio=0.75)
    loss.backward()
    assert mae.patch_embed.proj.weight.grad is not None and mae.decoder_pred.weight.grad.abs().sum() > 0
    assert mae.cls_token.grad is not None and mae.mask_token.grad is not None


def test_explicit_mask_is_used_and_reproducible(mae: MaskedAutoencoderViT) -> None:
    x = _images(2)
    mask = mae.random_masks(2, 0.75, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, pred_a, mask_a = mae(x, mask=mask)
        _, pred_b, _ = mae(x, mask_ratio=0.1, mask=mask)  # the explicit mask wins over the ratio
    assert torch.equal(mask_a.bool(), mask)
    assert torch.allclose(pred_a, pred_b)
    # 0/1 integer masks are accepted
    with torch.no_grad():
        _, pred_c, _ = mae(x, mask=mask.long())
    assert torch.allclose(pred_a, pred_c)


def test_reconstruct_paste_visible(mae: MaskedAutoencoderViT) -> None:
    x = _images(2)
    with torch.no_grad():
        assert torch.equal(mae.reconstruct(x, mask_ratio=0.0), x)
        mask = mae.random_masks(2, 0.5, generator=torch.Generator().manual_seed(2))
        pasted = mae.reconstruct(x, mask=mask)
        full = mae.reconstruct(x, mask=mask, paste_visible=False)
        _, pred, _ = mae(x, mask=mask)
    assert pasted.shape == full.shape == x.shape
    assert torch.allclose(full, mae.unpatchify(pred))
    pasted_p, full_p, x_p = mae.patchify(pasted), mae.patchify(full), mae.patchify(x)
    assert torch.equal(pasted_p[~mask], x_p[~mask])
    assert torch.equal(pasted_p[mask], full_p[mask])
    assert not torch.allclose(full_p[~mask], x_p[~mask])


def test_other_input_sizes(mae: MaskedAutoencoderViT) -> None:
    with torch.no_grad():
        out = mae.reconstruct(torch.rand(2, 1, 48, 80), mask_ratio=0.5)
    assert out.shape == (2, 1, 48, 80)
    assert torch.allclose(mae.pos_embed, sincos_pos_embed_2d((8, 8), 64))


def test_bad_inputs(mae: MaskedAutoencoderViT) -> None:
    x = _images(2)
    with pytest.raises(ValueError, match="not divisible by the MAE patch size"):
        mae(torch.rand(1, 1, 60, 64))
    with pytest.raises(ValueError, match="channels"):
        mae(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        mae(torch.rand(1, 64, 64))
    with pytest.raises(ValueError, match="mask must be a"):
        mae(x, mask=torch.zeros(2, L - 1, dtype=torch.bool))
    uneven = torch.zeros(2, L, dtype=torch.bool)
    uneven[0, :5] = True
    with pytest.raises(ValueError, match="same number of patches"):
        mae(x, mask=uneven)
    with pytest.raises(ValueError, match="mask_ratio"):
        mae(x, mask_ratio=1.5)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        MaskedAutoencoderViT(img_size=60, patch_size=16)
    with pytest.raises(ValueError, match="num_heads"):
        MaskedAutoencoderViT(img_size=64, patch_size=8, embed_dim=64, num_heads=5)
    norm_pix = mae_preset("tiny", norm_pix_loss=True)
    assert torch.isfinite(norm_pix(x)[0])
    with pytest.raises(ValueError, match="norm_pix_loss"):
        norm_pix.reconstruct(x)


# ---------------------------------------------------------------------------------- masking
@pytest.mark.parametrize("num_patches", [64, 49, 196])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_random_masks_count(num_patches: int, ratio: float) -> None:
    masks = random_masks(num_patches, ratio, 6, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (6, num_patches) and masks.dtype == torch.bool
    assert masks.sum(dim=1).tolist() == [round(num_patches * ratio)] * 6
    assert num_masked_patches(num_patches, ratio) == round(num_patches * ratio)


def test_random_masks_seeded() -> None:
    def draw(seed: int) -> torch.Tensor:
        return random_masks(64, 0.5, 4, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    rows = draw(0)
    assert len({tuple(r.tolist()) for r in rows}) == 4  # rows differ
    model = mae_preset("tiny")
    assert torch.equal(model.random_masks(4, 0.5, generator=torch.Generator().manual_seed(0)), draw(0))


@pytest.mark.parametrize("num_patches,ratio,passes", [(64, 0.5, 5), (64, 0.75, 5), (49, 0.5, 3), (196, 0.75, 5)])
def test_stratified_masks_cover_evenly(num_patches: int, ratio: float, passes: int) -> None:
    masks = stratified_masks(num_patches, ratio, passes, 8, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (passes, 8, num_patches) and masks.dtype == torch.bool
    assert (masks.sum(dim=2) == round(num_patches * ratio)).all()
    counts = masks.sum(dim=0)  # (batch, L): how often each patch is masked over the passes
    assert ((counts.amax(dim=1) - counts.amin(dim=1)) <= 1).all()
    assert (counts.sum(dim=1) == passes * round(num_patches * ratio)).all()
    # random per slice: the slices get different masks
    assert len({tuple(m.tolist()) for m in masks[0]}) == 8
    again = stratified_masks(num_patches, ratio, passes, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_mask_argument_errors() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masks(64, -0.1, 2)
    with pytest.raises(ValueError, match="num_passes"):
        stratified_masks(64, 0.5, 0, 2)
    with pytest.raises(ValueError, match="batch"):
        random_masks(64, 0.5, 0)


# ------------------------------------------------------------------------------ checkpoints
def _official_state_dict(
    embed: int = 64,
    depth: int = 2,
    dec_embed: int = 64,
    dec_depth: int = 1,
    patch: int = 8,
    grid: int = 8,
    channels: int = 3,
    decoder: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random weights under the key names and shapes of the released MAE files (timm ViT blocks)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    def blocks(prefix: str, dim: int, count: int) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(count):
            b = f"{prefix}.{i}."
            out.update(
                {
                    b + "norm1.weight": 1 + rnd(dim),
                    b + "norm1.bias": rnd(dim),
                    b + "attn.qkv.weight": rnd(3 * dim, dim),
                    b + "attn.qkv.bias": rnd(3 * dim),
                    b + "attn.proj.weight": rnd(dim, dim),
                    b + "attn.proj.bias": rnd(dim),
                    b + "norm2.weight": 1 + rnd(dim),
                    b + "norm2.bias": rnd(dim),
                    b + "mlp.fc1.weight": rnd(4 * dim, dim),
                    b + "mlp.fc1.bias": rnd(4 * dim),
                    b + "mlp.fc2.weight": rnd(dim, 4 * dim),
                    b + "mlp.fc2.bias": rnd(dim),
                }
            )
        return out

    state = {
        "cls_token": rnd(1, 1, embed),
        "pos_embed": sincos_pos_embed_2d((grid, grid), embed),
        "patch_embed.proj.weight": rnd(embed, channels, patch, patch),
        "patch_embed.proj.bias": rnd(embed),
        **blocks("blocks", embed, depth),
        "norm.weight": 1 + rnd(embed),
        "norm.bias": rnd(embed),
    }
    if decoder:
        state.update(
            {
                "mask_token": rnd(1, 1, dec_embed),
                "decoder_pos_embed": sincos_pos_embed_2d((grid, grid), dec_embed),
                "decoder_embed.weight": rnd(dec_embed, embed),
                "decoder_embed.bias": rnd(dec_embed),
                **blocks("decoder_blocks", dec_embed, dec_depth),
                "decoder_norm.weight": 1 + rnd(dec_embed),
                "decoder_norm.bias": rnd(dec_embed),
                "decoder_pred.weight": rnd(patch * patch * channels, dec_embed),
                "decoder_pred.bias": rnd(patch * patch * channels),
            }
        )
    return state


def test_official_checkpoint_rgb_to_grey(tmp_path: Path) -> None:
    state = _official_state_dict()
    path = tmp_path / "mae_visualize_vit_tiny.pth"
    torch.save({"model": state}, path)
    grey = load_official_mae_checkpoint(mae_preset("tiny"), path).eval()
    loaded = grey.state_dict()
    for key in ("blocks.1.attn.qkv.weight", "norm.bias", "decoder_blocks.0.mlp.fc2.weight", "mask_token", "cls_token"):
        assert torch.equal(loaded[key], state[key]), key
    assert torch.allclose(loaded["patch_embed.proj.weight"], state["patch_embed.proj.weight"].sum(1, keepdim=True))
    pred_w = state["decoder_pred.weight"].reshape(P * P, 3, -1).mean(1)
    assert torch.allclose(loaded["decoder_pred.weight"], pred_w, atol=1e-7)
    assert torch.allclose(loaded["decoder_pred.bias"], state["decoder_pred.bias"].reshape(P * P, 3).mean(1))

    # functionally: the grey model on g == the RGB model on (g, g, g), its prediction averaged over RGB
    rgb = mae_preset("tiny", in_channels=3)
    rgb.load_state_dict(state)
    rgb.eval()
    x = _images(2)
    mask = grey.random_masks(2, 0.75, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = grey.reconstruct(x, mask=mask, paste_visible=False)
        theirs = rgb.reconstruct(x.repeat(1, 3, 1, 1), mask=mask, paste_visible=False).mean(1, keepdim=True)
    assert torch.allclose(ours, theirs, atol=1e-5)

    # the same weights without the "model" wrapper, as a state dict in memory
    bare = load_official_mae_checkpoint(mae_preset("tiny"), state)
    assert all(torch.equal(bare.state_dict()[k], v) for k, v in loaded.items())


def test_official_checkpoint_folds_imagenet_normalisation() -> None:
    state = _official_state_dict(seed=1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    grey = load_official_mae_checkpoint(mae_preset("tiny"), state, channel_mean=mean, channel_std=std).eval()
    rgb = mae_preset("tiny", in_channels=3)
    rgb.load_state_dict(state)
    rgb.eval()
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = _images(2)
    mask = grey.random_masks(2, 0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = grey.reconstruct(x, mask=mask, paste_visible=False)
        normalised = rgb.reconstruct((x.repeat(1, 3, 1, 1) - m) / s, mask=mask, paste_visible=False)
    assert torch.allclose(ours, (normalised * s + m).mean(1, keepdim=True), atol=1e-5)


def test_official_encoder_only_checkpoint(tmp_path: Path) -> None:
    state = _official_state_dict(decoder=False)
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": state}, path)
    model = mae_preset("tiny")
    decoder_before = model.decoder_pred.weight.detach().clone()
    with pytest.warns(UserWarning, match="decoder.*random"):
        load_official_mae_checkpoint(model, path)
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    assert torch.equal(model.decoder_pred.weight, decoder_before)


def test_official_checkpoint_mismatch_errors(tmp_path: Path) -> None:
    path = tmp_path / "mae_visualize_vit_deeper.pth"
    torch.save({"model": _official_state_dict(depth=3)}, path)
    with pytest.raises(ValueError, match=r"mae_visualize_vit_deeper\.pth.*checkpoint has depth 3, model has 2"):
        load_official_mae_checkpoint(mae_preset("tiny"), path)
    with pytest.raises(ValueError, match="checkpoint has embed_dim 32, model has 64"):
        load_official_mae_checkpoint(mae_preset("tiny"), _official_state_dict(embed=32))
    with pytest.raises(ValueError, match="checkpoint has decoder_depth 2, model has 1"):
        load_official_mae_checkpoint(mae_preset("tiny"), _official_state_dict(dec_depth=2))
    with pytest.raises(ValueError, match="not an MAE"):
        load_official_mae_checkpoint(mae_preset("tiny"), {"model": {"weight": torch.zeros(1)}})
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_official_mae_checkpoint(mae_preset("tiny"), tmp_path / "missing.pth")
    extra = {**_official_state_dict(), "head.weight": torch.zeros(10, 64)}
    with pytest.raises(ValueError, match="unexpected keys.*head.weight"):
        load_official_mae_checkpoint(mae_preset("tiny"), extra)
    with pytest.warns(UserWarning, match="head.weight"):
        load_official_mae_checkpoint(mae_preset("tiny"), extra, strict=False)


def test_official_checkpoint_other_grid() -> None:
    # a checkpoint for 64 px (8 x 8 patches) into a 32 px model (4 x 4): the fixed sin-cos
    # embedding is re-created on the model's grid
    model = load_official_mae_checkpoint(mae_preset("tiny", img_size=32), _official_state_dict())
    assert torch.allclose(model.pos_embed, sincos_pos_embed_2d((4, 4), 64))
    # a learned embedding is resampled (bicubic) and its class slot kept
    learned = _official_state_dict()
    learned["pos_embed"] = torch.randn(1, 65, 64, generator=torch.Generator().manual_seed(5))
    model = load_official_mae_checkpoint(mae_preset("tiny", img_size=32), learned)
    assert model.pos_embed.shape == (1, 17, 64)
    assert torch.equal(model.pos_embed[:, 0], learned["pos_embed"][:, 0])
    assert not torch.allclose(model.pos_embed, sincos_pos_embed_2d((4, 4), 64))


def test_save_and_load_project_checkpoint(tmp_path: Path, mae: MaskedAutoencoderViT) -> None:
    path = tmp_path / "mae.pt"
    save_mae(mae, path)
    again = load_mae(path)
    assert again.config == mae.config and not again.training
    assert all(torch.equal(a, b) for a, b in zip(mae.state_dict().values(), again.state_dict().values()))
    plain = tmp_path / "plain.pt"
    torch.save(mae.state_dict(), plain)
    with pytest.raises(ValueError, match="without 'mae_config'"):
        load_mae(plain)
    assert torch.equal(load_mae(plain, preset="tiny").decoder_pred.weight, mae.decoder_pred.weight)
    with pytest.raises(ValueError, match="do not fit"):
        load_mae(plain, preset="tiny", depth=3)
