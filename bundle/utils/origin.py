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
"""Which copy of the ``bundle`` package a workflow runs: never another version's code in silence.

An exported bundle folder carries its code (``<bundle_root>/bundle/``), and its configs import it
as ``bundle``. A process imports a package once: MONAI Label serves several bundles in one server
process and, between bundles, unloads only a package named ``scripts`` (the zoo's convention), so
a second GRCSF bundle in the same server would run the first one's code. :func:`models_dir`, the
configs' ``ckpt_dir`` (every workflow, and MONAI Label's inference and training, resolve it),
checks first that the package this process runs is the bundle folder's own, or an identical copy
(same files, same contents), and otherwise refuses with a :class:`PackageConflictError` naming
both folders.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from .errors import PackageConflictError

__all__ = ["PACKAGE_DIR", "check_package_origin", "models_dir", "package_digest"]

#: the folder of the ``bundle`` package this process runs
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def package_digest(folder: str | os.PathLike) -> str:
    """sha256 (hex) of a package folder's Python files: their paths relative to it and their bytes."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _running_digest() -> str:
    # the package this process runs, hashed once (its files are what was imported at start)
    return package_digest(PACKAGE_DIR)


def check_package_origin(bundle_root: str | os.PathLike) -> None:
    """Refuse to run the configs of ``bundle_root`` with another copy's code.

    Nothing is checked when ``bundle_root`` has no ``bundle/`` package of its own (e.g. a run
    whose ``bundle_root`` is an output folder: the installed package serves it).

    Raises:
        PackageConflictError: ``<bundle_root>/bundle`` differs from the package this process
            runs (:data:`PACKAGE_DIR`); the message names both folders.
    """
    own = Path(bundle_root) / "bundle"
    if not (own / "__init__.py").is_file():
        return
    own = own.resolve()
    if own == PACKAGE_DIR or package_digest(own) == _running_digest():
        return
    raise PackageConflictError(
        f"{own}: the bundle's code differs from the GRCSF package this process already runs, {PACKAGE_DIR} "
        "(a process imports the package once; MONAI Label reloads only packages named 'scripts' between "
        "bundles): serve one version of the GRCSF bundle per MONAI Label server, or run from the bundle folder."
    )


def models_dir(bundle_root: str | os.PathLike, *parts: str) -> str:
    """``<bundle_root>/models[/<parts>...]``, the weights folder of a bundle, once
    :func:`check_package_origin` has accepted ``bundle_root``."""
    check_package_origin(bundle_root)
    return os.path.join(os.fspath(bundle_root), "models", *parts)
