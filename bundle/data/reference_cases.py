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
"""Real images with lesion masks from a package index: the five cases of the pyradiomics 3.1.0 sdist.

The source archive of pyradiomics 3.1.0 on PyPI ships, in ``data/``, five real scans with a
lesion mask each, as gzip NRRD (LPS, mask on the image's grid; pyradiomics' own test cases):

=========  ========  ===========================  ==========================  =======================
case       modality  voxels                       spacing (mm)                lesion
=========  ========  ===========================  ==========================  =======================
lung1      CT (HU)   512 x 512 x 48               0.57 x 0.57 x 5.0           nodule, 837 voxels
lung2      CT (HU)   512 x 512 x 61               0.63 x 0.63 x 5.0           tumour, 24,644 voxels
brain1     MR        256 x 256 x 25               0.78 x 0.78 x 6.5           enhancing, 4,137 voxels
brain2     MR        256 x 256 x 23               0.78 x 0.78 x 6.5           enhancing, 453 voxels
breast1    MR        45 x 120 x 21                0.66 x 0.66 x 2.1           143 voxels
=========  ========  ===========================  ==========================  =======================

:func:`fetch_reference_cases` downloads the archive once (it is a package file of the index, the
only place data may come from here), checks its sha256, and unpacks the ten NRRD files into a
cache folder. ``pip download pyradiomics==3.1.0`` cannot be used: pip refuses the archive because
its ``pyproject.toml`` says version 3.0.1a1; the file is fetched by its index URL instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from bundle.utils.errors import DatasetError

__all__ = [
    "PYRADIOMICS_ARCHIVE",
    "PYRADIOMICS_SHA256",
    "PYRADIOMICS_URL",
    "REFERENCE_CASES",
    "default_cache_dir",
    "fetch_reference_cases",
]

PYRADIOMICS_ARCHIVE = "pyradiomics-3.1.0.tar.gz"
PYRADIOMICS_URL = (
    "https://files.pythonhosted.org/packages/03/c1/"
    "20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/" + PYRADIOMICS_ARCHIVE
)
PYRADIOMICS_SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
#: the cases of the archive's ``data/`` folder
REFERENCE_CASES = ("lung1", "lung2", "brain1", "brain2", "breast1")


def default_cache_dir() -> Path:
    """``$GRCSF_CACHE_DIR``, else ``$XDG_CACHE_HOME/grcsf-bundle``, else ``~/.cache/grcsf-bundle``."""
    if os.environ.get("GRCSF_CACHE_DIR"):
        return Path(os.environ["GRCSF_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "grcsf-bundle"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, timeout_s: float) -> None:
    """``url`` into ``target`` through a temporary file, so that an interrupted download leaves nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            shutil.copyfileobj(response, out)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_reference_cases(
    cache_dir: str | os.PathLike | None = None,
    archive: str | os.PathLike | None = None,
    download: bool = True,
    timeout_s: float = 120.0,
) -> dict[str, dict[str, str]]:
    """The five real cases, unpacked into ``cache_dir`` (fetched and checked on first use).

    Args:
        cache_dir: folder of the archive and the unpacked files (default :func:`default_cache_dir`).
        archive: an already downloaded ``pyradiomics-3.1.0.tar.gz`` to use instead of the cache's.
        download: fetch the archive from the package index when it is not in the cache.
        timeout_s: network timeout of the download.

    Returns:
        ``{case: {"image": path, "label": path}}`` for :data:`REFERENCE_CASES`.

    Raises:
        DatasetError: the archive is missing (and ``download`` is False), cannot be fetched, or its
            sha256 differs from :data:`PYRADIOMICS_SHA256` (the file is then removed from the cache).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache / "pyradiomics-3.1.0-data"
    cases = {
        name: {"image": str(folder / f"{name}_image.nrrd"), "label": str(folder / f"{name}_label.nrrd")}
        for name in REFERENCE_CASES
    }
    if all(os.path.isfile(p) for case in cases.values() for p in case.values()):
        return cases
    source = Path(archive) if archive is not None else cache / PYRADIOMICS_ARCHIVE
    if not source.is_file():
        if archive is not None or not download:
            raise DatasetError(f"{source}: the pyradiomics 3.1.0 archive is not there.")
        try:
            _download(PYRADIOMICS_URL, source, timeout_s)
        except OSError as e:  # URLError, timeouts and refused connections are OSErrors
            raise DatasetError(f"{PYRADIOMICS_URL}: cannot be fetched ({e}).") from e
    digest = _sha256(source)
    if digest != PYRADIOMICS_SHA256:
        if archive is None:
            source.unlink()  # a corrupt download must not be found again
        raise DatasetError(f"{source}: sha256 {digest} is not the pyradiomics 3.1.0 archive's ({PYRADIOMICS_SHA256}).")
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f"pyradiomics-3.1.0/data/{Path(p).name}": Path(p) for case in cases.values() for p in case.values()}
    with tarfile.open(source, "r:gz") as tar:
        for member in tar.getmembers():
            if member.name in wanted and member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None  # a regular file
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".unpack-")
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(extracted, out)
                os.replace(tmp, wanted[member.name])
    missing = [str(p) for p in wanted.values() if not p.is_file()]
    if missing:
        raise DatasetError(f"{source}: the archive lacks {', '.join(missing)}.")
    return cases
