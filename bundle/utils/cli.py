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
"""The command line's error report: one line for the user's problems, tracebacks for bugs.

:func:`install_cli_error_handler` is the first entry of every workflow's ``initialize``: a
``python -m monai.bundle`` run that fails on a problem of the user's making (see
:func:`bundle.utils.errors.user_error`) ends with one line on stderr, ``error: <file>: <problem>``,
and exit status 1; the full traceback goes to a log file named in that line, or to stderr with
``--debug true``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from .errors import user_error
from .flags import as_flag

__all__ = ["CLI_MAIN_MODULES", "install_cli_error_handler", "is_bundle_cli"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


#: ``__main__`` modules of the command lines that run the workflows: MONAI's bundle command line
#: (``python -m monai.bundle``, ``torchrun -m monai.bundle``) and MONAI Label's task process
#: (``python -m monailabel.interfaces.utils.app -m train``, whose last 20 output lines are what
#: ``GET /train/`` shows)
CLI_MAIN_MODULES = ("monai.bundle.__main__", "monai.bundle", "monailabel.interfaces.utils.app")


def is_bundle_cli() -> bool:
    """Whether this process is a command line that runs a workflow (see :data:`CLI_MAIN_MODULES`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec is not None and spec.name in CLI_MAIN_MODULES


def _write_traceback(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> str | None:
    """The full traceback in a new file of the temporary folder; its path, None if it cannot be written."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        fd, path = tempfile.mkstemp(prefix=f"grcsf-error-{stamp}-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(" ".join(sys.argv) + "\n\n")
            traceback.print_exception(kind, value, tb, file=f)
    except OSError:
        return None
    return path


def install_cli_error_handler(debug: Any = False, force: bool = False) -> bool:
    """Report user problems of a command-line run as one line; keep tracebacks for bugs.

    Installs a ``sys.excepthook`` that, for an uncaught exception whose chain holds a
    :func:`user_error`, prints ``error: <message>`` as the last line on stderr (the traceback goes
    to a log file named at the end of that line) and leaves the exit status at 1; any other
    exception, and every exception with ``debug``, prints Python's usual traceback.

    It acts only in the command lines of :data:`CLI_MAIN_MODULES` (``python -m monai.bundle ...``
    and MONAI Label's training process, so that ``GET /train/`` ends with the one line): a process
    that runs the configs itself (the MONAI Label server, tests, notebooks) keeps its own error
    handling.

    Args:
        debug: the ``debug`` switch of the configs (a bool or a command-line string).
        force: install also outside the bundle command line (for tests of the handler).

    Returns:
        whether the handler was installed.
    """
    if not (force or is_bundle_cli()):
        return False
    show_traceback = as_flag(debug)
    default_hook = sys.__excepthook__

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        problem = None if show_traceback else user_error(value)
        if problem is None:
            default_hook(kind, value, tb)
            return
        log = _write_traceback(kind, value, tb)
        where = f" (traceback: {log}; --debug true prints it)" if log else ""
        sys.stderr.flush()
        sys.stdout.flush()
        print(f"error: {_one_line(str(problem))}{where}", file=sys.stderr, flush=True)

    sys.excepthook = hook
    return True
