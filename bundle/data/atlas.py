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
"""ATLAS v2.0 adapter: find the subjects of a release and make the paper's cohort-disjoint subsets.

ATLAS v2.0 (and the synthetic look-alike of :mod:`bundle.data.synthetic.atlas`) is laid out as::

    <root>/Training/R001/sub-r001s001/ses-1/anat/
        sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
        sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz
    <root>/Testing/R0XX/...   (images without masks)

where ``<root>`` may also be the folder holding ``ATLAS_2/``. The cohort (acquisition site) is the
``R001`` folder, written ``"r001"`` in the records as in the subject id.

- :func:`find_atlas_subjects` -- one record ``{"image", "label", "subject", "cohort", "session",
  "split"}`` per image, sorted, with errors that name the offending file.
- :func:`atlas_subset_splits` -- the paper's design (docs/method.md §7): the cohorts are partitioned
  into ``num_subsets`` subsets of distinct cohorts, balanced by subject count; within each subset
  whole cohorts go to test so that test holds about ``test_fraction`` of the subset's subjects.

The workflows' split of a release (subsets, validation, the rule for few cohorts) is
:func:`bundle.data.layouts.load_split`; ``scripts/prepare_dataset.py`` writes it as datalists.
"""

from __future__ import annotations

import itertools
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bundle.utils.errors import DatasetError

__all__ = ["atlas_subset_splits", "find_atlas_subjects"]

# sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz (the space entity is optional)
_IMAGE_NAME = re.compile(r"^(sub-[A-Za-z0-9]+)_(ses-[A-Za-z0-9]+)_(?:space-[A-Za-z0-9]+_)?T1w\.nii(\.gz)?$")
_COHORT_FOLDER = re.compile(r"^R\d+$", re.IGNORECASE)
_SUBJECT_COHORT = re.compile(r"^sub-(r\d+)s\d+$", re.IGNORECASE)
_LABEL_SUFFIX = "_label-L_desc-T1lesion_mask"
# Exhaustive search of the test cohorts of a subset up to this many cohorts (2**16 combinations).
_MAX_EXHAUSTIVE_COHORTS = 16


def _dataset_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"ATLAS root {path} does not exist or is not a directory.")
    if not (path / "Training").is_dir() and not (path / "Testing").is_dir() and (path / "ATLAS_2").is_dir():
        return path / "ATLAS_2"
    return path


def _label_path(image: Path) -> Path:
    """The lesion mask next to an image: ``..._T1w.nii.gz`` -> ``..._label-L_desc-T1lesion_mask.nii.gz``."""
    ext = ".nii.gz" if image.name.endswith(".gz") else ".nii"
    stem = image.name[: -len("_T1w" + ext)]
    return image.with_name(f"{stem}{_LABEL_SUFFIX}{ext}")


def find_atlas_subjects(
    root: str | os.PathLike, require_labels: bool = True, splits: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The subjects of an ATLAS v2.0 release (or of the synthetic look-alike).

    Args:
        root: the release folder holding ``Training/`` (and ``Testing/``), or the folder holding
            ``ATLAS_2/``.
        require_labels: every image must have its lesion mask (error otherwise). When False,
            images without mask are kept and their records have no ``"label"`` key.
        splits: release folders to read; default ``("Training",)`` when labels are required,
            ``("Training", "Testing")`` otherwise (``Testing`` has no masks).

    Returns:
        One record per image, sorted by (cohort, subject, session)::

            {"image": abs path, "label": abs path (when present), "subject": "sub-r001s001",
             "cohort": "r001", "session": "ses-1", "split": "Training"}

    Raises:
        FileNotFoundError: ``root`` is missing, none of ``splits`` exists, or (``require_labels``)
            an image has no mask -- the message names the image and the expected mask.
        ValueError: no subject found; a subject found twice (same subject and session, in two
            places); a subject id whose cohort differs from its cohort folder; a bad split name.
    """
    base = _dataset_root(root)
    splits = tuple(splits) if splits is not None else (("Training",) if require_labels else ("Training", "Testing"))
    if not splits or any(s not in ("Training", "Testing") for s in splits):
        raise DatasetError(f"splits must be a non-empty selection of 'Training' and 'Testing', got {splits}.")
    present = [s for s in splits if (base / s).is_dir()]
    if not present:
        raise FileNotFoundError(
            f"{base} has no {' or '.join(splits)} folder: not an ATLAS v2.0 release "
            "(expected <root>/Training/R001/sub-r001s001/ses-1/anat/...)."
        )
    records: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], Path] = {}
    for split in present:
        for image in sorted((base / split).glob("*/sub-*/ses-*/anat/sub-*_T1w.nii*")):
            match = _IMAGE_NAME.match(image.name)
            cohort_dir, subject_dir, session_dir = (image.parents[3].name, image.parents[2].name, image.parents[1].name)
            if match is None or not _COHORT_FOLDER.match(cohort_dir):
                continue  # not an ATLAS T1 (e.g. another modality or a stray file)
            subject, session = match.group(1), match.group(2)
            if subject != subject_dir or session != session_dir:
                raise DatasetError(
                    f"{image}: the file name says {subject}/{session} but it lies in {subject_dir}/{session_dir}."
                )
            cohort = cohort_dir.lower()
            id_cohort = _SUBJECT_COHORT.match(subject)
            if id_cohort is not None and id_cohort.group(1).lower() != cohort:
                raise DatasetError(f"{image}: subject {subject} lies in the folder of cohort {cohort_dir}.")
            if (subject, session) in seen:
                raise DatasetError(f"duplicate subject {subject} {session}: {seen[(subject, session)]} and {image}.")
            seen[(subject, session)] = image
            label = _label_path(image)
            if not label.is_file() and require_labels:
                raise FileNotFoundError(f"{image} has no lesion mask: {label} does not exist.")
            record: dict[str, Any] = {"image": str(image)}
            if label.is_file():
                record["label"] = str(label)
            record.update(subject=subject, cohort=cohort, session=session, split=split)
            records.append(record)
    if not records:
        raise DatasetError(
            f"no ATLAS subjects under {base} ({', '.join(present)}): expected files like "
            "R001/sub-r001s001/ses-1/anat/sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz."
        )
    records.sort(key=lambda r: (r["cohort"], r["subject"], r["session"], r["split"]))
    return records


# --------------------------------------------------------------------------- subsets


def _cohort_sizes(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Number of distinct subjects per cohort."""
    subjects: dict[str, set[str]] = {}
    for i, record in enumerate(records):
        if "cohort" not in record:
            raise DatasetError(f"record {i} has no 'cohort' key: {dict(record)}.")
        subject = str(record.get("subject", record.get("image", i)))
        subjects.setdefault(str(record["cohort"]), set()).add(subject)
    owner: dict[str, str] = {}
    for cohort, members in subjects.items():
        for subject in members:
            if owner.setdefault(subject, cohort) != cohort:
                raise DatasetError(f"subject {subject} appears in two cohorts: {owner[subject]} and {cohort}.")
    return {cohort: len(members) for cohort, members in subjects.items()}


def _partition_cohorts(sizes: Mapping[str, int], num_subsets: int, rng: random.Random) -> list[list[str]]:
    """Cohorts into ``num_subsets`` groups of >= 2 cohorts with subject counts as equal as possible.

    A seeded random greedy start (each cohort, in shuffled order, to the group with the fewest
    subjects) is improved by moving or swapping single cohorts while the sum of squared group
    sizes decreases; the seed decides which of the (often many) balanced partitions comes out.
    """
    cohorts = sorted(sizes)
    rng.shuffle(cohorts)
    groups: list[list[str]] = [[] for _ in range(num_subsets)]
    totals = [0] * num_subsets
    for cohort in cohorts:
        # the groups still short of the 2 cohorts a train/test split needs come first
        target = min(range(num_subsets), key=lambda g: (len(groups[g]) >= 2, totals[g]))
        groups[target].append(cohort)
        totals[target] += sizes[cohort]

    def gain_of_move(src: int, dst: int, delta: int) -> int:
        # change of the sum of squares when ``delta`` subjects go from group src to dst
        return (totals[src] - delta) ** 2 + (totals[dst] + delta) ** 2 - totals[src] ** 2 - totals[dst] ** 2

    improved = True
    while improved:
        improved = False
        for src, dst in itertools.permutations(range(num_subsets), 2):
            for cohort in list(groups[src]):
                if len(groups[src]) > 2 and gain_of_move(src, dst, sizes[cohort]) < 0:
                    groups[src].remove(cohort)
                    groups[dst].append(cohort)
                    totals[src] -= sizes[cohort]
                    totals[dst] += sizes[cohort]
                    improved = True
            for a, b in itertools.product(list(groups[src]), list(groups[dst])):
                if a in groups[src] and b in groups[dst] and gain_of_move(src, dst, sizes[a] - sizes[b]) < 0:
                    groups[src][groups[src].index(a)] = b
                    groups[dst][groups[dst].index(b)] = a
                    totals[src] += sizes[b] - sizes[a]
                    totals[dst] += sizes[a] - sizes[b]
                    improved = True
    return [sorted(g) for g in groups]


def _choose_test_cohorts(
    cohorts: Sequence[str], sizes: Mapping[str, int], test_fraction: float, rng: random.Random
) -> list[str]:
    """Whole cohorts whose subjects come closest to ``test_fraction`` of the group (>= 1 cohort each side)."""
    total = sum(sizes[c] for c in cohorts)
    target = test_fraction * total
    if len(cohorts) <= _MAX_EXHAUSTIVE_COHORTS:
        best: list[tuple[str, ...]] = []
        best_error = float("inf")
        for k in range(1, len(cohorts)):
            for combo in itertools.combinations(cohorts, k):
                error = abs(sum(sizes[c] for c in combo) - target)
                if error < best_error - 1e-9:
                    best, best_error = [combo], error
                elif abs(error - best_error) <= 1e-9:
                    best.append(combo)
        return sorted(rng.choice(best))
    # many cohorts: add cohorts in seeded random order while that brings the count closer
    order = list(cohorts)
    rng.shuffle(order)
    chosen: list[str] = []
    count = 0
    for cohort in order:
        if len(chosen) < len(cohorts) - 1 and (not chosen or abs(count + sizes[cohort] - target) < abs(count - target)):
            chosen.append(cohort)
            count += sizes[cohort]
    return sorted(chosen)


def atlas_subset_splits(
    records: Sequence[Mapping[str, Any]], num_subsets: int = 4, test_fraction: float = 0.2, seed: int = 0
) -> list[dict[str, Any]]:
    """The paper's cohort-disjoint subsets of ATLAS v2.0 (docs/method.md §7), deterministic for a seed.

    The cohorts are partitioned into ``num_subsets`` subsets of distinct cohorts, balanced by
    subject count (each subset holds at least two cohorts). Within each subset, whole cohorts are
    chosen for test so that test holds as close to ``test_fraction`` of the subset's subjects as
    whole cohorts allow (exhaustively for up to 16 cohorts per subset, greedily beyond); at least
    one cohort stays on each side, so no cohort is in both train and test.

    Args:
        records: data records with ``"cohort"`` (and ``"subject"``; records of one subject, e.g.
            several sessions, stay together), e.g. from :func:`find_atlas_subjects`.
        num_subsets: number of subsets (>= 1).
        test_fraction: wanted fraction of test subjects per subset, in (0, 1).
        seed: seed of the random choices; the same seed gives the same subsets.

    Returns:
        One dict per subset ``i`` (0-based)::

            {"subset": i, "train_cohorts": [...], "test_cohorts": [...],
             "training": [records], "test": [records]}

        Records are copies of the input records (in input order) with ``"subset": i`` added.

    Raises:
        ValueError: bad arguments, records without cohort, a subject in two cohorts, or fewer
            than ``2 * num_subsets`` cohorts.
    """
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, int) or num_subsets < 1:
        raise DatasetError(f"num_subsets must be an integer >= 1, got {num_subsets!r}.")
    if not 0.0 < float(test_fraction) < 1.0:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    if not records:
        raise DatasetError("atlas_subset_splits needs at least one record.")
    sizes = _cohort_sizes(records)
    if len(sizes) < 2 * num_subsets:
        raise DatasetError(
            f"{len(sizes)} cohorts cannot make {num_subsets} subsets with disjoint train and test cohorts: "
            f"each subset needs at least 2 cohorts, i.e. at least {2 * num_subsets} cohorts."
        )
    rng = random.Random(seed)
    groups = _partition_cohorts(sizes, num_subsets, rng)
    subsets = []
    for index, group in enumerate(groups):
        test_cohorts = _choose_test_cohorts(group, sizes, float(test_fraction), rng)
        train_cohorts = [c for c in group if c not in test_cohorts]
        members = set(group)
        chosen = [dict(r, subset=index) for r in records if str(r["cohort"]) in members]
        subsets.append(
            {
                "subset": index,
                "train_cohorts": train_cohorts,
                "test_cohorts": test_cohorts,
                "training": [r for r in chosen if str(r["cohort"]) not in test_cohorts],
                "test": [r for r in chosen if str(r["cohort"]) in test_cohorts],
            }
        )
    return subsets
