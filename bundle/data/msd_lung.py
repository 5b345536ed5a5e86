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
"""MSD Task06 Lung adapter: the labelled CTs of a Medical Segmentation Decathlon download.

- :func:`load_msd_lung` -- ``<root>/dataset.json``; its ``training`` entries are the 64 labelled CTs
  (``imagesTr/``, ``labelsTr/``). The macOS ``._*`` files of the official archive are never listed in
  ``dataset.json`` and so are ignored.
- :func:`msd_lung_split` -- the paper's 43 / 11 / 10 split (scaled to other counts by
  :func:`~bundle.data.records.split_sizes`), deterministic in ``seed``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bundle.utils.errors import DatasetError

from .records import split_by_sizes

logger = logging.getLogger(__name__)

__all__ = ["MSD_LUNG_SPLIT_SIZES", "load_msd_lung", "msd_lung_split"]


#: The paper's MSD Task06 Lung split of the 64 labelled CTs (training, validation, test).
MSD_LUNG_SPLIT_SIZES = (43, 11, 10)


_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _subject_from_nifti(path: str) -> str:
    name = os.path.basename(path)
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def _resolve_listed(root: Path, value: Any, what: str, index_path: Path) -> str:
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{index_path}: {what} must be a path string, got {value!r}.")
    path = (root / value).resolve() if not os.path.isabs(value) else Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"{path}, the {what} listed in {index_path}, does not exist.")
    return str(path)


def load_msd_lung(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of the labelled CTs of an MSD Task06 Lung folder (real or look-alike).

    Args:
        root: the folder holding ``dataset.json``, ``imagesTr`` and ``labelsTr``.

    Returns:
        One record per ``training`` entry of ``dataset.json``, in its order:
        ``{"image": abs path, "label": abs path, "subject": "lung_001"}``.

    Raises:
        FileNotFoundError: ``root`` or ``dataset.json`` is missing, or a listed image/label does
            not exist (the message names the file).
        ValueError: ``dataset.json`` is not valid JSON, has no ``training`` list, an entry has
            no label, or two entries share a subject.
    """
    root_path = Path(root).expanduser().resolve()
    index_path = root_path / "dataset.json"
    if not root_path.is_dir():
        raise FileNotFoundError(f"{root_path} is not a directory (expected an MSD Task06_Lung folder).")
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{index_path} is missing: {root_path} is not an MSD data set folder "
            "(make a look-alike with scripts/make_ct_demo_data.py)."
        )
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except ValueError as err:
        raise DatasetError(f"{index_path} is not valid JSON: {err}") from err
    training = index.get("training") if isinstance(index, dict) else None
    if not isinstance(training, list) or not training:
        raise DatasetError(f"{index_path} has no non-empty 'training' list of image/label entries.")
    modality = index.get("modality", {})
    if isinstance(modality, dict) and modality and "CT" not in modality.values():
        logger.warning("%s: modality %s is not CT.", index_path, modality)
    listed = index.get("numTraining")
    if isinstance(listed, int) and listed != len(training):
        logger.warning("%s: numTraining is %d but %d training entries are listed.", index_path, listed, len(training))

    records, seen = [], {}
    for number, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DatasetError(f"{index_path}: training entry {number} is not an {{'image', 'label'}} dict: {entry!r}.")
        if not entry.get("label"):
            raise DatasetError(f"{index_path}: training entry {number} ({entry['image']}) has no label.")
        image = _resolve_listed(root_path, entry["image"], "image", index_path)
        label = _resolve_listed(root_path, entry["label"], "label", index_path)
        subject = _subject_from_nifti(image)
        if subject in seen:
            raise DatasetError(
                f"{index_path}: subject {subject!r} is listed twice (entries {seen[subject]} and {number})."
            )
        seen[subject] = number
        records.append({"image": image, "label": label, "subject": subject})
    return records


def msd_lung_split(
    records: Sequence[Mapping[str, Any]], sizes: Sequence[int] = MSD_LUNG_SPLIT_SIZES, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """The paper's MSD Task06 Lung split: 43 training / 11 validation / 10 test of the 64 CTs.

    Other record counts are split proportionally (:func:`split_sizes`, each part >= 1).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``; deterministic in ``seed``.
    """
    return split_by_sizes(records, sizes, seed)
