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
"""One short run on one GPU that measures the bundle's speed targets (docs/speed.md, "Device suite").

GPU time is rented in short slots, so everything is in one command that, from a cold process on
one H100/H200, ends within ``--time-budget`` seconds (default 240), in phases:

1. ``requirements`` -- the Python packages it needs; missing ones stop it at once with one line
   naming them and the commands that bring them as wheels (:data:`REQUIREMENTS`);
2. ``cuda_tests`` -- ``pytest -m cuda`` on :data:`CUDA_TESTS` in a subprocess (the RCU's fused CUDA
   path against the CPU path, bf16 finite, TorchScript on CUDA equal to eager, residual maps on
   CUDA equal to the reference): pass / fail / skip counts;
3. ``setup`` -- the demo subject (generated once into ``--cache-dir``; ``--image``/``--label`` for
   another), the networks, the MAE and the pipelines of ``configs/inference.json``
   (:func:`bundle.tools.benchmark.prepare`);
4. ``maps_check`` -- batched against reference residual maps on a block of ``--check-slices``
   slices in float32, and the segmentation from both, for the shipped default and K = 5 random
   masks; the batched and the naive path timed on that block;
5. ``end_to_end`` -- the whole volume from the NIfTI file to the mask: GRCSF with the shipped
   default, GRCSF with K = 5 random masks and UNet++, one warm-up and the median of 3;
6. ``train`` -- the training config's own loop (its slice cache, DataLoader workers, network,
   AMP): slices per second and the share of each iteration spent waiting for data.

The JSON (``--output``) is rewritten after every phase, so a run cut short still leaves what it
measured; a phase that fails or overruns its share of the budget records its error and the
suite goes on. ``--scale full`` (default) is the issue's setting: paper-size GRCSF and UNet++,
ViT-Large MAE, the 1 mm subject (197 x 233 x 189), batch 16; ``--scale tiny`` the same phases
with the small presets on a 4 mm subject, what CI runs on the CPU. Examples::

    python scripts/device_suite.py --device cuda                      # on the GPU machine
    python scripts/device_suite.py --scale tiny --device cpu          # CI
    python scripts/device_suite.py --prepare                          # make the 1 mm subject (needs nilearn)

Exit status: 0 when every phase passed, 1 when one failed or overran, 3 when packages are missing.
"""

from __future__ import annotations

# Only the standard library at the top: the requirements are checked before anything else loads.
import argparse
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bundle.tools import BUNDLE_ROOT

__all__ = [
    "CUDA_TESTS",
    "PHASES",
    "REQUIREMENTS",
    "PhaseCheckError",
    "PhaseTimeoutError",
    "format_table",
    "main",
    "missing_requirements",
    "run_phase",
    "wheel_commands",
]

#: import name -> (pip requirement, requirements of it that a bare PyTorch image may lack). The
#: suite imports monai, nibabel, pydicom (the DICOM reader), pytorch-ignite, scipy and pytest;
#: fire is what ``python -m monai.bundle run`` needs for the workflows. Versions: those CI uses.
REQUIREMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "monai": ("monai==1.6.1", ()),
    "nibabel": ("nibabel==5.4.2", ("importlib-resources==7.1.0",) if sys.version_info < (3, 12) else ()),
    "pydicom": ("pydicom==3.0.2", ()),
    "ignite": ("pytorch-ignite==0.5.5", ()),
    "fire": ("fire==0.7.1", ("termcolor==3.3.0",)),
    "scipy": ("scipy==1.17.1", ()),
    "pytest": ("pytest==9.2.0", ("iniconfig==2.3.1", "pluggy==1.7.0", "pygments==2.21.0")),
}
#: needed only to generate the demo subject (the MNI-152 template ships with nilearn); run
#: ``--prepare`` on a connected machine and bring ``--cache-dir`` along instead
DEMO_REQUIREMENT = ("nilearn", "nilearn")

#: the files holding the tests marked ``cuda`` (a test checks that no other file has any)
CUDA_TESTS = ("tests/networks/test_grcsf_cuda.py", "tests/transforms/test_residual_maps_cuda.py")

PHASES = ("requirements", "cuda_tests", "setup", "maps_check", "end_to_end", "train")
#: each phase's share of the time left when it starts, relative to the phases after it
PHASE_WEIGHTS = {"cuda_tests": 0.20, "setup": 0.12, "maps_check": 0.15, "end_to_end": 0.30, "train": 0.23}
#: kept back for the last JSON and the table
RESERVE_S = 3.0
#: a phase that overruns its share by more than this is interrupted
GRACE_S = 5.0

SCALES: dict[str, dict[str, Any]] = {
    # the setting: paper-size networks, ViT-Large MAE, the 1 mm subject, batch 16
    "full": {
        "seg_preset": "paper",
        "mae_preset": "large",
        "input_size": 224,
        "sw_batch_size": None,  # the inference config's
        "demo_resolution_mm": 1,
        "warmup": 1,
        "repeats": 3,
        "train_configs": ("train.json",),
        "train_overrides": {"batch_size": 16},
        "train_iterations": 10,
        "train_epochs": 2,
        "cpu_threads": None,  # torch's choice
    },
    # the same phases in seconds on a CPU: small presets, a 4 mm subject, the demo training preset
    "tiny": {
        "seg_preset": "small",
        "mae_preset": "tiny",
        "input_size": 64,
        "sw_batch_size": 8,
        "demo_resolution_mm": 4,
        "warmup": 0,
        "repeats": 1,
        "train_configs": ("train.json", "demo.json"),
        "train_overrides": {"batch_size": 4},
        "train_iterations": 2,
        "train_epochs": 1,
        "cpu_threads": 1,  # small operations on a shared CPU are faster without OpenMP's thread team
    },
}

#: the issue's GPU targets: (name, path in the results, comparison, bound, unit)
TARGETS: tuple[tuple[str, tuple[str, ...], str, float, str], ...] = (
    ("end to end, ViT-Large MAE, K = 5 random", ("end_to_end", "end_to_end", "grcsf_paper", "total_s"), "<=", 1.0, "s"),
    ("end to end, shipped default", ("end_to_end", "end_to_end", "grcsf_default", "total_s"), "<=", 0.5, "s"),
    ("GRCSF / UNet++ end to end, shipped default", ("end_to_end", "end_to_end", "ratio_default"), "<=", 1.5, ""),
    ("batched / naive maps, K = 5 random", ("maps_check", "residual_maps", "paper", "speedup"), ">=", 10.0, "x"),
    ("data wait share of a training iteration", ("train", "steady_data_wait_percent"), "<=", 10.0, "%"),
)


class PhaseTimeoutError(RuntimeError):
    """A phase ran past its share of the time budget and was interrupted."""


# ------------------------------------------------------------------------------ requirements
def _wheel_platform() -> str | None:
    """pip's ``--platform`` of this machine for binary wheels (manylinux), None elsewhere."""
    name = sysconfig.get_platform()  # e.g. linux-x86_64, linux-aarch64
    if name.startswith("linux-"):
        return f"manylinux2014_{name.split('-', 1)[1]}"
    return None


def wheel_commands(requirements: Sequence[str]) -> tuple[str, str]:
    """The two commands that bring ``requirements`` to an offline machine as wheels: ``pip download``
    on a connected machine (for this machine's Python and platform), ``pip install`` here."""
    target = f"--python-version {sys.version_info.major}.{sys.version_info.minor}"
    wheel_platform = _wheel_platform()
    if wheel_platform:
        target += f" --platform {wheel_platform}"
    names = " ".join(requirements)
    download = f"pip download --only-binary=:all: --no-deps {target} -d wheels {names}"
    install = f"pip install --no-index --find-links wheels {names}"
    return download, install


def missing_requirements(need_demo_data: bool = False) -> list[str]:
    """The import names of :data:`REQUIREMENTS` (and nilearn when the demo subject must be generated)
    that this interpreter cannot import."""
    names = list(REQUIREMENTS) + ([DEMO_REQUIREMENT[0]] if need_demo_data else [])
    return [name for name in names if importlib.util.find_spec(name) is None]


def _requirements_message(missing: Sequence[str]) -> str:
    pins: list[str] = []
    for name in missing:
        if name in REQUIREMENTS:
            pin, extra = REQUIREMENTS[name]
            pins += [pin, *extra]
    pip_names = [REQUIREMENTS[n][0].split("==")[0] if n in REQUIREMENTS else DEMO_REQUIREMENT[1] for n in missing]
    text = f"device suite: missing Python packages: {', '.join(pip_names)}."
    if pins:
        download, install = wheel_commands(pins)
        text += f' Bring them as wheels: on a connected machine "{download}", copy wheels/ here, then "{install}".'
    if DEMO_REQUIREMENT[0] in missing:
        text += (
            " nilearn only makes the demo subject: run `python scripts/device_suite.py --prepare` on a connected "
            "machine and bring --cache-dir (demo_data/benchmark) along, or pass --image and --label."
        )
    return text


# ------------------------------------------------------------------------------ phase runner
class PhaseCheckError(RuntimeError):
    """A phase that measured something but whose checks failed: the result is kept with the error."""

    def __init__(self, message: str, result: Mapping[str, Any]) -> None:
        super().__init__(message, result)
        self.result = dict(result)

    def __str__(self) -> str:
        return str(self.args[0])


class _Watchdog:
    """Interrupts the main thread (SIGINT, so blocking calls return too) ``seconds`` after entry."""

    def __init__(self, seconds: float) -> None:
        self.seconds = max(0.0, seconds)
        self.fired = False
        self._active = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._previous_handler: Any = None

    def _fire(self) -> None:
        with self._lock:
            if not self._active:
                return
            self.fired = True
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]

    def __enter__(self) -> _Watchdog:
        # only the main thread can be interrupted, and only while SIGINT raises KeyboardInterrupt; a
        # process started in the background (nohup, a CI runner) inherits SIGINT ignored: Python's
        # handler is put in place for the phase and the inherited one restored after it
        handler = signal.getsignal(signal.SIGINT)
        usable = threading.current_thread() is threading.main_thread() and (
            handler is signal.default_int_handler or handler == signal.SIG_IGN
        )
        if usable:
            if handler == signal.SIG_IGN:
                self._previous_handler = handler
                signal.signal(signal.SIGINT, signal.default_int_handler)
            self._active = True
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._active = False
        if self._timer is not None:
            self._timer.cancel()
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None


def run_phase(
    name: str, fn: Callable[[float], Mapping[str, Any]], seconds: float, grace_s: float = GRACE_S
) -> dict[str, Any]:
    """
    Run one phase: ``fn(deadline)`` with ``deadline = now + seconds`` (a ``time.perf_counter()``
    value the phase plans its repeats by), interrupted ``grace_s`` after it.

    Returns:
        ``{"status": "ok" | "failed" | "timed out", "seconds": ..., **fn's result}`` or the error
        (``"error"``, ``"traceback"``); never raises but for a user's Ctrl-C.
    """
    started = time.perf_counter()
    watchdog = _Watchdog(seconds + grace_s)
    record: dict[str, Any]
    try:
        try:
            with watchdog:
                result = fn(started + seconds)
        except KeyboardInterrupt:
            if not watchdog.fired:
                raise
            raise PhaseTimeoutError(f"{name} ran past its {seconds + grace_s:.0f} s share of the time budget") from None
        record = {"status": "ok", **result}
    except PhaseCheckError as e:
        record = {"status": "failed", **e.result, "error": str(e)}
    except PhaseTimeoutError as e:
        record = {"status": "timed out", "error": str(e)}
    except Exception as e:  # noqa: BLE001 - a failed phase is recorded and the suite goes on
        record = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
    record["seconds"] = time.perf_counter() - started
    return record


# ------------------------------------------------------------------------------------ phases
def _junit_counts(path: str) -> dict[str, Any]:
    """Pass / fail / error / skip counts and skip reasons of a pytest JUnit XML report."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0}
    reasons: set[str] = set()
    failures: list[str] = []
    for suite in suites:
        counts["tests"] += int(suite.get("tests", 0))
        counts["failed"] += int(suite.get("failures", 0))
        counts["errors"] += int(suite.get("errors", 0))
        counts["skipped"] += int(suite.get("skipped", 0))
        for case in suite.iter("testcase"):
            for skipped in case.iter("skipped"):
                reasons.add(str(skipped.get("message", "")).removeprefix("Skipped: ").strip())
            for failed in [*case.iter("failure"), *case.iter("error")]:
                failures.append(f"{case.get('classname')}::{case.get('name')}: {failed.get('message', '')[:300]}")
    counts["passed"] = counts["tests"] - counts["failed"] - counts["errors"] - counts["skipped"]
    return {**counts, "skip_reasons": sorted(reasons), "failures": failures}


def _cuda_tests(deadline: float, paths: Sequence[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="device-suite-") as tmp:
        report = os.path.join(tmp, "cuda_tests.xml")
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", *paths, "-q", "-ra", "-p", "no:cacheprovider"]
        cmd += ["-o", "addopts=", "--junitxml", report, "--basetemp", os.path.join(tmp, "pt")]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BUNDLE_ROOT), env.get("PYTHONPATH", "")) if p)
        timeout = max(1.0, deadline - time.perf_counter())
        try:
            done = subprocess.run(
                cmd, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise PhaseTimeoutError(f"pytest -m cuda did not finish in {timeout:.0f} s") from e
        if not os.path.isfile(report):
            raise RuntimeError(f"pytest -m cuda wrote no report (exit status {done.returncode}): {done.stdout[-800:]}")
        counts = _junit_counts(report)
    result = {"command": " ".join(["python", *cmd[1:5], *paths]), "returncode": done.returncode, **counts}
    if done.returncode != 0 or counts["tests"] == 0:
        result["output_tail"] = (done.stdout + done.stderr)[-3000:]
        raise PhaseCheckError(f"pytest -m cuda: exit status {done.returncode}, {_tests_summary(counts)}", result)
    return result


def _tests_summary(counts: Mapping[str, Any]) -> str:
    return (
        f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, {counts.get('errors', 0)} errors, "
        f"{counts.get('skipped', 0)} skipped"
    )


def _benchmark_args(options: argparse.Namespace, scale: Mapping[str, Any]) -> argparse.Namespace:
    from bundle.tools import benchmark

    argv = [
        "--seg-preset",
        scale["seg_preset"],
        "--mae-preset",
        scale["mae_preset"],
        "--input-size",
        str(scale["input_size"]),
        "--slices",
        "all",
        "--warmup",
        str(scale["warmup"]),
        "--repeats",
        str(scale["repeats"]),
        "--cache-dir",
        options.cache_dir,
        "--demo-resolution-mm",
        str(scale["demo_resolution_mm"]),
        "--mae-batch-size",
        str(options.mae_batch_size),
        "--no-train",
    ]
    if scale["sw_batch_size"] is not None:
        argv += ["--sw-batch-size", str(scale["sw_batch_size"])]
    threads = options.threads
    if threads is None and str(options.device).startswith("cpu"):
        threads = scale["cpu_threads"]
    for flag, value in (("--device", options.device), ("--image", options.image), ("--threads", threads)):
        if value is not None:
            argv += [flag, str(value)]
    if options.amp is not None:
        argv += ["--amp", options.amp]
    for flag in ("channels_last", "preprocess_on_device"):
        value = getattr(options, flag)
        if value is not None:
            argv.append(f"--{'' if value else 'no-'}{flag.replace('_', '-')}")
    if options.compile:
        argv.append("--compile")
    if options.quiet:
        argv.append("--quiet")
    return benchmark.build_parser(benchmark.config_defaults()).parse_args(argv)


class _Suite:
    """The state of one run: options, results, the benchmark context, the JSON file."""

    def __init__(self, options: argparse.Namespace, started: float, argv: Sequence[str]) -> None:
        self.options = options
        self.scale = SCALES[options.scale]
        self.started = started  # perf_counter value of the start (the process start from the command line)
        self.end = started + float(options.time_budget) - RESERVE_S
        self.ctx: Any = None
        self.record: dict[str, Any] | None = None
        self.results: dict[str, Any] = {
            "suite": "GRCSF device suite (scripts/device_suite.py)",
            "command": "python scripts/device_suite.py " + " ".join(argv),
            "started_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "scale": options.scale,
            "device": options.device,
            "time_budget_s": float(options.time_budget),
            "python": platform.python_version(),
            "complete": False,
            "phases": {},
        }

    def log(self, text: str) -> None:
        print(f"[device suite {time.perf_counter() - self.started:6.1f} s] {text}", flush=True)

    def write(self) -> None:
        self.results["elapsed_s"] = time.perf_counter() - self.started
        self.results["targets"] = evaluate_targets(self.results)
        path = Path(self.options.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(_json_safe(self.results), indent=2) + "\n")
        os.replace(tmp, path)

    def phase_seconds(self, name: str) -> float:
        """This phase's share of the time left: its weight against the weights of the phases still to run."""
        later = PHASES[PHASES.index(name) :]
        weight = sum(PHASE_WEIGHTS.get(p, 0.0) for p in later)
        left = self.end - time.perf_counter()
        return max(0.0, left * PHASE_WEIGHTS.get(name, 0.0) / weight) if weight else max(0.0, left)

    def run(self, name: str, fn: Callable[[float], Mapping[str, Any]], needs_setup: bool = True) -> None:
        if needs_setup and self.ctx is None:
            record: dict[str, Any] = {"status": "skipped", "error": "the setup phase did not complete", "seconds": 0.0}
        else:
            seconds = self.phase_seconds(name)
            self.log(f"{name}: up to {seconds:.0f} s")
            record = run_phase(name, fn, seconds)
        self.results["phases"][name] = record
        self.log(f"{name}: {record['status']} in {record['seconds']:.1f} s" + _error_suffix(record))
        self.write()

    # ---- phases
    def cuda_tests(self, deadline: float) -> dict[str, Any]:
        return _cuda_tests(deadline, self.options.cuda_tests)

    def setup(self, deadline: float) -> dict[str, Any]:
        from bundle.tools import benchmark

        args = _benchmark_args(self.options, self.scale)
        self.ctx = benchmark.prepare(args)
        if self.options.image is None:
            record = benchmark.demo_record(self.options.cache_dir, self.scale["demo_resolution_mm"])
            self.record = {"image": str(record["image"]), "label": str(record["label"])}
        elif self.options.label is not None:
            self.record = {"image": self.options.image, "label": self.options.label}
        described = benchmark.describe(self.ctx)
        described.pop("benchmark")
        return described

    def maps_check(self, deadline: float) -> dict[str, Any]:
        from bundle.tools import benchmark

        ctx = self.ctx
        start, stop = benchmark._slice_block(int(self.options.check_slices), ctx.spatial[ctx.axis])
        block = ctx.block(start, stop)
        result: dict[str, Any] = {"block": [start, stop], "foreground_slices": ctx.foreground_slices(block)}
        try:
            checks, first_reference_runs = benchmark.check_residual_maps(ctx, block)
        except benchmark.BenchmarkCheckError as e:
            raise PhaseCheckError(str(e), result) from e
        result["checks"] = checks
        result["residual_maps"] = benchmark.time_residual_maps(ctx, block, first_reference_runs, deadline)
        return result

    def end_to_end(self, deadline: float) -> dict[str, Any]:
        from bundle.tools import benchmark

        e2e = benchmark.time_end_to_end(self.ctx, deadline)
        start, stop = self.ctx.block_range
        return {"slices": [start, stop], "end_to_end": e2e, "notes": list(self.ctx.notes)}

    def train(self, deadline: float) -> dict[str, Any]:
        from bundle.tools import benchmark

        if self.record is None:
            raise RuntimeError("the training phase needs a labelled volume: pass --label with --image")
        configs = [BUNDLE_ROOT / "configs" / name for name in self.scale["train_configs"]]
        return benchmark.time_training_loop(
            self.record,
            self.ctx.mae,
            self.ctx.device,
            configs,
            self.scale["train_overrides"],
            iterations=self.scale["train_iterations"],
            epochs=self.scale["train_epochs"],
            deadline=deadline,
        )


def _error_suffix(record: Mapping[str, Any]) -> str:
    return f": {record['error']}" if record.get("error") else ""


def _json_safe(obj: Any) -> Any:
    """Strict JSON: NaN and infinities as null, tuples as lists, other objects as strings."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def _lookup(results: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = results.get("phases", {})
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def evaluate_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's GPU targets with what this run measured; ``met`` only for ``--scale full`` on CUDA."""
    applies = results.get("scale") == "full" and str(results.get("device") or "").startswith("cuda")
    rows = []
    for name, path, comparison, bound, unit in TARGETS:
        value = _lookup(results, path)
        measured = isinstance(value, (int, float)) and math.isfinite(float(value))
        met = None
        if applies and measured:
            met = float(value) <= bound if comparison == "<=" else float(value) >= bound
        rows.append({"target": name, "bound": f"{comparison} {bound:g}{unit}", "value": value, "met": met})
    return rows


# -------------------------------------------------------------------------------------- table
def _phase_summary(name: str, record: Mapping[str, Any]) -> str:
    if record.get("status") not in ("ok", "failed"):
        return record.get("error", "")
    if name == "requirements":
        return "all present" if not record.get("missing") else "missing: " + ", ".join(record["missing"])
    if name == "cuda_tests":
        reasons = "; ".join(record.get("skip_reasons", []))
        return _tests_summary(record) + (f" ({reasons})" if reasons else "")
    if name == "setup" and "machine" in record:
        m, s, p = record["machine"], record["settings"], record["params"]
        shape = "x".join(str(v) for v in s["volume_shape"])
        return (
            f"{m['device_name']}; volume {shape}; GRCSF {s['seg_preset']} {p['grcsf_m']:.1f} M, "
            f"UNet++ {p['unetpp_m']:.1f} M, MAE {s['mae_preset']} {p['mae_m']:.1f} M; amp {s['amp']}, "
            f"channels-last {s['channels_last']}, preprocessing on the device {s['preprocess_on_device']}"
        )
    if name == "maps_check" and "checks" in record:
        parts = []
        for setting, check in record["checks"].items():
            maps = record.get("residual_maps", {}).get(setting)
            text = f"{setting}: {'equal' if check.get('segmentation_equal') else 'DIFFERENT'}"
            text += f" (max |diff| {check['max_abs_difference']:.1e})"
            if maps:
                text += (
                    f", batched {maps['batched']['wall_s']:.3f} s vs naive {maps['reference']['wall_s']:.3f} s "
                    f"({maps['speedup']:.1f}x)"
                )
            parts.append(text)
        return f"slices {record['block'][0]}:{record['block'][1]}: " + "; ".join(parts)
    if name == "end_to_end" and "end_to_end" in record:
        e2e = record["end_to_end"]
        parts = [f"{k} {v['total_s']:.3f} s" for k, v in e2e.items() if isinstance(v, Mapping) and "total_s" in v]
        if "ratio_default" in e2e:
            parts.append(f"GRCSF / UNet++ {e2e['ratio_default']:.2f}")
        return "; ".join(parts)
    if name == "train" and "samples_per_s" in record:
        return (
            f"{record['samples_per_s']:.1f} slices/s at batch {record['batch_size']} "
            f"({record['num_workers']} workers), data wait {record['steady_data_wait_percent']:.1f} % after each "
            f"epoch's first batch, {record['data_wait_percent']:.1f} % with it ({record['data_wait_s']:.2f} s of "
            f"{record['epoch_s']:.2f} s); residual maps and slice index built in {record['dataset_build_s']:.1f} s"
        )
    return record.get("error", "")


def format_table(results: Mapping[str, Any]) -> str:
    """The one table the suite prints at the end: every phase, then the targets."""
    lines = [f"{'phase':<13} {'status':<10} {'seconds':>8}  result"]
    for name in PHASES:
        record = results["phases"].get(name)
        if record is None:
            lines.append(f"{name:<13} {'not run':<10} {'':>8}")
            continue
        summary = _phase_summary(name, record)
        lines.append(f"{name:<13} {record['status']:<10} {record.get('seconds', 0.0):>8.1f}  {summary}")
    lines.append(f"total {results.get('elapsed_s', 0.0):.1f} s of a {results['time_budget_s']:.0f} s budget")
    for row in results.get("targets", []):
        value = row["value"]
        shown = f"{value:.3f}" if isinstance(value, (int, float)) else "not measured"
        verdict = {True: "met", False: "NOT met", None: "(applies to --scale full on CUDA)"}[row["met"]]
        lines.append(f"target {row['target']} {row['bound']}: {shown} {verdict}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- main
def _process_start() -> float:
    """``time.perf_counter()`` at this process's start (Linux ``/proc``), or now."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.perf_counter() - max(0.0, age)
    except (OSError, ValueError, IndexError):
        return time.perf_counter()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available).")
    parser.add_argument("--scale", default="full", choices=sorted(SCALES), help="full: the issue's setting.")
    parser.add_argument("--output", default=None, help="the JSON (default outputs/device_suite/<scale>-<UTC>.json).")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file.")
    parser.add_argument("--time-budget", type=float, default=240.0, help="seconds for the whole run.")
    parser.add_argument("--image", default=None, help="NIfTI volume instead of the demo subject.")
    parser.add_argument("--label", default=None, help="its lesion mask (for the training phase).")
    parser.add_argument(
        "--cache-dir", default=str(BUNDLE_ROOT / "demo_data" / "benchmark"), help="where the demo subject is kept."
    )
    parser.add_argument("--prepare", action="store_true", help="only generate the demo subject (needs nilearn).")
    parser.add_argument("--check-slices", type=int, default=16, help="slices of the batched-vs-reference check.")
    parser.add_argument("--mae-batch-size", type=int, default=256, help="(pass, slice) pairs per MAE forward.")
    parser.add_argument("--amp", default=None, choices=("none", "bf16", "fp16"), help="default: bf16 on CUDA.")
    parser.add_argument("--channels-last", default=None, action=argparse.BooleanOptionalAction)
    parser.add_argument("--preprocess-on-device", default=None, action=argparse.BooleanOptionalAction)
    parser.add_argument("--compile", action="store_true", help="torch.compile (off: compiling costs minutes).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    parser.add_argument("--cuda-tests", nargs="+", default=list(CUDA_TESTS), help="files of the cuda-marked tests.")
    parser.add_argument("--quiet", action="store_true", help="only the suite's own progress lines.")
    return parser


def _demo_ready(options: argparse.Namespace) -> bool:
    root = Path(options.cache_dir) / f"atlas_{SCALES[options.scale]['demo_resolution_mm']}mm" / "lesions.json"
    return options.image is not None or root.is_file()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; from the command line (``argv`` None) the budget counts from the process start."""
    started = _process_start() if argv is None else time.perf_counter()
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    options = parser.parse_args(args)
    if options.time_budget <= RESERVE_S or options.check_slices < 1 or options.mae_batch_size < 1:
        parser.error(f"--time-budget must exceed {RESERVE_S} s, --check-slices and --mae-batch-size be positive.")
    if options.image is not None and not os.path.isfile(options.image):
        parser.error(f"--image {options.image} does not exist.")
    if options.prepare:
        missing = missing_requirements(need_demo_data=True)
        if missing:
            print(_requirements_message(missing), file=sys.stderr)
            return 3
        from bundle.tools import benchmark

        for scale in SCALES.values():
            record = benchmark.demo_record(options.cache_dir, scale["demo_resolution_mm"])
            print(f"demo subject: {record['image']}")
        return 0
    if options.output is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        options.output = str(BUNDLE_ROOT / "outputs" / "device_suite" / f"{options.scale}-{stamp}.json")
    if os.path.exists(options.output) and not options.overwrite:
        parser.error(f"--output {options.output} exists; pass --overwrite to replace it.")

    suite = _Suite(options, started, args)
    missing = missing_requirements(need_demo_data=not _demo_ready(options))
    suite.results["phases"]["requirements"] = {
        "status": "failed" if missing else "ok",
        "missing": missing,
        "seconds": 0.0,
        **({"error": _requirements_message(missing)} if missing else {}),
    }
    suite.write()
    if missing:
        print(_requirements_message(missing), file=sys.stderr)
        return 3
    if options.device is None:
        import torch

        options.device = "cuda" if torch.cuda.is_available() else "cpu"
        suite.results["device"] = options.device
    suite.log(f"scale {options.scale}, device {options.device}, budget {options.time_budget:.0f} s -> {options.output}")
    suite.run("cuda_tests", suite.cuda_tests, needs_setup=False)
    suite.run("setup", suite.setup, needs_setup=False)
    suite.run("maps_check", suite.maps_check)
    suite.run("end_to_end", suite.end_to_end)
    suite.run("train", suite.train)
    suite.results["complete"] = True
    suite.write()
    print(format_table(suite.results))
    print(f"wrote {options.output}")
    return 0 if all(r["status"] == "ok" for r in suite.results["phases"].values()) else 1
