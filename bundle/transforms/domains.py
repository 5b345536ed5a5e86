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
"""One entry point for the volume pre-processing of every imaging domain the bundle supports.

The workflow configs (``train_mae.json``, ``train.json``, ``inference.json``) build their volume
pipeline with::

    "volume_preprocessing": {"_target_": "bundle.transforms.volume_preprocessing",
        "domain": "@preprocessing_domain", "keys": [...], "label_key": ..., "reader": "@reader",
        "options": "@preprocessing_options"}

and a data-set config (``configs/atlas.json, msd_lung.json, orcascore.json``) switches the domain by overriding only
``preprocessing_domain`` and ``preprocessing_options`` (e.g. ``"ct"`` with ``{"window": "lung"}``),
so that the MAE pre-training, the segmentation training, inference and evaluation of one data set
always see the same pre-processing. :func:`model_preprocessing_options` adds what training
measured (the voxel spacing of its volumes, kept in the weights file) to the options inference
runs with, so that a scan of another resolution is resampled to the model's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bundle.utils.errors import ConfigError
from monai.transforms import Compose

from .brain import brain_preprocessing, mni_brain_preprocessing, native_brain_preprocessing
from .ct import ct_preprocessing

__all__ = ["PREPROCESSING_DOMAINS", "model_preprocessing_options", "volume_preprocessing"]

#: Supported imaging domains and the function that builds their pipeline.
PREPROCESSING_DOMAINS: dict[str, Callable[..., Compose]] = {
    "brain": brain_preprocessing,
    "brain_mni": mni_brain_preprocessing,
    "brain_native": native_brain_preprocessing,
    "ct": ct_preprocessing,
}


def volume_preprocessing(
    domain: str = "brain",
    keys: Sequence[str] = ("image", "label"),
    label_key: str | None = "label",
    reader: Any = None,
    options: Mapping[str, Any] | None = None,
    **more_options: Any,
) -> Compose:
    """The volume pipeline of ``domain``: file (or DICOM folder) in, channel-first MetaTensors out.

    ``{"image": path, "label": path, ...}`` -> ``{"image": (1, X, Y, Z) float32 in [0, 1],
    "label": (1, X, Y, Z) uint8 in {0, 1}, ...}``, invertible by MONAI's ``Invertd``.

    Args:
        domain: ``"brain"`` (T1 MRI on the MNI grid as given, robust percentile scaling;
            :func:`brain_preprocessing`), ``"brain_mni"`` (MNI space at any resolution or crop,
            resampled onto the 1 mm grid; :func:`bundle.transforms.mni.mni_brain_preprocessing`),
            ``"brain_native"`` (native scanner space, ITK affine registration to MNI-152;
            :func:`bundle.transforms.mni.native_brain_preprocessing`) or ``"ct"`` (Hounsfield
            units, windowing; :func:`bundle.transforms.ct.ct_preprocessing`).
        keys: keys of the files to load (image first).
        label_key: key of the lesion mask, None for image-only pipelines (inference).
        reader: image reader for MONAI's ``LoadImaged``, None for automatic.
        options: further keyword arguments of the domain's pipeline function (e.g. ``window``
            for CT, ``pixdim`` for both): the ``preprocessing_options`` config id.
        more_options: the same, as keyword arguments (they win over ``options``).
    """
    if domain not in PREPROCESSING_DOMAINS:
        raise ConfigError(
            f"preprocessing_domain: unknown domain {domain!r}; choose one of {sorted(PREPROCESSING_DOMAINS)}."
        )
    build = PREPROCESSING_DOMAINS[domain]
    keys = list(keys)
    if label_key is not None and label_key not in keys:
        label_key = None
    return build(keys=keys, label_key=label_key, reader=reader, **{**dict(options or {}), **more_options})


#: domains whose pipeline resamples to ``pixdim`` (the others resample onto the MNI grid themselves)
_RESAMPLING_DOMAINS = ("brain", "ct")


def model_preprocessing_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing options inference runs with, from a model's settings
    (:func:`bundle.networks.resolve_model_settings`): its ``preprocessing_options``, plus
    ``pixdim`` = the spacing every training volume had after preprocessing (``training_spacing_mm``)
    when the options resample to none, so that a scan of another resolution is brought onto the
    grid the model learned on (and the prediction back onto the scan's grid by ``Invertd``).
    """
    options = dict(settings.get("preprocessing_options") or {})
    spacing = settings.get("training_spacing_mm")
    domain = settings.get("preprocessing_domain")
    if domain in _RESAMPLING_DOMAINS and options.get("pixdim") is None and spacing is not None:
        options["pixdim"] = [float(s) for s in spacing]
    return options
