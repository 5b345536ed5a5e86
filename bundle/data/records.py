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
"""Data records (``{"image", "label", "subject", "cohort", ...}``): checked, and split by subject.

- :func:`check_records` -- every record names existing files; clear errors otherwise.
- :func:`split_records` -- deterministic training/validation split by subject, cohort-disjoint
  when the records carry cohorts.
- :func:`split_sizes` / :func:`split_by_sizes` -- a split into parts of given sizes (the paper's
  training / validation / test counts), scaled to other record counts.
- :func:`write_split_datalist` -- such a split as a decathlon-style datalist JSON.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from bundle.utils.errors import DatasetError
from bundle.utils.io import write_json

__all__ = ["SPLIT_KEYS", "check_records", "split_by_sizes", "split_records", "split_sizes", "write_split_datalist"]


def check_records(
    records: Sequence[Mapping[str, Any]],
    keys: Sequence[str] = ("image", "label"),
    keep_keys: Sequence[str] = ("subject", "cohort", "subset"),
    source: str = "datalist",
) -> list[dict[str, Any]]:
    """Check that every record names existing files under ``keys``; return the records trimmed.

    Args:
        records: data records, e.g. ``{"subject": ..., "cohort": ..., "image": path, "label": path}``.
        keys: keys whose values must be paths of existing files (or directories, for DICOM series).
        keep_keys: other entries kept when present. The rest (e.g. the per-lesion lists of the
            synthetic data index) is dropped: a DataLoader cannot collate ragged lists, and the
            records key the persistent cache, which must not depend on bookkeeping entries.
        source: where the records come from, for the error messages.

    Returns:
        new dicts holding ``keys`` and the present ``keep_keys``, in the input order.

    Raises:
        ValueError: when there are no records or a record lacks one of ``keys``.
        FileNotFoundError: naming the record and the missing file.
    """
    records = [dict(r) for r in records]
    if not records:
        raise DatasetError(f"{source}: no records (no image/label pairs found).")
    for index, record in enumerate(records):
        for key in keys:
            if key not in record:
                raise DatasetError(f"{source}: record {index} ({record}) has no {key!r} entry.")
            path = record[key]
            if not isinstance(path, (str, os.PathLike)) or not os.path.exists(path):
                name = record.get("subject", f"record {index}")
                raise FileNotFoundError(f"{source}: {key} file of {name} does not exist: {path}")
    wanted = tuple(keys) + tuple(k for k in keep_keys if k not in keys)
    return [{k: r[k] for k in wanted if k in r} for r in records]


def split_records(
    records: Sequence[Mapping[str, Any]],
    val_fraction: float = 0.2,
    seed: int = 0,
    subject_key: str = "subject",
    cohort_key: str | None = "cohort",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split records into training and validation sets by subject, deterministically.

    All records of one subject land on the same side. When the records carry ``cohort_key`` and
    there are at least two cohorts, whole cohorts are moved to validation (the paper tests on
    cohorts unseen in training), the smallest number of cohorts that reaches ``val_fraction`` of
    the subjects, always leaving one cohort for training. Records without ``subject_key`` count as
    one subject each (identified by their image path).

    Args:
        records: data records (dicts).
        val_fraction: wanted fraction of subjects in the validation set, in (0, 1).
        seed: seed of the shuffle of subjects (or cohorts); the same seed gives the same split.
        subject_key: record key of the subject identifier.
        cohort_key: record key of the cohort identifier, None to ignore cohorts.

    Returns:
        (train_records, val_records), each in the input order; both non-empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    records = [dict(r) for r in records]

    def subject_of(index: int) -> str:
        record = records[index]
        return str(record.get(subject_key, record.get("image", index)))

    subjects = sorted({subject_of(i) for i in range(len(records))})
    if len(subjects) < 2:
        raise DatasetError(f"split_records needs records of at least 2 subjects, got {len(subjects)}.")
    rng = random.Random(seed)
    cohort_of: dict[str, str] = {}
    if cohort_key is not None and all(cohort_key in r for r in records):
        for i, record in enumerate(records):
            cohort_of.setdefault(subject_of(i), str(record[cohort_key]))
    cohorts = sorted(set(cohort_of.values()))
    num_val = max(1, round(val_fraction * len(subjects)))
    if len(cohorts) >= 2:
        rng.shuffle(cohorts)
        val_subjects: set[str] = set()
        for cohort in cohorts[:-1]:  # the last cohort always stays in training
            if len(val_subjects) >= num_val:
                break
            val_subjects |= {s for s, c in cohort_of.items() if c == cohort}
    else:
        rng.shuffle(subjects)
        val_subjects = set(subjects[: min(num_val, len(subjects) - 1)])
    train = [r for i, r in enumerate(records) if subject_of(i) not in val_subjects]
    val = [r for i, r in enumerate(records) if subject_of(i) in val_subjects]
    return train, val


#: Keys of a split, in order.
SPLIT_KEYS = ("training", "validation", "test")


#: Record keys that hold paths (made absolute in datalists).
_PATH_KEYS = ("image", "label", "image_dicom")


def split_sizes(num_records: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """Part sizes for ``num_records`` records from the reference ``sizes``.

    Exactly ``sizes`` when they add up to ``num_records``; otherwise proportional (largest
    remainders, ties to the earlier part), every part with a positive reference size keeping
    at least one record (taken from the largest part).

    Example: ``split_sizes(64, (43, 11, 10)) == (43, 11, 10)``, ``split_sizes(12, (43, 11, 10))
    == (8, 2, 2)``, ``split_sizes(8, (26, 5, 1)) == (6, 1, 1)``.
    """
    ref = [int(s) for s in sizes]
    if not ref or any(s < 0 for s in ref) or sum(ref) == 0 or any(float(s) != float(t) for s, t in zip(ref, sizes)):
        raise DatasetError(f"sizes must be non-negative integers with a positive sum, got {tuple(sizes)!r}.")
    positive = sum(s > 0 for s in ref)
    if num_records < positive:
        raise DatasetError(
            f"cannot split {num_records} record(s) into {positive} non-empty parts (sizes {tuple(ref)})."
        )
    if num_records == sum(ref):
        return tuple(ref)
    exact = [num_records * s / sum(ref) for s in ref]
    out = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(ref)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in by_remainder[: num_records - sum(out)]:
        out[i] += 1
    for i, s in enumerate(ref):
        if s > 0 and out[i] == 0:
            donor = max(range(len(out)), key=lambda j: (out[j], -j))
            out[donor] -= 1
            out[i] = 1
    return tuple(out)


def split_by_sizes(
    records: Sequence[Mapping[str, Any]],
    sizes: Sequence[int],
    seed: int = 0,
    keys: Sequence[str] = SPLIT_KEYS,
    subject_key: str = "subject",
) -> dict[str, list[dict[str, Any]]]:
    """Shuffle the subjects with ``seed`` and cut them into parts of :func:`split_sizes`.

    The shuffle starts from the subjects sorted by id, so the split depends only on the set
    of subjects and the seed, not on the order of ``records``. Each part is sorted by subject.

    Args:
        records: one record per subject (dicts with ``subject_key``).
        sizes: reference part sizes, one per key.
        seed: shuffle seed.
        keys: part names.
        subject_key: record key of the subject id.

    Returns:
        ``{key: [record, ...]}`` (copies of the records), disjoint, covering all records.
    """
    if len(sizes) != len(keys):
        raise DatasetError(f"need one size per part {tuple(keys)}, got sizes {tuple(sizes)!r}.")
    by_subject: dict[str, dict[str, Any]] = {}
    for number, record in enumerate(records):
        if not isinstance(record, Mapping) or subject_key not in record:
            raise DatasetError(f"record {number} has no {subject_key!r} key: {record!r}.")
        subject = str(record[subject_key])
        if subject in by_subject:
            raise DatasetError(f"subject {subject!r} appears in more than one record; split by subject needs one each.")
        by_subject[subject] = dict(record)
    counts = split_sizes(len(by_subject), sizes)
    subjects = sorted(by_subject)
    random.Random(seed).shuffle(subjects)
    out, start = {}, 0
    for key, count in zip(keys, counts):
        part = sorted(subjects[start : start + count])
        out[key] = [by_subject[s] for s in part]
        start += count
    return out


def write_split_datalist(
    split: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, overwrite: bool = False
) -> str:
    """Write a split as a decathlon-style datalist JSON (atomically).

    Path values (``image``, ``label``, ``image_dicom``) are written absolute, so that
    ``monai.data.load_decathlon_datalist(path, data_list_key="test")`` returns them unchanged
    wherever the file is. Parts without records are left out: MONAI's loader then says that
    the part is "not specified" (an empty ``"test"`` list would make it fail with an IndexError).

    Args:
        split: ``{"training": [...], "validation": [...], "test": [...]}`` of records, and optionally
            the ``"rule"`` that made it (:func:`bundle.data.load_split`), written as ``"rule"``.
        path: the JSON file.
        overwrite: replace an existing file.

    Returns:
        ``path``.

    Raises:
        ValueError: unknown part names or records that are not dicts.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    if not isinstance(split, Mapping):
        raise DatasetError(f"split must be a dict of {SPLIT_KEYS}, got {type(split).__name__}.")
    unknown = sorted(set(split) - {*SPLIT_KEYS, "rule"})
    if unknown:
        raise DatasetError(f"split has unknown parts {unknown}; expected {SPLIT_KEYS}.")
    datalist: dict[str, Any] = {"description": "GRCSF bundle data split (training / validation / test)"}
    if split.get("rule"):
        datalist["rule"] = str(split["rule"])
    for key in SPLIT_KEYS:
        items = []
        for number, record in enumerate(split.get(key, [])):
            if not isinstance(record, Mapping):
                raise DatasetError(f"split[{key!r}][{number}] is not a record dict: {record!r}.")
            item = dict(record)
            for path_key in _PATH_KEYS:
                if isinstance(item.get(path_key), (str, os.PathLike)):
                    item[path_key] = os.path.abspath(os.fspath(item[path_key]))
            items.append(item)
        if items:
            datalist[key] = items
        datalist[f"num_{key}"] = len(items)
    return write_json(datalist, path, overwrite=overwrite)
