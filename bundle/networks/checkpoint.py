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
"""The segmentation weights file: what it holds, how it is read, and errors that say what a file is.

``models/model.pt`` (written by the best-model saver of ``configs/train.json``) holds::

    {"model": <GRCSF state dict>,
     "model_settings": {"format": 1, "bundle_version": "0.4.0", "network_preset": "small",
                        "network_options": {...}, "rcu_patch_sizes": [8, 8, 16], "input_size": [64, 64],
                        "mask_ratios": [0.5, 0.75], "num_passes": 2, "masking": "stratified",
                        "residual_map_skip_threshold": 0.25, "slice_axis": -1,
                        "preprocessing_domain": "brain", "preprocessing_options": {},
                        "training_spacing_mm": [3.0, 3.0, 3.0], "mae_sha256": "...",
                        "residual_map_reference": {...} | None}}

so that inference and evaluation rebuild the network, its residual maps and its preprocessing
from the file alone (:func:`resolve_model_settings`); a setting given on the command line that
contradicts the file is an error naming both values. ``"model"`` is also the key MONAI Label and
MONAI's ``ckpt_export --key_in_ckpt model`` read.

Weights of bundle 0.3 and older are a bare state dict. Their architecture cannot be told from the
tensors: the GCU of 0.3.0 projects before upsampling where 0.2 projected after, with tensors of the
same shapes. They are loaded only when ``legacy_weights_version`` says which bundle wrote them.

Other files a user may hand over by mistake are named in the error: the MAE (``models/mae.pt``,
``{"state_dict", "mae_config"}``), a training checkpoint (``checkpoint_last.pt``), anything else.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from bundle.utils.errors import CheckpointError, ConfigError, describe_error
from bundle.utils.io import file_digest
from torch import nn

__all__ = [
    "ARCHITECTURE_CHANGES",
    "MODEL_SETTINGS_FORMAT",
    "MODEL_SETTING_DEFAULTS",
    "ModelSettings",
    "check_mae_matches",
    "check_state_dict",
    "checkpoint_kind",
    "load_network_weights",
    "mae_digest",
    "read_checkpoint",
    "read_model_settings",
    "read_state_dict",
    "resolve_model_settings",
]

#: version of the ``model_settings`` layout
MODEL_SETTINGS_FORMAT = 1

#: bundle versions that changed the network's function without changing its tensors: weights of an
#: older version compute something else in the current code and must be retrained
ARCHITECTURE_CHANGES: dict[str, str] = {
    "0.3.0": "the GCU projects the lower feature before upsampling it (0.2 projected after)"
}

#: what the configs fall back to when neither the command line nor the checkpoint says (the paper's setting)
MODEL_SETTING_DEFAULTS: dict[str, Any] = {
    "network_preset": "paper",
    "network_options": {},
    "rcu_patch_sizes": [8, 8, 16],
    "input_size": [224, 224],
    "mask_ratios": [0.5, 0.75],
    "num_passes": 2,
    "masking": "stratified",
    "residual_map_skip_threshold": 0.25,
    "slice_axis": -1,
    "preprocessing_domain": "brain",
    "preprocessing_options": {},
}
#: settings kept in the file but not set from the configs (recorded by training)
_RECORDED_ONLY = ("format", "bundle_version", "mae_sha256", "residual_map_reference", "training_spacing_mm")


def _version_tuple(version: str) -> tuple[int, int, int]:
    """``"0.3"`` -> (0, 3, 0): major, minor, patch; missing parts are 0."""
    parts = []
    for part in str(version).split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    """Settings as JSON-like Python values (tuples -> lists), so that comparisons ignore the container."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    return value


class ModelSettings:
    """The settings a model was trained with, as a checkpointable object (``state_dict``).

    Saved next to the network by ``CheckpointSaver(save_dict={"model": network, "model_settings":
    ModelSettings(...)})``. Keyword arguments are the names of :data:`MODEL_SETTING_DEFAULTS` plus
    ``mae_sha256``, ``residual_map_reference`` and ``training_spacing_mm`` (the voxel spacing all
    preprocessed training volumes shared, None if they differed); ``bundle_version`` and ``format``
    are added.
    """

    def __init__(self, **settings: Any) -> None:
        from bundle import __version__  # the package root only holds the version

        unknown = sorted(set(settings) - set(MODEL_SETTING_DEFAULTS) - set(_RECORDED_ONLY))
        if unknown:
            raise ConfigError(f"model settings: unknown names {unknown}.")
        self.settings = {"format": MODEL_SETTINGS_FORMAT, "bundle_version": __version__}
        self.settings.update({k: _plain(v) for k, v in settings.items()})

    def state_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.settings = dict(state_dict)


def checkpoint_kind(checkpoint: Any) -> str:
    """What a loaded checkpoint object is, in words (for messages)."""
    if not isinstance(checkpoint, Mapping):
        return f"a {type(checkpoint).__name__}, not a dict of tensors"
    if "mae_config" in checkpoint:
        return "MAE weights (a masked autoencoder with 'mae_config'), not segmentation weights"
    if "model_settings" in checkpoint:
        settings = checkpoint["model_settings"]
        version = settings.get("bundle_version", "?") if isinstance(settings, Mapping) else "?"
        return f"GRCSF segmentation weights of bundle {version}"
    if {"trainer", "optimizer"} <= set(checkpoint):
        return "a training checkpoint (trainer, optimizer and network state for --resume)"
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        return "a {'model': state dict} of bundle 0.3 or older"
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return "a bare state dict (bundle 0.3 or older)"
    return f"a dict with keys {sorted(map(str, checkpoint))[:6]}, not network weights"


#: what to do about a missing weights file, by kind
MISSING_WEIGHTS_HINT = {
    "segmentation": "train first (configs/train.json) or pass --ckpt_dir / --ckpt_path",
    "mae": (
        "pre-train the MAE first (python -m monai.bundle run training --config_file configs/train_mae.json "
        "writes models/mae.pt) or pass --mae_path"
    ),
}


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", kind: str = "segmentation") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file.

    Args:
        kind: ``"segmentation"`` or ``"mae"``: what a missing file should have been (for the hint).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a truncated, empty or non-torch file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the weights file does not exist; {MISSING_WEIGHTS_HINT[kind]}.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the weights file is empty.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot be read as a torch weights file, truncated or not written by torch.save "
            f"({describe_error(e)})."
        ) from e


def _strip_ddp(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def read_state_dict(path: str | os.PathLike, key: str = "model", map_location: Any = "cpu") -> dict[str, Any]:
    """The network state dict stored in ``path`` (under ``key``, or the file itself when it is one).

    A ``module.`` prefix left by DistributedDataParallel is removed.

    Raises:
        FileNotFoundError / CheckpointError: see :func:`read_checkpoint`; also a file holding no
            network state dict (e.g. the MAE's weights), named with what it holds.
    """
    checkpoint = read_checkpoint(path, map_location=map_location)
    state = checkpoint.get(key) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        state = checkpoint
    if (
        not isinstance(state, Mapping)
        or not state
        or "mae_config" in checkpoint
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise CheckpointError(f"{os.fspath(path)}: holds {checkpoint_kind(checkpoint)}.")
    return _strip_ddp(state)


def read_model_settings(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any] | None:
    """The ``model_settings`` of a weights file, None for weights of bundle 0.3 and older."""
    checkpoint = read_checkpoint(path, map_location=map_location)
    if isinstance(checkpoint, Mapping) and "mae_config" in checkpoint:
        raise CheckpointError(
            f"{os.fspath(path)}: holds {checkpoint_kind(checkpoint)}; give the MAE as --mae_path and the "
            "segmentation weights as --ckpt_path."
        )
    settings = checkpoint.get("model_settings") if isinstance(checkpoint, Mapping) else None
    if settings is None:
        read_state_dict(path, map_location=map_location)  # refuses files holding no network at all
        return None
    if not isinstance(settings, Mapping) or settings.get("format") != MODEL_SETTINGS_FORMAT:
        raise CheckpointError(
            f"{os.fspath(path)}: its model_settings are of an unknown format ({settings.get('format')!r} "
            f"if a dict); this bundle reads format {MODEL_SETTINGS_FORMAT}."
        )
    return dict(settings)


def _check_version(path: str, version: str) -> None:
    """Refuse weights of a bundle version older than the last architecture change."""
    for changed_in, what in sorted(ARCHITECTURE_CHANGES.items(), key=lambda kv: _version_tuple(kv[0])):
        if _version_tuple(version) < _version_tuple(changed_in):
            raise CheckpointError(
                f"{path}: holds weights of bundle {version}; since {changed_in} {what}, so they compute "
                "something else now: retrain with this version."
            )


def resolve_model_settings(
    checkpoint: str | os.PathLike | None,
    overrides: Mapping[str, Any] | None = None,
    legacy_weights_version: str | None = None,
    require_checkpoint: bool = False,
) -> dict[str, Any]:
    """The settings inference runs with: the checkpoint's, the command line's where the file says
    nothing, the paper's defaults where neither does.

    Args:
        checkpoint: the weights file (``ckpt_path``); a missing file gives the overrides and defaults
            (MONAI Label before its first training, ``verify_net_in_out``), unless ``require_checkpoint``.
        overrides: the configs' values of the names of :data:`MODEL_SETTING_DEFAULTS`; None means "not
            given". A given value that differs from the checkpoint's is an error.
        legacy_weights_version: the bundle version that wrote a checkpoint without settings (0.3 and
            older); None refuses such files, since 0.2 and 0.3 weights cannot be told apart.
        require_checkpoint: a missing file is an error.

    Returns:
        every name of :data:`MODEL_SETTING_DEFAULTS`, plus the recorded ``mae_sha256``,
        ``residual_map_reference`` and ``training_spacing_mm`` (None when unknown) and ``source``
        (where they came from).

    Raises:
        ConfigError: an override contradicts the checkpoint; an unknown name.
        CheckpointError: the file is not usable weights, or weights of an incompatible version.
    """
    overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(MODEL_SETTING_DEFAULTS))
    if unknown:
        raise ConfigError(f"model settings: unknown names {unknown}.")
    stored: dict[str, Any] | None = None
    path = None if checkpoint is None else os.fspath(checkpoint)
    if path is not None and (os.path.exists(path) or require_checkpoint):
        stored = read_model_settings(path)
        if stored is None:
            if legacy_weights_version is None:
                raise CheckpointError(
                    f"{path}: holds weights of bundle 0.3 or older without the settings they were trained "
                    "with; bundle 0.2 and 0.3 weights look alike but compute different functions (the GCU "
                    "changed in 0.3.0): if bundle 0.3 trained them, pass --legacy_weights_version 0.3 "
                    "(and the settings of that training), else retrain."
                )
            _check_version(path, str(legacy_weights_version))
        else:
            _check_version(path, str(stored.get("bundle_version", "0")))
    elif require_checkpoint:
        raise FileNotFoundError(f"{path}: the weights file does not exist.")

    settings: dict[str, Any] = {k: _plain(v) for k, v in MODEL_SETTING_DEFAULTS.items()}
    settings.update(mae_sha256=None, residual_map_reference=None, training_spacing_mm=None)
    if stored is not None:
        for name in (*MODEL_SETTING_DEFAULTS, "mae_sha256", "residual_map_reference", "training_spacing_mm"):
            if name in stored:
                settings[name] = _plain(stored[name])
        differing = {
            name: (_plain(value), settings[name])
            for name, value in overrides.items()
            if name in stored and _plain(value) != settings[name]
        }
        if differing:
            details = "; ".join(
                f"{name} is {given!r} in the configs / command line but the weights were trained with {trained!r}"
                for name, (given, trained) in differing.items()
            )
            # a data-set config merged over inference.json sets its training values: a model trained
            # with other values needs them given again (or weights trained with the config's)
            again = " ".join(
                f"--{name} {shlex.quote(trained if isinstance(trained, str) else repr(trained))}"
                for name, (_, trained) in differing.items()
            )
            raise ConfigError(f"{path}: {details}. Pass {again}, or use weights trained with those settings.")
    settings.update({k: _plain(v) for k, v in overrides.items() if stored is None or k not in stored})
    settings["source"] = path if stored is not None else ("defaults" if path is None else f"{path} (legacy)")
    return settings


def mae_digest(path: str | os.PathLike) -> str:
    """sha256 of the MAE weights the residual maps are computed with (recorded in the model settings).

    Raises:
        FileNotFoundError: no MAE weights at ``path``, with the command that makes them.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the MAE weights do not exist; {MISSING_WEIGHTS_HINT['mae']}.")
    return file_digest(path)


def check_mae_matches(path: str | os.PathLike, settings: Mapping[str, Any]) -> str:
    """``path`` when it holds the MAE the model was trained with (same sha256 as recorded in its
    settings, or nothing recorded); a :class:`ConfigError` otherwise, since other residual maps
    would feed the network something it was not trained on."""
    path = os.fspath(path)
    recorded = settings.get("mae_sha256")
    if recorded and mae_digest(path) != recorded:
        raise ConfigError(
            f"{path}: not the MAE the segmentation weights ({settings.get('source')}) were trained with "
            "(its sha256 differs): their residual maps would differ from training's; pass the MAE of that "
            "training as --mae_path."
        )
    return path


def _short_list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"


def check_state_dict(network: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise a :class:`CheckpointError` naming ``source`` when ``state_dict`` does not fit ``network``."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source}: its weights were saved for a different network: missing keys {_short_list(missing)}, "
            f"unexpected keys {_short_list(unexpected)}, shape mismatches (file vs network) "
            f"{_short_list(shapes)}; check network_preset and the rcu settings (rcu_patch_sizes, mask_ratios)."
        )


def load_network_weights(
    network: nn.Module, path: str | os.PathLike, key: str = "model", map_location: Any = "cpu"
) -> nn.Module:
    """Load the weights in ``path`` into ``network`` (strict) and return it.

    Raises:
        FileNotFoundError: no such checkpoint.
        CheckpointError: unreadable file, a file of another kind, or weights of another architecture;
            the message names the file and what it holds.
    """
    state_dict = read_state_dict(path, key=key, map_location=map_location)
    check_state_dict(network, state_dict, os.fspath(path))
    network.load_state_dict(state_dict, strict=True)
    return network
