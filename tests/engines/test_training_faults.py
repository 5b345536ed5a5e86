"""Faults in training: a killed run resumes to the same weights, a full disk keeps the last
checkpoint, a NaN loss stops the run in one line with the checkpoints intact."""

from __future__ import annotations

import errno
import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bundle.handlers import AtomicCheckpointSaver
from monai.utils import IgniteInfo, min_version, optional_import

from tests.helpers import CONFIGS, REPO

Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

EPOCHS = 3


def _command(root: Path, data: Path, cache: Path, *extra: str) -> list[str]:
    config = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'demo.json'}']"
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config,
            "--bundle_root", str(root), "--dataset_dir", str(data), "--cache_dir", str(cache),
            "--max_epochs", str(EPOCHS), "--max_slices_per_epoch", "24", "--val_interval", "100",
            "--num_threads", "1", "--progress", "false", *extra]  # fmt: skip


def _bundle(tmp: Path, demo: dict[str, Path], name: str) -> Path:
    root = tmp / name
    (root / "models").mkdir(parents=True)
    shutil.copy(demo["models"] / "mae.pt", root / "models" / "mae.pt")
    return root


def _network(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)["network"]


def test_killed_run_resumes_to_the_same_weights(tmp_path: Path, demo_model: dict[str, Path]) -> None:
    cache = tmp_path / "cache"  # the residual maps, shared: computed once
    whole = _bundle(tmp_path, demo_model, "whole")
    done = subprocess.run(
        _command(whole, demo_model["data"], cache), cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]

    killed = _bundle(tmp_path, demo_model, "killed")
    process = subprocess.Popen(
        _command(killed, demo_model["data"], cache),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    deadline = time.monotonic() + 600
    assert process.stdout is not None
    for line in process.stdout:  # the iteration log lines of MONAI's StatsHandler
        seen.append(line)
        if f"Epoch: 2/{EPOCHS}, Iter: 2/" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGKILL)  # no clean-up of any kind
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen[-20:])
    state = torch.load(killed / "models" / "checkpoint_last.pt", weights_only=True)["trainer"]
    assert state["iteration"] == state["epoch_length"], "killed inside epoch 2: the checkpoint is epoch 1's"

    resumed = subprocess.run(
        _command(killed, demo_model["data"], cache, "--resume", "true"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing after epoch 1" in resumed.stdout + resumed.stderr
    expected, actual = _network(whole), _network(killed)
    assert expected.keys() == actual.keys()
    different = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_nan_loss_stops_the_run_with_the_checkpoints_intact(tmp_path: Path, demo_model: dict[str, Path]) -> None:
    root = _bundle(tmp_path, demo_model, "nan")
    best = root / "models" / "model.pt"
    shutil.copy(demo_model["models"] / "model.pt", best)  # the best weights of an earlier run
    before = hashlib.sha256(best.read_bytes()).hexdigest()
    # a learning rate that sends the weights to infinity within a few steps
    done = subprocess.run(
        _command(root, demo_model["data"], tmp_path / "cache", "--learning_rate", "1e30"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert done.returncode == 1, done.stderr[-3000:]
    assert last.startswith("error: training stopped at epoch 1, iteration "), last
    assert "the loss is nan" in last and f"intact: {best}" in last and "Traceback" not in done.stderr
    assert hashlib.sha256(best.read_bytes()).hexdigest() == before
    assert not (root / "models" / "checkpoint_last.pt").exists()  # nothing saved after the bad step


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    network = torch.nn.Linear(3, 2)
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"network": network}, save_interval=1, n_saved=1, interval_filename="checkpoint_last.pt"
    )
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    path = tmp_path / "checkpoint_last.pt"
    good = path.read_bytes()
    real_save = torch.save

    def disk_full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        # half a file written, then the device is full
        if isinstance(f, (str, Path)):
            Path(f).write_bytes(good[: len(good) // 2])
        else:
            f.write(good[: len(good) // 2])  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with torch.no_grad():
        network.weight.add_(1.0)
    with pytest.raises(OSError, match="No space left on device"):
        engine.run([0], max_epochs=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == good  # the previous checkpoint, whole
    assert set(torch.load(path, weights_only=True)) == {"weight", "bias"}  # one object: its state dict
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]  # no partial file left
