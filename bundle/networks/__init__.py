"""networks of the GRCSF bundle (see the package docstring of :mod:`bundle`)."""

from .compensation import (
    GlobalCompensationUnit,
    PatchImportanceScore,
    RegionalCompensationUnit,
    SqueezeExcitation,
    patchify,
    unpatchify,
)
from .grcsf import BACKBONES, GRCSF, GRCSF_PRESETS, grcsf_preset
from .mae import MAE_PRESETS, MaskedAutoencoderViT, load_mae, mae_preset, save_mae, sincos_pos_embed_2d
from .mae_checkpoint import load_official_mae_checkpoint
from .masking import num_masked_patches, random_masks, stratified_masks
