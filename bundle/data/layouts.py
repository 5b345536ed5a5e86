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
"""The one entry point from a data set folder (or data list) to the records of every workflow.

:func:`load_split` reads a download in its real layout and returns its ``training``,
``validation`` and ``test`` records, so that MAE pre-training, training and evaluation of one data
set always see the same subjects on the same side:

- ``"atlas"`` (the default): an ATLAS v2.0 release (``Training/R0xx/sub-*/ses-*/anat/``; the
  synthetic look-alike has the same layout). Subjects without a lesion mask are left out (and
  named in the log). Validation: whole cohorts (:func:`~bundle.data.records.split_records`). With
  ``subset``, the paper's cohort-disjoint subsets (:func:`~bundle.data.atlas.atlas_subset_splits`)
  give the test cohorts; with too few cohorts for the subsets asked, fewer subsets are made, and
  with a single cohort the split is by subject (the rule used is in ``split["rule"]``). Without
  subsets there is no separate test part.
- ``"msd_lung"``: MSD Task06 Lung (``dataset.json``, ``imagesTr/``, ``labelsTr/``), the paper's
  43 / 11 / 10 split.
- ``"orcascore"``: orCaScore (``Training Set/Images``, ``Reference standard``), 26 / 5 / 1.
- a data list (``datalist``, MONAI's decathlon JSON): its ``training``, ``validation`` and ``test``
  lists; a missing validation list is split off the training list.

Every record is checked (:func:`~bundle.data.records.check_records`): a missing file is an error
naming it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from bundle.utils.errors import DatasetError
from monai.data import load_decathlon_datalist

from .atlas import atlas_subset_splits, find_atlas_subjects
from .msd_lung import load_msd_lung, msd_lung_split
from .orcascore import find_orcascore_scans, orcascore_split
from .records import SPLIT_KEYS, check_records, split_records

__all__ = ["DATASET_LAYOUTS", "atlas_subset_count", "evaluation_records", "load_split"]

logger = logging.getLogger(__name__)

_NO_DATA = (
    "no data set given: pass --dataset_dir <a download in its release layout> (or --datalist <decathlon "
    "JSON>), or run the demo, which makes a small synthetic data set and trains on it: python scripts/run_demo.py"
)


def _labelled_atlas_subjects(dataset_dir: str) -> list[dict[str, Any]]:
    """The Training subjects of an ATLAS release that have a lesion mask (the others are named in the log)."""
    records = find_atlas_subjects(dataset_dir, require_labels=False, splits=("Training",))
    unlabelled = [r["image"] for r in records if "label" not in r]
    if unlabelled:
        shown = ", ".join(unlabelled[:3]) + (f" and {len(unlabelled) - 3} more" if len(unlabelled) > 3 else "")
        logger.warning(f"{dataset_dir}: {len(unlabelled)} Training subject(s) without a lesion mask left out: {shown}")
    records = [r for r in records if "label" in r]
    if len(records) < 2:
        raise DatasetError(f"{dataset_dir}: {len(records)} labelled Training subject(s); at least 2 are needed.")
    return records


def _usable_subsets(num_cohorts: int, num_subsets: int) -> int:
    # the paper's subsets need 2 cohorts each (train and test disjoint); with fewer than 4 cohorts, one subset
    return max(1, min(int(num_subsets), num_cohorts // 2)) if num_cohorts >= 4 else 1


def atlas_subset_count(dataset_dir: str | os.PathLike, num_subsets: int = 4) -> int:
    """How many cohort-disjoint subsets :func:`load_split` makes of an ATLAS release when
    ``num_subsets`` are asked: fewer when there are fewer than 2 cohorts per subset, 1 below 4 cohorts."""
    cohorts = {r["cohort"] for r in _labelled_atlas_subjects(os.fspath(dataset_dir))}
    return _usable_subsets(len(cohorts), num_subsets)


def _atlas_split(
    dataset_dir: str,
    val_fraction: float,
    seed: int,
    subset: int | None = None,
    num_subsets: int = 4,
    test_fraction: float = 0.2,
) -> dict[str, Any]:
    records = _labelled_atlas_subjects(dataset_dir)
    cohorts = sorted({r["cohort"] for r in records})
    if subset is None:
        training, validation = split_records(records, val_fraction=val_fraction, seed=seed)
        rule = (
            f"validation: whole cohorts ({len(cohorts)} cohorts); no test part"
            if len(cohorts) >= 2
            else "validation: subjects of the single cohort; no test part"
        )
        return {"training": training, "validation": validation, "test": [], "rule": rule}
    usable = _usable_subsets(len(cohorts), num_subsets)
    if not 0 <= int(subset) < usable:
        raise DatasetError(
            f"{dataset_dir}: subset {subset} asked for, but its {len(cohorts)} cohorts make {usable} "
            f"subset(s) (0..{usable - 1})."
        )
    if len(cohorts) >= 4:
        subsets = atlas_subset_splits(records, num_subsets=usable, test_fraction=test_fraction, seed=seed)
        chosen = subsets[int(subset)]
        rule = f"subset {subset} of {usable} cohort-disjoint subsets"
        if usable < int(num_subsets):
            rule += f" (fewer than the {num_subsets} asked: {len(cohorts)} cohorts, at least 2 per subset)"
        training, validation = split_records(chosen["training"], val_fraction=val_fraction, seed=seed)
        return {"training": training, "validation": validation, "test": chosen["test"], "rule": rule}
    # fewer than 4 cohorts: one subset; test cohorts disjoint when there are at least 2
    rest, test = split_records(records, val_fraction=test_fraction, seed=seed)
    training, validation = split_records(rest, val_fraction=val_fraction, seed=seed + 1)
    rule = f"one subset ({len(cohorts)} cohort(s): too few for {num_subsets} subsets); test and validation are " + (
        "whole cohorts" if len(cohorts) >= 3 else "split by cohort where possible, else by subject"
    )
    return {"training": training, "validation": validation, "test": test, "rule": rule}


def _fixed_split(split: Mapping[str, list], name: str) -> dict[str, Any]:
    return {**{k: list(split[k]) for k in SPLIT_KEYS}, "rule": f"the paper's {name} split"}


def _msd_lung_split(dataset_dir: str, val_fraction: float, seed: int) -> dict[str, Any]:
    return _fixed_split(msd_lung_split(load_msd_lung(dataset_dir), seed=seed), "MSD Task06 Lung")


def _orcascore_split(dataset_dir: str, val_fraction: float, seed: int) -> dict[str, Any]:
    return _fixed_split(orcascore_split(find_orcascore_scans(dataset_dir), seed=seed), "orCaScore")


#: the release layouts :func:`load_split` reads, by the name of the ``dataset_layout`` config id
DATASET_LAYOUTS: dict[str, Callable[..., dict[str, Any]]] = {
    "atlas": _atlas_split,
    "msd_lung": _msd_lung_split,
    "orcascore": _orcascore_split,
}


def _datalist_split(datalist: str, val_fraction: float, seed: int) -> dict[str, Any]:
    if not os.path.isfile(datalist):
        raise FileNotFoundError(f"{datalist}: the data list does not exist.")
    parts: dict[str, list] = {}
    present = []
    for key in SPLIT_KEYS:
        try:
            parts[key] = load_decathlon_datalist(datalist, is_segmentation=True, data_list_key=key)
            present.append(key)
        except ValueError:  # MONAI: the key is not in the file
            parts[key] = []
        except Exception as e:
            raise DatasetError(f"{datalist}: cannot be read as a decathlon data list ({e}).") from e
    rule = "the data list's training / validation / test lists"
    for key in SPLIT_KEYS:  # missing files are named before any split is tried
        if parts[key]:
            parts[key] = check_records(parts[key], keys=("image", "label"), source=datalist)
    if parts["training"] and "validation" not in present:
        parts["training"], parts["validation"] = split_records(parts["training"], val_fraction, seed=seed)
        rule = "the data list's training list, with validation split off by subject / cohort"
    return {**parts, "rule": rule}


def load_split(
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    layout: str = "atlas",
    val_fraction: float = 0.2,
    seed: int = 0,
    layout_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``training``, ``validation`` and ``test`` records of a data set (module docstring).

    Args:
        dataset_dir: the download, in the release layout of ``layout``.
        datalist: a decathlon-style JSON data list; used instead of ``dataset_dir`` when given.
        layout: a name of :data:`DATASET_LAYOUTS`.
        val_fraction: share of the training subjects moved to validation (whole cohorts where known).
        seed: seed of the split (the same seed gives the same split).
        layout_options: further arguments of the layout's split (ATLAS: ``subset``, ``num_subsets``,
            ``test_fraction``).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "rule": str}``; records are dicts
        with ``image``, ``label`` and, where the layout knows them, ``subject`` and ``cohort``.

    Raises:
        DatasetError: nothing given, an unknown layout, a folder not in the layout, no records.
        FileNotFoundError: a record names a missing file.
    """
    if datalist:
        split = _datalist_split(os.fspath(datalist), float(val_fraction), int(seed))
        source = os.fspath(datalist)
    else:
        if not dataset_dir:
            raise DatasetError(_NO_DATA)
        if layout not in DATASET_LAYOUTS:
            raise DatasetError(f"dataset_layout: unknown layout {layout!r}; choose one of {sorted(DATASET_LAYOUTS)}.")
        source = os.fspath(dataset_dir)
        if not os.path.isdir(source):
            raise FileNotFoundError(f"{source}: the data set folder does not exist.")
        split = DATASET_LAYOUTS[layout](source, float(val_fraction), int(seed), **dict(layout_options or {}))
    for key in SPLIT_KEYS:
        if split[key]:
            split[key] = check_records(split[key], keys=("image", "label"), source=source)
    if not any(split[key] for key in SPLIT_KEYS):
        raise DatasetError(f"{source}: no records in any part of the split.")
    logger.info(
        f"{source}: {len(split['training'])} training, {len(split['validation'])} validation, "
        f"{len(split['test'])} test subjects ({split['rule']})."
    )
    return split


def evaluation_records(split: Mapping[str, Any], part: str = "test") -> list[dict[str, Any]]:
    """The records an evaluation scores: ``split[part]``; ``"test"`` falls back to ``"validation"``
    for data sets without a test part (the default ATLAS layout), saying so in the log. ``"all"``
    gives every record of the split."""
    if part == "all":
        return [*split["training"], *split["validation"], *split["test"]]
    if part not in SPLIT_KEYS:
        raise DatasetError(f"evaluation_part: unknown part {part!r}; choose test, validation, training or all.")
    if part == "test" and not split["test"]:
        logger.info(f"evaluating the validation part: this data set has no test part ({split['rule']}).")
        return list(split["validation"])
    return list(split[part])
