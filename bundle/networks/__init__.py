"""networks of the GRCSF bundle: GRCSF (UNet++/U-Net + GCU + RCU), the masked autoencoder (MAE),
their masks and their weights files."""

from .checkpoint import (
    ARCHITECTURE_CHANGES,
    MODEL_SETTING_DEFAULTS,
    ModelSettings,
    check_mae_matches,
    check_state_dict,
    checkpoint_kind,
    load_network_weights,
    mae_digest,
    read_checkpoint,
    read_model_settings,
    read_state_dict,
    resolve_model_settings,
)
from .compensation import (
    GlobalCompensationUnit,
    PatchImportanceScore,
    RegionalCompensationUnit,
    SqueezeExcitation,
    patchify,
    unpatchify,
)
from .grcsf import BACKBONES, GRCSF, GRCSF_PRESETS, grcsf_from_settings, grcsf_preset
from .mae import (
    MAE_PRESETS,
    MAEArchitecture,
    MaskedAutoencoderViT,
    load_mae,
    mae_preset,
    pixel_mask,
    reconstruction_from_prediction,
    save_mae,
    sincos_pos_embed_2d,
    unwrap_parallel,
)
from .mae_checkpoint import load_official_mae_checkpoint
from .masking import check_mask_ratios, num_masked_patches, random_masks, ratio_tag, stratified_masks
