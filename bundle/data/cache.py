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
"""Volumes kept on disk between epochs and runs: packed MetaTensors and a disk-cached transform.

- :class:`PackMetaTensors` / :func:`unpack_meta_tensors` -- MetaTensors as ``torch.load(weights_only=True)``-safe dicts.
- :func:`transform_fingerprint` -- a process-independent hash of transforms' settings.
- :func:`record_fingerprint` -- a hash of a record and of the contents of every file it names.
- :class:`DiskCachedTransform` -- a deterministic volume transform (preprocessing + residual maps)
  whose results persist in a folder, keyed by the record, the contents of its files, the
  transform and the files it depends on (the MAE).

A disk cache keyed by file paths alone serves stale data when a file changes in place, e.g. a
label corrected in MONAI Label and saved again as ``labels/final/<id>.nii.gz``: every key here
includes the sha256 of the bytes of each file a record names.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bundle.utils.io import file_digest
from monai.data import MetaTensor, PersistentDataset
from monai.transforms import Compose, Transform

__all__ = [
    "DiskCachedTransform",
    "PackMetaTensors",
    "content_digest",
    "record_fingerprint",
    "transform_fingerprint",
    "unpack_meta_tensors",
]

#: sha256 of files already read by this process, by (path, size, mtime_ns, ctime_ns, inode): a
#: validation epoch does not read its volumes twice, and any write to a file changes its ctime
#: (which, unlike the mtime, cannot be set back), so an edited file is read again
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def content_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of the bytes of a file, or of a folder's files (names and contents, sorted).

    A folder is e.g. a DICOM series. Digests are remembered for the process by the file's size,
    modification and change times and inode, so an unchanged file is read once.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        digest = hashlib.sha256()
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                file = os.path.join(root, name)
                digest.update(f"{os.path.relpath(file, path)}:{content_digest(file)}\n".encode("utf-8"))
        return digest.hexdigest()
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path)
    return _DIGESTS[key]


def _named_paths(value: Any) -> list[str]:
    """The strings (and path objects) in ``value`` (nested lists, tuples, dicts) that name an existing
    file or folder."""
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        return [path] if path and os.path.exists(path) else []
    if isinstance(value, Mapping):
        return [p for v in value.values() for p in _named_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _named_paths(v)]
    return []


def record_fingerprint(record: Mapping[str, Any]) -> bytes:
    """Hex sha256 (bytes, as MONAI's ``PersistentDataset(hash_func=...)`` takes it) of a record and of
    the contents of every file or folder it names (:func:`content_digest`).

    Editing a file in place (same path, same size, even with its modification time set back)
    changes the fingerprint; a record whose files are unchanged keeps it across processes.
    """
    entries = {str(k): _describe(v) for k, v in sorted(record.items(), key=lambda kv: str(kv[0]))}
    files = {key: [f"{p}:{content_digest(p)}" for p in _named_paths(value)] for key, value in record.items()}
    text = json.dumps({"record": entries, "files": {str(k): v for k, v in files.items() if v}}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("utf-8")


class DiskCachedTransform(Transform):
    """A deterministic dict transform whose results are kept on disk, across epochs and runs.

    Residual maps cost ``2 x num_passes`` MAE forward passes per slice, far more than a training
    epoch on the resulting slices; this transform computes them once per volume. Results live in
    ``cache_dir`` in the format of :class:`bundle.data.slices.VolumeSliceDataset`'s disk cache
    (:class:`PackMetaTensors`), keyed by the record and the contents of the files it names
    (:func:`record_fingerprint`: a label corrected in place is read again), the transform's
    settings (:func:`transform_fingerprint`) and the sha256 of ``depends_on`` files: a retrained
    MAE checkpoint at the same path must not hit stale maps, and the fingerprint only sees the
    transforms' public settings, not network weights.

    Wrap it in a memory cache (``VolumeSliceDataset(cache="memory")``, ``CacheDataset``) for fast
    slice access; use it alone (``monai.data.Dataset``) to read each volume from disk when needed.

    Args:
        transform: deterministic transform, record -> dict of channel-first tensors/MetaTensors.
        cache_dir: cache folder (created when missing); None computes without caching.
        depends_on: files whose content the results depend on (missing files are ignored:
            the transform itself reports them when it needs them).

    Returns (when called on a record): the transform's output; MetaTensors keep their affine and
    ``filename_or_obj``/``space`` meta entries only.
    """

    def __init__(
        self, transform: Callable, cache_dir: str | os.PathLike | None, depends_on: Sequence[str | os.PathLike] = ()
    ) -> None:
        self.transform = transform
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.depends_on = [str(p) for p in depends_on]
        digests = [f"{p}:{content_digest(p)}" for p in self.depends_on if os.path.isfile(p)]
        self._files_digest = hashlib.sha256("\n".join(digests).encode("utf-8")).hexdigest()
        # flatten: PersistentDataset caches up to the first random or nested Compose, so a nested
        # Compose would cache only the raw record and recompute everything on every call
        self._pipeline = Compose([transform, PackMetaTensors()]).flatten()

    def _hash_transform(self, transforms: Sequence[Any]) -> bytes:
        combined = transform_fingerprint(transforms) + self._files_digest.encode("utf-8")
        return hashlib.sha256(combined).hexdigest().encode("utf-8")

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        # the global RNG state must not depend on cache hits: computing the maps builds the MAE
        # (random init before its weights are loaded), which would otherwise change the
        # segmentation network's init and the slice sampling of a run with a cold cache
        devices = None if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            if self.cache_dir is None:
                return dict(self.transform(data))
            # a one-item PersistentDataset: MONAI's cache look-up, atomic write, corrupt-file recovery
            dataset = PersistentDataset(
                [data],
                self._pipeline,
                cache_dir=self.cache_dir,
                hash_func=record_fingerprint,
                hash_transform=self._hash_transform,
            )
            return unpack_meta_tensors(dataset[0])


_PACKED = "__meta_tensor__"


_PACKED_META = ("filename_or_obj", "space")


class PackMetaTensors(Transform):
    """Turn the MetaTensors of a dict into ``torch.load(weights_only=True)``-safe dicts.

    ``{key: MetaTensor}`` -> ``{key: {"__meta_tensor__": tensor, "affine": tensor, "meta": {...}}}``
    keeping the affine and the ``filename_or_obj``/``space`` meta entries (as strings), which is
    what the slices need; :func:`unpack_meta_tensors` reverses it.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out: dict[Hashable, Any] = {}
        for key, value in data.items():
            if isinstance(value, MetaTensor):
                meta = {name: str(value.meta[name]) for name in _PACKED_META if name in value.meta}
                out[key] = {_PACKED: value.as_tensor(), "affine": value.affine.clone(), "meta": meta}
            else:
                out[key] = value
        return out


def unpack_meta_tensors(data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
    """Reverse :class:`PackMetaTensors`; other entries are returned unchanged."""
    out: dict[Hashable, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and _PACKED in value:
            out[key] = MetaTensor(value[_PACKED], affine=value["affine"], meta=dict(value["meta"]))
        else:
            out[key] = value
    return out


def _describe(obj: Any, depth: int = 0) -> Any:
    """A JSON-able, process-independent description of a transform's configuration."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, (torch.dtype, np.dtype, type)):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [_describe(o, depth + 1) for o in obj]
    if isinstance(obj, Mapping):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if depth > 4 or not hasattr(obj, "__dict__"):
        return name
    # public attributes only: private ones hold run-time state (readers, trace buffers, caches)
    public = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return {"type": name, **_describe(public, depth + 1)}


def transform_fingerprint(transforms: Sequence[Any]) -> bytes:
    """Hex sha256 of the transforms' classes and public settings, for PersistentDataset file names.

    MONAI's ``pickle_hashing`` of the transforms changes once they have been used (image readers
    keep state), which would make every run miss the cache; this fingerprint does not.
    """
    text = json.dumps(_describe(list(transforms)), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("utf-8")
