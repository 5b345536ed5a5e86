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
"""Support of tests/integration/test_monailabel.py: the MONAI Label environment, its sample app and its server.

- :func:`ensure_venv` builds (once) and returns the virtual environment of
  ``requirements-monailabel.txt``: a cache folder ``~/.cache/grcsf-bundle/monailabel-venv-<hash>``
  (about 2.3 GB; outside pytest's temporary folders, so that it is built once per machine) named
  by the hash of the requirements, the Python version and :data:`BUILD_VERSION`, built under a
  file lock so that concurrent runs wait for one build, and marked complete only at the end (an
  interrupted build is removed and redone). ``GRCSF_CACHE_DIR`` moves the cache.
- :func:`download_sample_app` copies the ``monaibundle`` sample app out of the installed
  ``monailabel`` package with its own CLI (``monailabel apps --download``); nothing is fetched.
- :class:`MonaiLabelServer` starts ``monailabel start_server`` on 127.0.0.1 in its own process
  group, waits for ``/info/`` with a deadline and stops the whole group.

**The torchvision stand-in.** The lock installs the CPU build of torch and no torchvision:
PyPI's torchvision wheels link the CUDA libraries of the CUDA torch build (``libtorch_cuda.so``),
so beside a CPU torch ``import torchvision`` fails (``operator torchvision::nms does not exist``).
monailabel 0.8.5 imports ``from torchvision.utils import make_grid, save_image`` at module level
in ``monailabel/transform/post.py``, only for ``DumpImagePrediction2Dd``, a debugging transform of
the pathology apps; the ``monaibundle`` app imports that module (through
``monailabel.tasks.infer.bundle``), so without any ``torchvision`` the server does not start.
After the install, :func:`write_torchvision_stand_in` writes a two-file package ``torchvision``
into the environment: ``__version__ = "0.0.0"`` (MONAI's ``optional_import`` with a minimum
version treats it as absent) and ``utils.make_grid`` / ``utils.save_image`` that raise
``NotImplementedError`` if anything ever calls them. Nothing on the bundle's paths does (server
start, /infer, /train, /datastore, /scoring). The stand-in is no part of the requirements hash;
:data:`BUILD_VERSION` is, so changing it rebuilds cached environments.

Run as a script it builds the environment and prints its path, versions, build time and size
(``python tests/integration/monailabel_support.py``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements-monailabel.txt"
#: bump when the build steps change, so that cached environments are rebuilt
#: (2: the lean CPU lock and the torchvision stand-in)
BUILD_VERSION = "2"
DEFAULT_CACHE_DIR = Path(os.environ.get("GRCSF_CACHE_DIR", Path.home() / ".cache" / "grcsf-bundle"))
COMPLETE_MARKER = ".grcsf-venv-complete.json"


class MonaiLabelSetupError(RuntimeError):
    """The MONAI Label environment or server could not be set up; the message says which step failed."""


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return text[-chars:]


#: the two files of the torchvision stand-in (see the module docstring)
TORCHVISION_STAND_IN = {
    "__init__.py": (
        '"""Stand-in for torchvision in the CPU-only MONAI Label environment of the GRCSF bundle tests.\n\n'
        "Not the real package: written by tests/integration/monailabel_support.py because PyPI's torchvision\n"
        "needs the CUDA build of torch, and monailabel.transform.post imports torchvision.utils at module\n"
        "level. Version 0.0.0: MONAI's optional_import(torchvision, min_version) treats it as absent.\n"
        '"""\n\n__version__ = "0.0.0"\n'
    ),
    "utils.py": (
        '"""make_grid and save_image for monailabel.transform.post; they raise if called."""\n\n\n'
        "def _unavailable(*args, **kwargs):\n"
        '    raise NotImplementedError("torchvision is not installed in this environment (a stand-in module)")\n\n\n'
        "make_grid = _unavailable\nsave_image = _unavailable\n"
    ),
}


def write_torchvision_stand_in(python: Path, log: Path, deadline: float, env: dict[str, str]) -> Path:
    """Write :data:`TORCHVISION_STAND_IN` into the site-packages of the environment of ``python``."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    remaining = max(1.0, deadline - time.monotonic())
    result = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=remaining, env=env, check=False
    )
    if result.returncode != 0:
        raise MonaiLabelSetupError(f"site-packages of {python}: {result.stderr[-2000:]}")
    package = Path(result.stdout.strip()) / "torchvision"
    if package.exists():
        raise MonaiLabelSetupError(f"{package} exists: the lock must not install torchvision (see its header)")
    package.mkdir()
    for name, text in TORCHVISION_STAND_IN.items():
        (package / name).write_text(text)
    with open(log, "a") as out:
        out.write(f"\nwrote the torchvision stand-in {package}\n")
    return package


def folder_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed), as ``du`` counts them roughly."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            if not file.is_symlink():
                total += file.stat().st_size
    return total


def venv_key(requirements: Path = REQUIREMENTS) -> str:
    """16 hex digits naming an environment: the pinned requirements, Python version, build steps.

    Comments and blank lines do not count, so that editing the explanations does not rebuild.
    """
    pins = sorted(
        line.split("#", 1)[0].strip() for line in requirements.read_text().splitlines() if line.split("#", 1)[0].strip()
    )
    digest = hashlib.sha256()
    digest.update("\n".join(pins).encode())
    digest.update(f"|{sys.version_info.major}.{sys.version_info.minor}|{BUILD_VERSION}".encode())
    return digest.hexdigest()[:16]


def _run_logged(cmd: list[str], log: Path, deadline: float, step: str, env: dict[str, str] | None = None) -> None:
    """Run ``cmd`` appending its output to ``log``; raise MonaiLabelSetupError on failure or timeout."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise MonaiLabelSetupError(f"{step}: no time left (see {log}).")
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=remaining, env=env, check=False)
        except subprocess.TimeoutExpired as e:
            raise MonaiLabelSetupError(f"{step}: timed out after {remaining:.0f} s; log {log}:\n{_tail(log)}") from e
    if result.returncode != 0:
        raise MonaiLabelSetupError(f"{step}: exit code {result.returncode}; log {log}:\n{_tail(log)}")


def _acquire(lock_file: Any, deadline: float, what: str) -> None:
    """Take an exclusive flock, polling until ``deadline`` (another run may be building)."""
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError as err:
            if time.monotonic() > deadline:
                raise MonaiLabelSetupError(
                    f"timed out waiting for the lock of {what} (another build running?)"
                ) from err
            time.sleep(2.0)


def ensure_venv(
    requirements: Path = REQUIREMENTS, cache_dir: Path = DEFAULT_CACHE_DIR, timeout_s: float = 1500.0
) -> Path:
    """The MONAI Label virtual environment of ``requirements``, built on first use.

    Build: ``python -m venv``, then ``pip install --no-deps -r requirements`` (a complete lock:
    nothing else is resolved, so no other torch is pulled in), then the torchvision stand-in
    (module docstring), then an import check of monailabel's server-side bundle tasks, monai and
    torch. The completion marker records the versions, the build time and the size.

    Returns:
        the environment folder (``bin/python``, ``bin/monailabel``).

    Raises:
        MonaiLabelSetupError: a build step failed or ran past ``timeout_s`` (message with the log tail).
    """
    key = venv_key(requirements)
    venv = cache_dir / f"monailabel-venv-{key}"
    marker = venv / COMPLETE_MARKER
    if marker.is_file():
        return venv
    deadline = time.monotonic() + timeout_s
    cache_dir.mkdir(parents=True, exist_ok=True)
    log = cache_dir / f"monailabel-venv-{key}.log"
    with open(cache_dir / f"monailabel-venv-{key}.lock", "w") as lock:
        _acquire(lock, deadline, venv)
        if marker.is_file():  # built by the run we waited for
            return venv
        if venv.exists():  # left by an interrupted build
            shutil.rmtree(venv)
        log.write_text(f"building {venv} from {requirements}\n")
        start = time.monotonic()
        python = str(venv / "bin" / "python")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        _run_logged([sys.executable, "-m", "venv", str(venv)], log, deadline, "python -m venv", env)
        _run_logged(
            [
                python,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
                str(requirements),
            ],
            log,
            deadline,
            "pip install -r requirements-monailabel.txt",
            env,
        )
        write_torchvision_stand_in(Path(python), log, deadline, env)
        check = (
            "import json, monai, monailabel, numpy, torch, torchvision; "
            "import monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle, monailabel.tasks.scoring.epistemic_v2; "
            "print(json.dumps({'monailabel': monailabel.__version__, 'monai': monai.__version__, "
            "'torch': torch.__version__, 'torchvision': torchvision.__version__, 'numpy': numpy.__version__}))"
        )
        _run_logged([python, "-c", check], log, deadline, "import check", env)
        versions = json.loads(log.read_text().strip().splitlines()[-1])
        seconds = round(time.monotonic() - start, 1)
        size_gb = round(folder_size(venv) / 1e9, 2)
        marker.write_text(json.dumps({**versions, "build_seconds": seconds, "size_gb": size_gb, "key": key}) + "\n")
    return venv


def venv_info(venv: Path) -> dict[str, Any]:
    """Versions and build time recorded when the environment was built."""
    return json.loads((venv / COMPLETE_MARKER).read_text())


def venv_env(venv: Path, threads: int | None = None) -> dict[str, str]:
    """Environment variables of a process run "inside" the activated venv (no PYTHONPATH leaks in).

    ``threads``: the CPU threads of torch (``OMP_NUM_THREADS``), None for torch's choice (one per
    core). On a machine shared with other jobs one thread is the predictable choice: OpenMP threads
    that wait for a busy core spin, and the test measured a network's forward pass 8 times slower
    with 2 threads than with 1 on a 2-core machine with one core taken.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
    return env


def download_sample_app(venv: Path, output_dir: Path, name: str = "monaibundle", timeout_s: float = 120.0) -> Path:
    """Copy a sample app out of the installed monailabel (``monailabel apps --download``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(venv / "bin" / "monailabel"), "apps", "--download", "--name", name, "--output", str(output_dir)]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=venv_env(venv), cwd=output_dir, check=False
    )
    app = output_dir / name
    if result.returncode != 0 or not (app / "main.py").is_file():
        raise MonaiLabelSetupError(
            f"{' '.join(cmd)} failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return app


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout_s: float) -> tuple[bytes, str]:
    """GET ``url``; returns (body, content type)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read(), response.headers.get("Content-Type", "")


def http_get_json(url: str, timeout_s: float) -> Any:
    return json.loads(http_get(url, timeout_s)[0])


def http_post(url: str, timeout_s: float) -> tuple[bytes, str]:
    """POST an empty form to ``url``; returns (body, content type). HTTP errors carry the server's detail."""
    request = urllib.request.Request(
        url, data=b"", method="POST", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raise MonaiLabelSetupError(f"POST {url}: HTTP {e.code}: {e.read()[:2000]!r}") from e


def _summary(body: bytes, content_type: str) -> Any:
    """What a response body is, for the transcript: its JSON, or its size and type."""
    if "json" in content_type:
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            pass
    return f"<{len(body)} bytes, {content_type or 'no content type'}>"


class MonaiLabelClient:
    """HTTP calls to a MONAI Label server, each recorded (request and response) in :attr:`transcript`.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.transcript: list[dict[str, Any]] = []

    def call(
        self,
        method: str,
        path: str,
        timeout_s: float,
        body: bytes | None = None,
        content_type: str | None = None,
        shown_body: Any = None,
        note: str = "",
    ) -> tuple[int, bytes, str]:
        """One request; returns (HTTP status, body, content type). Error statuses are returned, not raised."""
        headers = {"Content-Type": content_type} if content_type else {}
        request = urllib.request.Request(f"{self.url}{path}", data=body, method=method, headers=headers)
        start = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status, data, kind = response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, data, kind = e.code, e.read(), e.headers.get("Content-Type", "")
        self.transcript.append(
            {
                "request": f"{method} {path}",
                "body": shown_body,
                "status": status,
                "response": _summary(data, kind),
                "seconds": round(time.monotonic() - start, 1),
                "note": note,
            }
        )
        return status, data, kind

    def annotate(self, text: str) -> None:
        """Add ``text`` to the note of the last recorded call (what the test found in its response)."""
        last = self.transcript[-1]
        last["note"] = f"{last['note']}\n\n{text}".strip()

    def get_json(self, path: str, timeout_s: float = 30.0, note: str = "") -> Any:
        status, data, _ = self.call("GET", path, timeout_s, note=note)
        if status != 200:
            raise MonaiLabelSetupError(f"GET {path}: HTTP {status}: {data[:2000]!r}")
        return json.loads(data)

    def post_json(self, path: str, payload: dict[str, Any] | None, timeout_s: float = 60.0, note: str = "") -> Any:
        """POST a JSON body (MONAI Label's ``params`` of /train and /scoring); returns the JSON answer."""
        body = json.dumps(payload or {}).encode("utf-8")
        status, data, _ = self.call("POST", path, timeout_s, body, "application/json", payload, note)
        if status != 200:
            raise MonaiLabelSetupError(f"POST {path}: HTTP {status}: {data[:2000]!r}")
        return json.loads(data)

    def infer(self, model: str, image_id: str, timeout_s: float = 600.0, note: str = "") -> bytes:
        """``POST /infer/<model>?image=<id>&output=image``: the label volume (gzipped NIfTI bytes)."""
        path = f"/infer/{model}?image={image_id}&output=image"
        status, data, kind = self.call("POST", path, timeout_s, b"", "application/x-www-form-urlencoded", note=note)
        if status != 200 or data[:2] != b"\x1f\x8b":
            raise MonaiLabelSetupError(f"POST {path}: HTTP {status} ({kind}): {data[:2000]!r}")
        return data

    def put_label(self, image_id: str, label: Path, tag: str = "final", timeout_s: float = 60.0, note: str = "") -> Any:
        """``PUT /datastore/label?image=<id>&tag=<tag>`` with the file as multipart ``label`` (Submit Label)."""
        boundary = f"grcsf-{os.getpid()}-{time.monotonic_ns()}"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n'.encode(),
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="label"; filename="{label.name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + label.read_bytes()
            + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        path = f"/datastore/label?image={image_id}&tag={tag}"
        shown = {"params": "{}", "label": f"<{label.name}, {label.stat().st_size} bytes>"}
        status, data, _ = self.call(
            "PUT", path, timeout_s, b"".join(parts), f"multipart/form-data; boundary={boundary}", shown, note
        )
        if status != 200:
            raise MonaiLabelSetupError(f"PUT {path}: HTTP {status}: {data[:2000]!r}")
        return json.loads(data)

    def wait_task(self, kind: str, timeout_s: float, poll_s: float = 3.0) -> dict[str, Any]:
        """Poll ``GET /<kind>/`` (train, scoring) until the latest task ends; returns it (DONE or ERROR).

        Only the last poll is kept in the transcript.
        """
        deadline = time.monotonic() + timeout_s
        polls = 0
        while True:
            status, data, _ = self.call("GET", f"/{kind}/", 30.0)
            polls += 1
            task = json.loads(data) if status == 200 else {}
            done = task.get("status") in ("DONE", "ERROR", "STOPPED")
            if not done:
                self.transcript.pop()
            if done:
                self.transcript[-1]["note"] = f"polled {polls} times until the task ended"
                return task
            if time.monotonic() > deadline:
                raise MonaiLabelSetupError(f"{kind} did not end within {timeout_s:.0f} s: {task}")
            time.sleep(poll_s)

    def write_transcript(self, path: Path, title: str) -> Path:
        """The recorded calls as Markdown (one section per call)."""
        lines = [f"# {title}", ""]
        for i, entry in enumerate(self.transcript, start=1):
            lines += [f"## {i}. `{entry['request']}` -> HTTP {entry['status']} ({entry['seconds']} s)", ""]
            if entry["note"]:
                lines += [entry["note"], ""]
            if entry["body"] is not None:
                lines += ["Request body:", "", "```json", json.dumps(entry["body"], indent=2), "```", ""]
            lines += ["Response:", "", "```json", json.dumps(entry["response"], indent=2, default=str), "```", ""]
        path.write_text("\n".join(lines))
        return path


class MonaiLabelServer:
    """``monailabel start_server`` of ``app_dir`` on 127.0.0.1, in its own process group.

    Args:
        venv: the MONAI Label environment (:func:`ensure_venv`).
        app_dir: the app folder (e.g. the ``monaibundle`` sample app with the bundle in ``model/<name>``).
        studies: the studies folder (NIfTI volumes).
        conf: ``--conf`` pairs, e.g. ``{"models": "grcsf_lesion_segmentation"}``.
        log_path: where the server's output goes.
        workdir: the server's working folder and home of its session files.
        threads: CPU threads of torch in the server and its task processes (:func:`venv_env`).
    """

    def __init__(
        self,
        venv: Path,
        app_dir: Path,
        studies: Path,
        conf: dict[str, str],
        log_path: Path,
        workdir: Path,
        threads: int | None = None,
    ) -> None:
        self.venv, self.app_dir, self.studies, self.conf = venv, app_dir, studies, dict(conf)
        self.log_path, self.workdir, self.threads = log_path, workdir, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [
            str(self.venv / "bin" / "monailabel"),
            "start_server",
            "--app",
            str(self.app_dir),
            "--studies",
            str(self.studies),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        for key, value in self.conf.items():
            cmd += ["--conf", key, value]
        return cmd

    def start(self, timeout_s: float = 300.0) -> dict[str, Any]:
        """Start the server and wait until ``/info/`` answers; returns that answer.

        Raises:
            MonaiLabelSetupError: the server exited or did not answer within ``timeout_s`` (with its log).
        """
        env = venv_env(self.venv, self.threads)
        # everything the server writes stays in the test's folders; no background jobs
        env.update(
            MONAI_LABEL_SESSION_PATH=str(self.workdir / "sessions"),
            MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
            MONAI_LABEL_AUTO_UPDATE_SCORING="false",
            MONAI_LABEL_TRACKING_ENABLED="false",
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,  # its own process group: stop() ends uvicorn and its children
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MonaiLabelSetupError(
                    f"MONAI Label server exited with {self.process.returncode}; log {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            try:
                return http_get_json(f"{self.url}/info/", timeout_s=10.0)
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                time.sleep(1.0)
        self.stop()
        raise MonaiLabelSetupError(
            f"MONAI Label server did not answer /info/ within {timeout_s:.0f} s; log {self.log_path}:\n"
            f"{_tail(self.log_path)}"
        )

    def start_expecting_refusal(self, timeout_s: float = 300.0) -> str:
        """Start the server when it should refuse to start; returns its log once it has exited.

        Raises:
            MonaiLabelSetupError: it answered ``/info/`` (it started) or did not exit within ``timeout_s``.
        """
        try:
            info = self.start(timeout_s=timeout_s)
        except MonaiLabelSetupError as e:
            if str(e).startswith("MONAI Label server exited with"):
                return self.log_path.read_text(errors="replace")
            raise
        self.stop()
        raise MonaiLabelSetupError(f"the server started although it should have refused: {json.dumps(info)[:2000]}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout_s``; safe to call twice."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout_s)
        except ProcessLookupError:
            pass

    def log_tail(self, chars: int = 4000) -> str:
        return _tail(self.log_path, chars)


if __name__ == "__main__":
    start = time.monotonic()
    path = ensure_venv()
    print(path)
    print(json.dumps(venv_info(path)), f"(ready after {time.monotonic() - start:.0f} s)")
