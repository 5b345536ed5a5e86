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
"""Files written so that nothing is half-written or silently replaced.

- :func:`atomic_output` -- a temporary file next to the target, moved onto it only on success.
- :func:`write_json` / :func:`write_csv` / :func:`write_text` -- JSON (strict: NaN becomes ``null``) and CSV through it.
- :func:`json_safe` -- the one conversion of results (numpy scalars, NaN) into strict JSON values.
- :func:`file_digest` -- sha256 of a file's bytes, for cache keys and checkpoint records.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["atomic_output", "file_digest", "json_safe", "write_csv", "write_json", "write_text"]


@contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` with ``os.replace``.

    The temporary name ends with the final file name, so writers that pick the format from the
    extension (nibabel: ``.nii.gz``) see the right one. On error the temporary file is removed and
    ``path`` is untouched.

    Args:
        path: the final file.
        overwrite: replace an existing ``path``; when False an existing file raises FileExistsError
            before anything is written.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; set overwrite=true to replace it.")
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{name}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates the file 0600; outputs get the permissions any new file would get
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(text: str, path: str | os.PathLike, overwrite: bool = False) -> str:
    """Write ``text`` (UTF-8, ``\n`` line ends) atomically; returns the path."""
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return os.fspath(path)


def write_json(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> str:
    """Write ``obj`` as indented JSON atomically (NaN becomes ``null``); returns the path."""
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "w") as f:
        json.dump(json_safe(obj), f, indent=2)
        f.write("\n")
    return os.fspath(path)


def json_safe(obj: Any) -> Any:
    """``obj`` with strict-JSON values: NaN/inf -> None, numpy scalars and arrays -> Python values,
    tuples -> lists, paths -> strings; dict keys become strings."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    return obj


def write_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], path: str, overwrite: bool = False) -> str:
    """Write ``rows`` (missing entries empty) as CSV atomically; returns the path."""
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
    return path


def file_digest(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
