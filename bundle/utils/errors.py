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
"""What went wrong, said in one line: the bundle's error types and the command line's error report.

A problem with what the user gave (an input file, a data set folder, a checkpoint, a setting) is a
:class:`BundleError` whose message names the file and the problem. Everything else is a bug and
keeps its traceback.

MONAI wraps every error raised inside a transform chain in ``RuntimeError("applying transform
...")`` and every error of a config expression in ``RuntimeError("Failed to evaluate ...")``;
:func:`user_error` finds the user's problem inside such a chain and :func:`describe_error` the
first message that is not a wrapper.

:func:`bundle.utils.cli.install_cli_error_handler` turns these into the one-line report of the
command line.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from typing import Any

from monai.data import MetaTensor

__all__ = [
    "BundleError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "FolderRunError",
    "InferenceError",
    "InvalidVolumeError",
    "PackageConflictError",
    "TrainingError",
    "describe_error",
    "find_volume_error",
    "message_naming",
    "source_of",
    "user_error",
]


class BundleError(Exception):
    """A problem with what the user gave (file, folder, checkpoint, setting); the message names it."""


class InvalidVolumeError(BundleError, ValueError):
    """An input volume that the pipeline refuses; the message names the file and the problem."""


class CheckpointError(BundleError, ValueError):
    """A weights file that cannot be used as asked: unreadable, of another kind or architecture."""


class ConfigError(BundleError, ValueError):
    """Settings that contradict each other or the checkpoint, or an unknown value."""


class DatasetError(BundleError, ValueError):
    """A data set folder or data list that is not in the layout the loader reads."""


class InferenceError(BundleError, RuntimeError):
    """Inference on one input failed; the message starts with the input path."""


class FolderRunError(BundleError, RuntimeError):
    """A run over several inputs finished, but some of them failed (the report names them)."""


class PackageConflictError(BundleError, RuntimeError):
    """A bundle folder whose ``bundle/`` code differs from the package the process already runs
    (two versions of the bundle in one MONAI Label server); the message names both folders."""


class TrainingError(BundleError, RuntimeError):
    """Training stopped on a condition it cannot continue from (e.g. a NaN loss)."""


#: message starts of the RuntimeErrors MONAI wraps errors in (transform chains, config expressions)
_MONAI_WRAPPERS = ("applying transform", "Failed to evaluate")
#: errors about the user's files that Python raises itself (a path that does not exist, ...)
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first (each once)."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in out):
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def find_volume_error(exc: BaseException) -> BaseException | None:
    """The :class:`InvalidVolumeError` or :class:`FileNotFoundError` behind a MONAI transform error.

    Returns:
        the first such exception in the chain (``exc`` itself included), None if there is none.
    """
    for current in _chain(exc):
        if isinstance(current, (InvalidVolumeError, FileNotFoundError)):
            return current
    return None


def user_error(exc: BaseException) -> BaseException | None:
    """The first problem of the user's making in the chain of ``exc``: a :class:`BundleError` or an
    OS error about a path (missing, existing, not a folder, no permission); None for a bug."""
    for current in _chain(exc):
        if isinstance(current, (BundleError, *_USER_OS_ERRORS)):
            return current
    return None


def describe_error(exc: BaseException) -> str:
    """The message of the first exception in the chain of ``exc`` that is not a MONAI wrapper: a
    problem of the user's making (:func:`user_error`) as its message, anything else (a bug) as
    ``"Type: message"``."""
    for current in _chain(exc):
        if not (isinstance(current, RuntimeError) and str(current).startswith(_MONAI_WRAPPERS)):
            if isinstance(current, (BundleError, *_USER_OS_ERRORS)):
                return str(current)
            return f"{type(current).__name__}: {current}"
    return f"{type(exc).__name__}: {exc}"


def message_naming(path: str, exc: BaseException) -> str:
    """The message of ``exc`` (:func:`describe_error`) prefixed with ``path`` unless it already names it."""
    message = describe_error(exc)
    return message if path in message else f"{path}: {message}"


def source_of(value: Any, key: Hashable | None = None) -> str:
    """The file a value came from, for messages: a path as given, a MetaTensor's file name, else
    ``<in-memory key>``."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, MetaTensor):
        name = value.meta.get("filename_or_obj")
        if name:
            return str(name)
    return f"<in-memory {key if key is not None else 'volume'}>"
