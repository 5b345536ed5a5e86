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
"""Adapters for the CT data sets of the paper: MSD Task06 Lung and orCaScore (SPEC Sec. 7).

They read the real downloads and the look-alikes of :mod:`bundle.data.synthetic_ct` alike and
return MONAI-style records (dicts of absolute paths plus ``subject``):

- :func:`load_msd_lung`: ``<root>/dataset.json`` of the Medical Segmentation Decathlon
  (``Task06_Lung``); its ``training`` entries are the 64 labelled CTs. The macOS ``._*`` files
  of the official archive are never listed in ``dataset.json`` and so are ignored.
- :func:`find_orcascore_scans`: the orCaScore training set,
  ``<root>/Training Set/Images/<case>CTI.mhd`` with the reference
  ``<root>/Training Set/Reference standard/<case>CTR.mhd`` (``CTI`` = image, ``CTR`` =
  reference; ``.mha`` is accepted too), and optionally a DICOM series folder per case in
  ``<root>/Training Set/DICOM/<case>/`` (``image_dicom``; it becomes ``image`` when a case has
  no MetaImage). ``root`` may also be the ``Training Set`` folder itself. Reference masks of
  the real data may label calcium per artery; binarise (``label > 0``) before scoring.
- :func:`msd_lung_split` / :func:`orcascore_split`: the paper's splits (43 / 11 / 10 of the 64
  lung CTs, 26 / 5 / 1 of the 32 orCaScore CTs; :func:`split_sizes` scales them to other
  counts), deterministic in ``seed`` and independent of the order of the records.
- :func:`write_split_datalist`: a decathlon-style datalist JSON of such a split, which
  ``monai.data.load_decathlon_datalist(path, data_list_key=...)`` reads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MSD_LUNG_SPLIT_SIZES",
    "ORCASCORE_SPLIT_SIZES",
    "SPLIT_KEYS",
    "load_msd_lung",
    "find_orcascore_scans",
    "split_sizes",
    "split_by_sizes",
    "msd_lung_split",
    "orcascore_split",
    "write_split_datalist",
]

logger = logging.getLogger(__name__)

#: The paper's MSD Task06 Lung split of the 64 labelled CTs (training, validation, test).
MSD_LUNG_SPLIT_SIZES = (43, 11, 10)
#: The paper's orCaScore split of the 32 training CTs (training, validation, test).
ORCASCORE_SPLIT_SIZES = (26, 5, 1)
#: Keys of a split, in order.
SPLIT_KEYS = ("training", "validation", "test")
#: Record keys that hold paths (made absolute in datalists).
_PATH_KEYS = ("image", "label", "image_dicom")

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_ORCA_IMAGE = re.compile(r"^(?P<case>.+?)CTI\.(?P<ext>mhd|mha)$", re.IGNORECASE)
_ORCA_REFERENCE = re.compile(r"^(?P<case>.+?)CTR\.(?P<ext>mhd|mha)$", re.IGNORECASE)
_ORCA_CASE = re.compile(r"^T[RE]V(?P<vendor>\d+)P(?P<patient>\d+)$", re.IGNORECASE)


# --------------------------------------------------------------------------- MSD Task06 Lung


def _subject_from_nifti(path: str) -> str:
    name = os.path.basename(path)
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def _resolve_listed(root: Path, value: Any, what: str, index_path: Path) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{index_path}: {what} must be a path string, got {value!r}.")
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
        raise ValueError(f"{index_path} is not valid JSON: {err}") from err
    training = index.get("training") if isinstance(index, dict) else None
    if not isinstance(training, list) or not training:
        raise ValueError(f"{index_path} has no non-empty 'training' list of image/label entries.")
    modality = index.get("modality", {})
    if isinstance(modality, dict) and modality and "CT" not in modality.values():
        logger.warning("%s: modality %s is not CT.", index_path, modality)
    listed = index.get("numTraining")
    if isinstance(listed, int) and listed != len(training):
        logger.warning(
            "%s: numTraining is %d but %d training entries are listed.", index_path, listed, len(training)
        )

    records, seen = [], {}
    for number, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(
                f"{index_path}: training entry {number} is not an {{'image', 'label'}} dict: {entry!r}."
            )
        if not entry.get("label"):
            raise ValueError(f"{index_path}: training entry {number} ({entry['image']}) has no label.")
        image = _resolve_listed(root_path, entry["image"], "image", index_path)
        label = _resolve_listed(root_path, entry["label"], "label", index_path)
        subject = _subject_from_nifti(image)
        if subject in seen:
            raise ValueError(
                f"{index_path}: subject {subject!r} is listed twice (entries {seen[subject]} and {number})."
            )
        seen[subject] = number
        records.append({"image": image, "label": label, "subject": subject})
    return records


# --------------------------------------------------------------------------- orCaScore


def _orcascore_folders(root: Path) -> tuple[Path, Path, Path]:
    """Images, reference and DICOM folders of an orCaScore root (or of its ``Training Set``)."""
    base = root / "Training Set" if (root / "Training Set").is_dir() else root
    return base / "Images", base / "Reference standard", base / "DICOM"


def _check_metaimage(path: Path) -> None:
    """A ``.mhd`` header must name a data file that exists (``.mha`` holds its data)."""
    if path.suffix.lower() != ".mhd":
        return
    try:
        with open(path, encoding="latin-1") as f:
            header = f.read(65536)
    except OSError as err:
        raise FileNotFoundError(f"{path} cannot be read: {err}") from err
    match = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", header, re.MULTILINE)
    if match is None:
        raise ValueError(f"{path} is not a MetaImage header (no ElementDataFile line).")
    data = match.group(1)
    if data.upper() in ("LOCAL", "LIST") or "%" in data:  # inline data, file lists, patterns
        return
    data_path = path.parent / data
    if not data_path.is_file():
        raise FileNotFoundError(f"{data_path}, the data file named in {path}, does not exist.")


def _index_files(folder: Path, pattern: re.Pattern[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        match = pattern.match(path.name)
        if match is None or not path.is_file():
            continue
        case = match.group("case")
        if case in found:
            raise ValueError(f"{folder}: case {case!r} has two files, {found[case].name} and {path.name}.")
        found[case] = path
    return found


def find_orcascore_scans(root: str | os.PathLike, require_reference: bool = True) -> list[dict[str, Any]]:
    """Records of the orCaScore training CTs under ``root`` (real download or look-alike).

    Args:
        root: the folder holding ``Training Set`` (or the ``Training Set`` folder itself).
        require_reference: every image must have its reference (``CTR``) mask; when False,
            images without one get ``"label": None``.

    Returns:
        One record per case, sorted by case id:
        ``{"image": abs path (.mhd, or the DICOM folder when there is no .mhd), "label": abs path
        of the reference .mhd, "subject": "TRV1P1", "vendor": "V1" (for TRV/TEV names),
        "image_dicom": abs folder (only when present)}``.

    Raises:
        FileNotFoundError: ``root`` is missing, holds no images, an image has no reference,
            a reference has no image, or a ``.mhd`` names a data file that does not exist.
        ValueError: two image (or two reference) files for one case.
    """
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise FileNotFoundError(f"{root_path} is not a directory (expected the orCaScore folder).")
    image_dir, reference_dir, dicom_dir = _orcascore_folders(root_path)
    images = _index_files(image_dir, _ORCA_IMAGE)
    references = _index_files(reference_dir, _ORCA_REFERENCE)
    dicoms = {}
    if dicom_dir.is_dir():
        dicoms = {p.name: p for p in sorted(dicom_dir.iterdir()) if p.is_dir() and any(p.iterdir())}
    cases = sorted(set(images) | set(dicoms))
    if not cases:
        raise FileNotFoundError(
            f"no orCaScore images under {root_path}: expected '{image_dir}/<case>CTI.mhd' "
            f"or DICOM series folders in '{dicom_dir}/<case>/'."
        )
    orphans = sorted(set(references) - set(cases))
    if orphans:
        raise FileNotFoundError(
            f"reference {references[orphans[0]]} has no image ({image_dir / (orphans[0] + 'CTI.mhd')} "
            f"is missing){f' (and {len(orphans) - 1} more)' if len(orphans) > 1 else ''}."
        )
    records = []
    for case in cases:
        image = images.get(case)
        reference = references.get(case)
        if reference is None and require_reference:
            source = image if image is not None else dicoms[case]
            raise FileNotFoundError(
                f"image {source} has no reference: {reference_dir / (case + 'CTR.mhd')} is missing "
                "(pass require_reference=False to list unlabelled scans)."
            )
        for path in (image, reference):
            if path is not None:
                _check_metaimage(path)
        record: dict[str, Any] = {
            "image": str(image if image is not None else dicoms[case]),
            "label": str(reference) if reference is not None else None,
            "subject": case,
        }
        vendor = _ORCA_CASE.match(case)
        if vendor is not None:
            record["vendor"] = f"V{vendor.group('vendor')}"
        if case in dicoms:
            record["image_dicom"] = str(dicoms[case])
        records.append(record)
    return records


# --------------------------------------------------------------------------- splits


def split_sizes(num_records: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """Part sizes for ``num_records`` records from the reference ``sizes``.

    Exactly ``sizes`` when they add up to ``num_records``; otherwise proportional (largest
    remainders, ties to the earlier part), every part with a positive reference size keeping
    at least one record (taken from the largest part).

    Example: ``split_sizes(64, (43, 11, 10)) == (43, 11, 10)``, ``split_sizes(12, (43, 11, 10))
    == (8, 2, 2)``, ``split_sizes(8, (26, 5, 1)) == (6, 1, 1)``.
    """
    ref = [int(s) for s in sizes]
    if (
        not ref
        or any(s < 0 for s in ref)
        or sum(ref) == 0
        or any(float(s) != float(t) for s, t in zip(ref, sizes))
    ):
        raise ValueError(f"sizes must be non-negative integers with a positive sum, got {tuple(sizes)!r}.")
    positive = sum(s > 0 for s in ref)
    if num_records < positive:
        raise ValueError(
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
        raise ValueError(f"need one size per part {tuple(keys)}, got sizes {tuple(sizes)!r}.")
    by_subject: dict[str, dict[str, Any]] = {}
    for number, record in enumerate(records):
        if not isinstance(record, Mapping) or subject_key not in record:
            raise ValueError(f"record {number} has no {subject_key!r} key: {record!r}.")
        subject = str(record[subject_key])
        if subject in by_subject:
            raise ValueError(
                f"subject {subject!r} appears in more than one record; split by subject needs one each."
            )
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


def msd_lung_split(
    records: Sequence[Mapping[str, Any]], sizes: Sequence[int] = MSD_LUNG_SPLIT_SIZES, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """The paper's MSD Task06 Lung split: 43 training / 11 validation / 10 test of the 64 CTs.

    Other record counts are split proportionally (:func:`split_sizes`, each part >= 1).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``; deterministic in ``seed``.
    """
    return split_by_sizes(records, sizes, seed)


def orcascore_split(
    records: Sequence[Mapping[str, Any]], sizes: Sequence[int] = ORCASCORE_SPLIT_SIZES, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """The paper's orCaScore split: 26 training / 5 validation / 1 test of the 32 CTs.

    Other record counts are split proportionally (:func:`split_sizes`, each part >= 1).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``; deterministic in ``seed``.
    """
    return split_by_sizes(records, sizes, seed)


def write_split_datalist(
    split: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, overwrite: bool = False
) -> str:
    """Write a split as a decathlon-style datalist JSON (atomically).

    Path values (``image``, ``label``, ``image_dicom``) are written absolute, so that
    ``monai.data.load_decathlon_datalist(path, data_list_key="test")`` returns them unchanged
    wherever the file is. Parts without records are left out: MONAI's loader then says that
    the part is "not specified" (an empty ``"test"`` list would make it fail with an IndexError).

    Args:
        split: ``{"training": [...], "validation": [...], "test": [...]}`` of records.
        path: the JSON file.
        overwrite: replace an existing file.

    Returns:
        ``path``.

    Raises:
        ValueError: unknown part names or records that are not dicts.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    from bundle.engines.inference import write_json  # lazy: bundle.engines imports bundle.data

    if not isinstance(split, Mapping):
        raise ValueError(f"split must be a dict of {SPLIT_KEYS}, got {type(split).__name__}.")
    unknown = sorted(set(split) - set(SPLIT_KEYS))
    if unknown:
        raise ValueError(f"split has unknown parts {unknown}; expected {SPLIT_KEYS}.")
    datalist: dict[str, Any] = {"description": "GRCSF bundle data split (training / validation / test)"}
    for key in SPLIT_KEYS:
        items = []
        for number, record in enumerate(split.get(key, [])):
            if not isinstance(record, Mapping):
                raise ValueError(f"split[{key!r}][{number}] is not a record dict: {record!r}.")
            item = dict(record)
            for path_key in _PATH_KEYS:
                if isinstance(item.get(path_key), (str, os.PathLike)):
                    item[path_key] = os.path.abspath(os.fspath(item[path_key]))
            items.append(item)
        if items:
            datalist[key] = items
        datalist[f"num_{key}"] = len(items)
    return write_json(datalist, path, overwrite=overwrite)
