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
"""orCaScore adapter: the cardiac calcium-scoring CTs with their reference masks.

- :func:`find_orcascore_scans` -- ``<root>/Training Set/Images/<case>CTI.mhd`` with the reference
  ``<root>/Training Set/Reference standard/<case>CTR.mhd`` (``CTI`` = image, ``CTR`` = reference;
  ``.mha`` too), and optionally a DICOM series folder per case in ``<root>/Training Set/DICOM/<case>/``
  (``image_dicom``; it becomes ``image`` when a case has no MetaImage). ``root`` may also be the
  ``Training Set`` folder itself. Reference masks of the real data may label calcium per artery;
  binarise (``label > 0``) before scoring.
- :func:`orcascore_split` -- the paper's 26 / 5 / 1 split, deterministic in ``seed``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bundle.utils.errors import DatasetError

from .records import split_by_sizes

logger = logging.getLogger(__name__)

__all__ = ["ORCASCORE_SPLIT_SIZES", "find_orcascore_scans", "orcascore_split"]


#: The paper's orCaScore split of the 32 training CTs (training, validation, test).
ORCASCORE_SPLIT_SIZES = (26, 5, 1)


_ORCA_IMAGE = re.compile(r"^(?P<case>.+?)CTI\.(?P<ext>mhd|mha)$", re.IGNORECASE)


_ORCA_REFERENCE = re.compile(r"^(?P<case>.+?)CTR\.(?P<ext>mhd|mha)$", re.IGNORECASE)


_ORCA_CASE = re.compile(r"^T[RE]V(?P<vendor>\d+)P(?P<patient>\d+)$", re.IGNORECASE)


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
        raise DatasetError(f"{path} is not a MetaImage header (no ElementDataFile line).")
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
            raise DatasetError(f"{folder}: case {case!r} has two files, {found[case].name} and {path.name}.")
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


def orcascore_split(
    records: Sequence[Mapping[str, Any]], sizes: Sequence[int] = ORCASCORE_SPLIT_SIZES, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """The paper's orCaScore split: 26 training / 5 validation / 1 test of the 32 CTs.

    Other record counts are split proportionally (:func:`split_sizes`, each part >= 1).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``; deterministic in ``seed``.
    """
    return split_by_sizes(records, sizes, seed)
