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
"""ATLAS v2.0 adapter: subject discovery, cohort-disjoint subsets, decathlon datalists."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from bundle.data.atlas import atlas_subset_splits, find_atlas_subjects
from bundle.data.layouts import atlas_subset_count, load_split
from bundle.data.synthetic.atlas import (
    ATLAS_IMAGE_SUFFIX,
    ATLAS_LABEL_SUFFIX,
    generate_atlas_like_dataset,
    load_atlas_like_records,
)
from bundle.tools import prepare_dataset
from bundle.utils.errors import DatasetError
from monai.data import load_decathlon_datalist


def _touch_subject(root: Path, cohort: int, number: int, label: bool = True, split: str = "Training") -> Path:
    """An ATLAS-named image (and mask) of a few bytes; the adapter never reads the voxels."""
    subject = f"sub-r{cohort:03d}s{number:03d}"
    anat = root / split / f"R{cohort:03d}" / subject / "ses-1" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    image = anat / f"{subject}{ATLAS_IMAGE_SUFFIX}"
    image.write_bytes(b"image")
    if label:
        (anat / f"{subject}{ATLAS_LABEL_SUFFIX}").write_bytes(b"label")
    return image


def _synthetic_records(cohort_sizes: list[int]) -> list[dict]:
    return [
        {
            "image": f"/d/sub-r{c + 1:03d}s{s + 1:03d}.nii.gz",
            "subject": f"sub-r{c + 1:03d}s{s + 1:03d}",
            "cohort": f"r{c + 1:03d}",
        }
        for c, size in enumerate(cohort_sizes)
        for s in range(size)
    ]


# Cohort sizes like ATLAS v2.0's training release (33 sites, 655 subjects, very unequal sites).
_ATLAS_LIKE_SIZES = [int(v) for v in np.random.default_rng(7).integers(3, 45, size=33)]


def _check_invariants(subsets: list[dict], records: list[dict], num_subsets: int) -> None:
    assert [s["subset"] for s in subsets] == list(range(num_subsets))
    all_cohorts = {r["cohort"] for r in records}
    seen_cohorts: list[str] = []
    for s in subsets:
        train, test = set(s["train_cohorts"]), set(s["test_cohorts"])
        assert train and test and not train & test
        assert {r["cohort"] for r in s["training"]} == train
        assert {r["cohort"] for r in s["test"]} == test
        assert all(r["subset"] == s["subset"] for r in s["training"] + s["test"])
        seen_cohorts += sorted(train | test)
    assert len(seen_cohorts) == len(set(seen_cohorts))  # subsets hold distinct cohorts
    assert set(seen_cohorts) == all_cohorts
    counts = Counter(r["subject"] for s in subsets for r in s["training"] + s["test"])
    assert set(counts) == {r["subject"] for r in records} and set(counts.values()) == {1}


def test_subset_splits_invariants_sizes_and_balance():
    records = _synthetic_records(_ATLAS_LIKE_SIZES)
    subsets = atlas_subset_splits(records, num_subsets=4, test_fraction=0.2, seed=0)
    _check_invariants(subsets, records, 4)
    totals = [len(s["training"]) + len(s["test"]) for s in subsets]
    assert max(totals) - min(totals) <= 0.1 * np.mean(totals)  # balanced by subject count
    for s, total in zip(subsets, totals):
        assert abs(len(s["test"]) / total - 0.2) < 0.05  # ~80 / 20 with whole cohorts


def test_subset_splits_deterministic_and_seed_dependent():
    records = _synthetic_records(_ATLAS_LIKE_SIZES)
    first = atlas_subset_splits(records, seed=3)
    assert first == atlas_subset_splits(records, seed=3)
    other = atlas_subset_splits(records, seed=4)
    _check_invariants(other, records, 4)
    assert [s["test_cohorts"] for s in first] != [s["test_cohorts"] for s in other]


def test_subset_splits_keep_sessions_of_a_subject_together_and_input_untouched():
    records = _synthetic_records([4, 3, 5, 2])
    records.append(dict(records[0], image="/d/second-session.nii.gz", session="ses-2"))
    before = [dict(r) for r in records]
    subsets = atlas_subset_splits(records, num_subsets=2, test_fraction=0.3, seed=1)
    assert records == before
    holders = [s["subset"] for s in subsets for r in s["training"] + s["test"] if r["subject"] == "sub-r001s001"]
    assert len(holders) == 2 and len(set(holders)) == 1


@pytest.mark.parametrize(
    "records, kwargs, message",
    [
        (_synthetic_records([5] * 7), {"num_subsets": 4}, "at least 8 cohorts"),
        (_synthetic_records([5] * 8), {"test_fraction": 1.0}, "test_fraction"),
        (_synthetic_records([5] * 8), {"num_subsets": 0}, "num_subsets"),
        ([{"image": "/a.nii.gz", "subject": "sub-1"}], {}, "no 'cohort'"),
    ],
)
def test_subset_splits_errors(records, kwargs, message):
    with pytest.raises(ValueError, match=message):
        atlas_subset_splits(records, **kwargs)


def test_find_subjects_layout_testing_folder_and_atlas2_parent(tmp_path):
    release = tmp_path / "ATLAS_2"
    for cohort, number in [(2, 1), (1, 2), (1, 1)]:
        _touch_subject(release, cohort, number)
    _touch_subject(release, 3, 1, label=False, split="Testing")
    (release / "Training" / "R001" / "notes.txt").write_text("not a subject")

    records = find_atlas_subjects(tmp_path)  # the folder holding ATLAS_2/
    assert [r["subject"] for r in records] == ["sub-r001s001", "sub-r001s002", "sub-r002s001"]
    first = records[0]
    assert first["cohort"] == "r001" and first["session"] == "ses-1" and first["split"] == "Training"
    assert Path(first["image"]).is_file() and Path(first["label"]).is_file() and os.path.isabs(first["image"])
    assert first["label"].endswith("_label-L_desc-T1lesion_mask.nii.gz")

    everything = find_atlas_subjects(release, require_labels=False)
    unlabeled = [r for r in everything if r["split"] == "Testing"]
    assert [r["subject"] for r in unlabeled] == ["sub-r003s001"] and "label" not in unlabeled[0]


def test_find_subjects_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_atlas_subjects(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no Training folder"):
        find_atlas_subjects(tmp_path)
    (tmp_path / "Training").mkdir()
    with pytest.raises(ValueError, match="no ATLAS subjects"):
        find_atlas_subjects(tmp_path)

    _touch_subject(tmp_path, 1, 1)
    orphan = _touch_subject(tmp_path, 1, 2, label=False)
    with pytest.raises(FileNotFoundError, match=f"{orphan}.*no lesion mask"):
        find_atlas_subjects(tmp_path)
    assert len(find_atlas_subjects(tmp_path, require_labels=False)) == 2

    duplicate = tmp_path / "dup"
    _touch_subject(duplicate, 1, 1)
    _touch_subject(duplicate, 1, 1, split="Testing")
    with pytest.raises(ValueError, match="duplicate subject sub-r001s001"):
        find_atlas_subjects(duplicate, require_labels=False)

    misplaced = tmp_path / "misplaced" / "Training" / "R002" / "sub-r001s001" / "ses-1" / "anat"
    misplaced.mkdir(parents=True)
    (misplaced / f"sub-r001s001{ATLAS_IMAGE_SUFFIX}").write_bytes(b"x")
    with pytest.raises(ValueError, match="cohort R002"):
        find_atlas_subjects(tmp_path / "misplaced", require_labels=False)


def test_prepare_dataset_writes_the_workflows_subsets(tmp_path, capsys):
    """scripts/prepare_dataset.py writes load_split's subsets: one datalist per subset the cohorts
    allow, readable by MONAI, cohort-disjoint; a subject without mask (as in the release) is left out."""
    root = tmp_path / "data"
    sizes = [3, 5, 2, 4, 6, 2, 3, 5]
    for cohort, size in enumerate(sizes, start=1):
        for number in range(1, size + 1):
            _touch_subject(root, cohort, number)
    _touch_subject(root, 9, 1, label=False)  # a Training subject without its mask
    out = tmp_path / "lists"
    assert prepare_dataset.main(["atlas", "--root", str(root), "--output", str(out), "--num-subsets", "4"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [f"atlas_subset-{i}.json" for i in range(4)]
    assert printed.count("cohort-disjoint subsets") == 4
    seen = []
    for subset in range(4):
        path = str(out / f"atlas_subset-{subset}.json")
        parts = {k: load_decathlon_datalist(path, data_list_key=k) for k in ("training", "validation", "test")}
        for record in parts["training"] + parts["validation"] + parts["test"]:
            assert os.path.isabs(record["image"]) and os.path.isfile(record["label"])
        train_cohorts = {r["cohort"] for r in parts["training"] + parts["validation"]}
        assert train_cohorts and not train_cohorts & {r["cohort"] for r in parts["test"]}
        assert json.loads(Path(path).read_text())["num_test"] == len(parts["test"])
        seen += [r["subject"] for part in parts.values() for r in part]
    assert sorted(seen) == sorted(r["subject"] for r in find_atlas_subjects(root, require_labels=False) if "label" in r)
    assert "sub-r009s001" not in seen

    # 5 cohorts allow only 2 subsets of the 4 asked; existing files are kept
    few = tmp_path / "few"
    for cohort in range(1, 6):
        for number in (1, 2):
            _touch_subject(few, cohort, number)
    assert prepare_dataset.main(["atlas", "--root", str(few), "--output", str(tmp_path / "few-lists")]) == 0
    assert "fewer than the 4 asked" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "few-lists").iterdir()) == ["atlas_subset-0.json", "atlas_subset-1.json"]
    before = (out / "atlas_subset-0.json").read_text()
    assert prepare_dataset.main(["atlas", "--root", str(root), "--output", str(out), "--seed", "6"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "atlas_subset-0.json").read_text() == before
    assert prepare_dataset.main(["atlas", "--root", str(root), "--output", str(out), "--seed", "6", "--overwrite"]) == 0
    assert (out / "atlas_subset-0.json").read_text() != before
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]  # atomic writes left nothing behind


@pytest.mark.parametrize("num_cohorts", [1, 2, 3])
def test_a_release_with_few_cohorts_makes_one_subset(tmp_path, num_cohorts):
    """Fewer than 4 cohorts (a partial download, a site's own folder) make one subset with a test
    part instead of failing; test cohorts are disjoint from training ones where there are 3."""
    for cohort in range(1, num_cohorts + 1):
        for number in range(1, 6):
            _touch_subject(tmp_path, cohort, number)
    assert atlas_subset_count(tmp_path) == 1
    split = load_split(tmp_path, layout="atlas", layout_options={"subset": 0})
    parts = {k: [r["subject"] for r in split[k]] for k in ("training", "validation", "test")}
    assert parts["training"] and parts["test"], split["rule"]
    everyone = [s for names in parts.values() for s in names]
    assert len(everyone) == len(set(everyone)) == 5 * num_cohorts
    if num_cohorts == 3:
        fitted = {r["cohort"] for r in split["training"] + split["validation"]}
        assert not fitted & {r["cohort"] for r in split["test"]}
    assert "one subset" in split["rule"]
    with pytest.raises(DatasetError, match=f"{tmp_path}.*make 1 subset"):
        load_split(tmp_path, layout="atlas", layout_options={"subset": 1})


def test_synthetic_look_alike_is_read_like_atlas(tmp_path):
    generated = generate_atlas_like_dataset(
        tmp_path / "atlas", num_subjects=4, num_cohorts=4, resolution_mm=4, progress=False
    )
    found = find_atlas_subjects(tmp_path / "atlas")
    assert [(r["subject"], r["cohort"], r["image"], r["label"]) for r in found] == sorted(
        (r["subject"], r["cohort"], r["image"], r["label"]) for r in generated
    )
    assert len(load_atlas_like_records(tmp_path / "atlas")) == 4  # the generator's own reader still works
