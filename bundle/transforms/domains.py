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

    "volume_preprocessing": "$bundle.transforms.volume_preprocessing(@preprocessing_domain,
        keys=[...], label_key=..., reader=@reader, **@preprocessing_options)"

and a data-set config (``configs/datasets/*.json``) switches the domain by overriding only
``preprocessing_domain`` and ``preprocessing_options`` (e.g. ``"ct"`` with ``{"window": "lung"}``),
so that the MAE pre-training, the segmentation training, inference and evaluation of one data set
always see the same pre-processing.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from monai.transforms import Compose

#: Supported imaging domains and the function that builds their pipeline.
PREPROCESSING_DOMAINS = {
    "brain": "bundle.transforms.preprocessing.brain_preprocessing",
    "brain_mni": "bundle.transforms.mni.mni_brain_preprocessing",
    "brain_native": "bundle.transforms.mni.native_brain_preprocessing",
    "ct": "bundle.transforms.ct.ct_preprocessing",
}


def volume_preprocessing(
    domain: str = "brain",
    keys: Sequence[str] = ("image", "label"),
    label_key: str | None = "label",
    reader: Any = None,
    **options: Any,
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
            for CT, ``pixdim`` for both).
    """
    if domain not in PREPROCESSING_DOMAINS:
        raise ValueError(
            f"Unknown preprocessing domain {domain!r}; choose one of {sorted(PREPROCESSING_DOMAINS)}."
        )
    module_name, _, function_name = PREPROCESSING_DOMAINS[domain].rpartition(".")
    build = getattr(importlib.import_module(module_name), function_name)
    keys = list(keys)
    if label_key is not None and label_key not in keys:
        label_key = None
    return build(keys=keys, label_key=label_key, reader=reader, **options)
