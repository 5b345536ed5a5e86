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
"""What the user points inference at, as a list of inputs, and where each input's outputs go.

- :func:`list_inputs` -- one image file, the images of a folder, a glob pattern or a list of paths;
  a DICOM series folder is one input.
- :func:`is_dicom_file` / :func:`is_dicom_series_dir` -- the DICOM Part 10 marker, a folder of them.
- :func:`prediction_path` -- ``<output_dir>/<input name>_<postfix><ext>``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bundle.utils.errors import ConfigError, DatasetError

__all__ = [
    "is_label_path",
    "NIFTI_EXTENSIONS",
    "is_dicom_file",
    "is_dicom_series_dir",
    "list_inputs",
    "prediction_path",
]


logger = logging.getLogger(__name__)

NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")


def _is_nifti(path: str, extensions: Sequence[str]) -> bool:
    return any(path.lower().endswith(ext) for ext in extensions)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (the ``DICM`` marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def is_dicom_series_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding DICOM files (one input series, read as one volume)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file() and not entry.name.startswith(".") and is_dicom_file(entry.path):
            return True
    return False


#: file names that are label masks or outputs, not images, in the layouts the bundle reads: ATLAS /
#: BIDS ``*_mask.nii.gz`` (``*_label-L_desc-T1lesion_mask``), the bundle's own ``*_seg`` / ``*_prob``
#: outputs, orCaScore's reference standard ``*CTR.mhd``
_LABEL_NAME = re.compile(
    r"(_mask|_seg|_prob|_label|_labels)\.(nii|nii\.gz|nrrd|mha|mhd)$|CTR\.(mhd|mha)$", re.IGNORECASE
)
#: folders that hold label masks: MSD's ``labelsTr`` / ``labelsTs``, orCaScore's ``Reference standard``
_LABEL_FOLDERS = ("labelstr", "labelsts", "reference standard")


def is_label_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a label mask or an output by the naming of the data sets' layouts."""
    path = os.fspath(path)
    parts = [part.lower() for part in os.path.normpath(path).split(os.sep)]
    return bool(_LABEL_NAME.search(os.path.basename(path))) or any(p in _LABEL_FOLDERS for p in parts[:-1])


def list_inputs(
    inputs: str | os.PathLike | Sequence[str | os.PathLike | Mapping[str, Any]] | None,
    extensions: Sequence[str] = NIFTI_EXTENSIONS,
) -> list[str]:
    """The input images: one file, the images of a folder, a glob pattern, or a list of paths.

    A folder is not searched recursively; its hidden files (e.g. the ``._*`` files of macOS
    archives, temporary files of an interrupted write) and its label masks and earlier outputs
    (:func:`is_label_path`: ``*_mask.nii.gz``, ``labelsTr/``, ``*_seg.nii.gz``, ...) are left out,
    and so are those a pattern matches. A folder holding DICOM files is one input (a DICOM
    series), and so are the DICOM series folders inside a folder or matched by a pattern; a
    pattern (``*``, ``?``, ``[``; ``**`` recurses) matches files, e.g.
    ``ATLAS_2/Training/**/*_T1w.nii.gz``. A list (of paths, or of records with an ``image``) is
    returned as given, missing entries included: the runner reports them per file.

    Args:
        inputs: a file, a folder, a glob pattern, or a list of paths.
        extensions: file name endings that count as images in a folder (lower case).

    Raises:
        ConfigError: no input given.
        FileNotFoundError: ``inputs`` is a path that does not exist, or a pattern matching nothing.
        DatasetError: a folder holding no image.
    """
    if inputs is None or (isinstance(inputs, str) and not inputs.strip()):
        raise ConfigError("no input given: pass --input_dir <an image file, a folder of images or a glob pattern>.")
    if not isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(p["image"] if isinstance(p, Mapping) else p) for p in inputs]
    path = os.fspath(inputs)
    if os.path.isfile(path):
        return [path]
    if is_dicom_series_dir(path):
        return [path]
    if os.path.isdir(path):
        candidates = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if not name.startswith(".")
            and (
                (_is_nifti(name, extensions) and os.path.isfile(os.path.join(path, name)))
                or is_dicom_series_dir(os.path.join(path, name))
            )
        )
        files = _without_labels(candidates, path)
        if not files:
            nested = _nested_images(path, extensions)
            hint = (
                f"; {nested} image(s) lie in its subfolders (a folder is not searched recursively): pass a "
                f'pattern such as "{os.path.join(path, "**", "*" + extensions[0])}"'
                if nested
                else ""
            )
            raise DatasetError(
                f"{path}: the folder holds no image with an extension in {tuple(extensions)} "
                f"and no DICOM series folder{hint}."
            )
        return files
    if glob.has_magic(path):
        candidates = sorted(
            p
            for p in glob.glob(path, recursive=True)
            if not os.path.basename(p).startswith(".") and (os.path.isfile(p) or is_dicom_series_dir(p))
        )
        files = _without_labels(candidates, path)
        if not files:
            raise FileNotFoundError(f"{path}: no input image matches the pattern.")
        return files
    raise FileNotFoundError(f"{path}: the input does not exist.")


def _nested_images(folder: str, extensions: Sequence[str]) -> int:
    """How many images (not label masks) the subfolders of ``folder`` hold, for the error's hint."""
    count = 0
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if parent != folder:
            count += sum(
                1
                for n in names
                if not n.startswith(".") and _is_nifti(n, extensions) and not is_label_path(os.path.join(parent, n))
            )
    return count


def _without_labels(candidates: Sequence[str], source: str) -> list[str]:
    files = [p for p in candidates if not is_label_path(p)]
    skipped = len(candidates) - len(files)
    if skipped:
        logger.info(f"{source}: {skipped} label mask(s) or earlier output(s) left out of the inputs.")
    return files


def prediction_path(image_path: str | os.PathLike, output_dir: str | os.PathLike, postfix: str, ext: str) -> str:
    """``output_dir/<image name without extension>_<postfix><ext>``.

    ``sub-01_T1w.nii.gz`` with postfix ``seg`` and ext ``.nii.gz`` gives ``sub-01_T1w_seg.nii.gz``;
    a folder input (a DICOM series) contributes its folder name.
    """
    name = os.path.basename(os.path.normpath(os.fspath(image_path)))
    for known in (*NIFTI_EXTENSIONS, ".dcm", ".mha", ".mhd", ".nrrd"):
        if name.lower().endswith(known):
            name = name[: -len(known)]
            break
    ext = ext if not ext or ext.startswith(".") else f".{ext}"
    return os.path.join(os.fspath(output_dir), f"{name}_{postfix}{ext}" if postfix else f"{name}{ext}")
