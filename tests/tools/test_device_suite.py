"""scripts/device_suite.py at tiny scale on the CPU (every phase, sane numbers, its checks hold), its
phase runner (failures and overruns are recorded, the suite goes on), the requirements line, and
where the ``cuda`` tests live."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from bundle.tools import device_suite
from bundle.tools.benchmark import demo_record

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_suite_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    demo_record(cache, 4)  # the demo subject exists: nilearn is not required
    out = tmp_path / "suite.json"
    snapshots: list[list[str]] = []
    write = device_suite._Suite.write

    def recording_write(self: device_suite._Suite) -> None:
        write(self)
        snapshots.append(list(json.loads(Path(self.options.output).read_text())["phases"]))

    monkeypatch.setattr(device_suite._Suite, "write", recording_write)
    started = time.perf_counter()
    argv = ["--scale", "tiny", "--device", "cpu", "--output", str(out), "--cache-dir", str(cache), "--quiet"]
    status = device_suite.main(argv)
    seconds = time.perf_counter() - started
    printed = capsys.readouterr().out

    results = json.loads(out.read_text())
    phases = results["phases"]
    assert status == 0, {name: p.get("error") for name, p in phases.items()}
    assert results["complete"] and list(phases) == list(device_suite.PHASES)
    assert all(p["status"] == "ok" and p["seconds"] >= 0 for p in phases.values())
    # the JSON is rewritten after every phase
    assert [s[-1] for s in snapshots[: len(device_suite.PHASES)]] == list(device_suite.PHASES)
    assert results["elapsed_s"] <= results["time_budget_s"] and seconds < results["time_budget_s"]

    tests = phases["cuda_tests"]
    assert tests["tests"] >= 5 and tests["failed"] == tests["errors"] == 0
    if not torch.cuda.is_available():
        assert tests["skipped"] == tests["tests"] and tests["skip_reasons"] == ["no CUDA device"]
    setup = phases["setup"]
    assert setup["settings"]["seg_preset"] == "small" and setup["settings"]["slices"] == [0, 48]
    assert setup["machine"]["device"] == "cpu" and setup["params"]["grcsf_m"] > setup["params"]["unetpp_m"] > 0

    maps = phases["maps_check"]
    assert maps["block"][1] - maps["block"][0] == 16
    for name in ("default", "paper"):
        check = maps["checks"][name]
        assert check["batched_equals_reference"] and check["segmentation_equal"] and check["pipeline_equals_batched"]
        assert check["max_abs_difference"] <= 1e-5 and check["mean_map_value"] > 0
        assert maps["residual_maps"][name]["speedup"] > 0 and maps["residual_maps"][name]["slices"] == 16
    assert maps["residual_maps"]["paper"]["num_passes"] == 5

    e2e = phases["end_to_end"]["end_to_end"]
    for name in ("unetpp", "grcsf_default", "grcsf_paper"):
        assert e2e[name]["total_s"] >= e2e[name]["segmentation_s"] > 0 and len(e2e[name]["runs"]) == 1
    assert e2e["grcsf_paper"]["residual_maps_s"] > 0 and e2e["ratio_default"] > 0
    assert "extrapolated_full_volume_s" not in e2e["unetpp"]  # the whole volume was timed

    train = phases["train"]
    assert train["batch_size"] == 4 and train["iterations"] == 2 and train["samples"] == 8
    assert train["samples_per_s"] > 0 and 0 <= train["steady_data_wait_percent"] <= train["data_wait_percent"] <= 100
    assert train["data_wait_s"] + train["compute_s"] <= train["epoch_s"] * (1 + 1e-6)
    assert train["dataset_build_s"] > 0 and train["config_files"] == ["configs/train.json", "configs/demo.json"]

    targets = results["targets"]
    assert len(targets) == len(device_suite.TARGETS) and all(t["met"] is None for t in targets)  # not the GPU
    assert all(isinstance(t["value"], float) for t in targets)
    for name in device_suite.PHASES:
        assert re.search(rf"^{name}\s+ok\s", printed, re.MULTILINE), printed


def test_phase_runner_records_failures_and_overruns() -> None:
    ok = device_suite.run_phase("fine", lambda deadline: {"value": 1}, seconds=5)
    assert ok["status"] == "ok" and ok["value"] == 1

    def broken(deadline: float) -> dict:
        raise ValueError("no such volume")

    failed = device_suite.run_phase("broken", broken, seconds=5)
    assert failed["status"] == "failed" and failed["error"] == "ValueError: no such volume"

    def check_fails(deadline: float) -> dict:
        raise device_suite.PhaseCheckError("maps differ", {"block": [0, 16]})

    kept = device_suite.run_phase("checks", check_fails, seconds=5)
    assert kept["status"] == "failed" and kept["block"] == [0, 16] and kept["error"] == "maps differ"

    def endless(deadline: float) -> dict:
        assert deadline <= time.perf_counter() + 0.2
        time.sleep(30)  # a blocking call: the watchdog's signal ends it
        return {}

    started = time.perf_counter()
    overran = device_suite.run_phase("endless", endless, seconds=0.2, grace_s=0.3)
    assert overran["status"] == "timed out" and "endless ran past" in overran["error"]
    assert time.perf_counter() - started < 5

    # started in the background (nohup, a CI runner) the process inherits SIGINT ignored: still interrupted
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        overran = device_suite.run_phase("endless", endless, seconds=0.2, grace_s=0.3)
        assert overran["status"] == "timed out"
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # the inherited handler is restored
    finally:
        signal.signal(signal.SIGINT, previous)


def test_missing_packages_stop_the_suite_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = device_suite.importlib.util.find_spec
    monkeypatch.setattr(
        device_suite.importlib.util, "find_spec", lambda name: None if name in ("monai", "ignite") else real(name)
    )
    assert device_suite.missing_requirements() == ["monai", "ignite"]
    out = tmp_path / "suite.json"
    argv = ["--device", "cpu", "--output", str(out), "--image", __file__]
    assert device_suite.main(argv) == 3
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("device suite: missing Python packages: monai, pytorch-ignite.")
    assert "pip download --only-binary=:all: --no-deps" in line and "monai==1.6.1 pytorch-ignite==0.5.5" in line
    assert "pip install --no-index --find-links wheels monai==1.6.1 pytorch-ignite==0.5.5" in line
    recorded = json.loads(out.read_text())["phases"]
    assert list(recorded) == ["requirements"] and recorded["requirements"]["missing"] == ["monai", "ignite"]
    # without the demo subject nilearn is needed too (it makes the subject)
    monkeypatch.setattr(device_suite.importlib.util, "find_spec", lambda name: None)
    assert "nilearn" in device_suite.missing_requirements(need_demo_data=True)
    assert "--prepare" in device_suite._requirements_message(["nilearn"])


def test_pins_follow_the_constraints() -> None:
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    for requirement, _ in device_suite.REQUIREMENTS.values():
        name, version = requirement.split("==")
        if name in pins:
            assert version == pins[name], f"{requirement} differs from constraints.txt"
    assert {"monai", "nibabel", "pydicom", "ignite", "fire"} <= set(device_suite.REQUIREMENTS)


def test_the_cuda_tests_are_where_the_suite_looks() -> None:
    marked = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if re.search(r"pytest\.mark\.cuda\b", path.read_text())
    }
    assert marked == set(device_suite.CUDA_TESTS)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"cuda: .*no CUDA device', pyproject)
