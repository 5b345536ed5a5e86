"""Switches from the command line: ``--x false`` means false and ``--x true`` true, in every workflow.

``python -m monai.bundle run ... --overwrite false`` hands the config the string ``"false"``
(Python finds it true); each workflow here runs from the real command line with its switches as
such strings, and the outcome shows which way each switch went.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import torch

from tests.helpers import REPO

RUN = [sys.executable, "-m", "monai.bundle", "run"]


def _config(*names: str) -> str:
    return "[" + ",".join(f"'{REPO / 'configs' / n}.json'" for n in names) + "]"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_inference_switches(small_bundle_root: Path, small_dataset: list[dict], tmp_path: Path) -> None:
    image = small_dataset[0]["image"]
    out = tmp_path / "out"
    common = ["--config_file", _config("inference"), "--bundle_root", str(small_bundle_root)]
    common += ["--input_dir", image, "--output_dir", str(out), "--amp", "false", "--progress", "false"]
    mask = out / Path(image).name.replace(".nii.gz", "_seg.nii.gz")
    prob = out / Path(image).name.replace(".nii.gz", "_prob.nii.gz")

    first = _run([*common, "--save_probabilities", "true", "--overwrite", "false", "--debug", "false"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert mask.is_file() and prob.is_file()
    before = {p: p.read_bytes() for p in (mask, prob)}
    predicted = nib.load(mask).get_fdata()

    # --overwrite false over existing outputs: refused in one line, nothing replaced
    again = _run([*common, "--save_probabilities", "true", "--overwrite", "false"], tmp_path)
    assert again.returncode == 1
    assert _last_line(again).startswith("error: ") and "exists; set --overwrite true" in _last_line(again)
    assert "Traceback" not in again.stderr
    assert {p: p.read_bytes() for p in (mask, prob)} == before

    # --overwrite true replaces the mask; --save_probabilities false writes no probability
    prob.unlink()
    written = mask.stat().st_mtime_ns
    third = _run([*common, "--save_probabilities", "false", "--overwrite", "true"], tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    assert mask.stat().st_mtime_ns > written and not prob.exists()
    assert (nib.load(mask).get_fdata() == predicted).all()  # the same prediction, written again

    # --debug true: the full traceback instead of the one line
    debug = _run([*common, "--overwrite", "false", "--debug", "true"], tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr

    # a misspelt switch is an error naming it, not a silent "true"
    typo = _run([*common, "--overwrite", "flase"], tmp_path)
    assert typo.returncode == 1 and "overwrite: expected true or false, got 'flase'" in _last_line(typo)


def test_training_switches(small_dataset: list[dict], tmp_path: Path) -> None:
    data = small_dataset[0]["source_dir"]
    common = ["--bundle_root", str(tmp_path), "--dataset_dir", data, "--amp", "false", "--progress", "false"]
    mae = ["training", "--config_file", _config("train_mae", "demo"), *common]
    mae += [
        "--mae_img_size",
        "32",
        "--mae_batch_size",
        "16",
        "--mae_val_slice_stride",
        "4",
        "--mae_log_interval",
        "1000",
    ]

    # the GAN loss on, resuming off: a fresh run with a discriminator in its checkpoint
    first = _run([*mae, "--mae_max_epochs", "1", "--mae_adversarial", "true", "--resume", "false",
                  "--mae_pad_to_square", "true", "--mae_norm_pix_loss", "false"], tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    last = torch.load(tmp_path / "models" / "mae_checkpoint_last.pt", weights_only=True)
    assert "discriminator" in last and last["trainer"]["iteration"] == last["trainer"]["epoch_length"]
    assert torch.load(tmp_path / "models" / "mae.pt", weights_only=True)["mae_config"]["norm_pix_loss"] is False

    # resuming on: the run continues at epoch 2 instead of starting again
    second = _run([*mae, "--mae_max_epochs", "2", "--mae_adversarial", "true", "--resume", "true"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "continuing after epoch 1" in second.stdout + second.stderr
    resumed = torch.load(tmp_path / "models" / "mae_checkpoint_last.pt", weights_only=True)["trainer"]
    assert resumed["iteration"] == 2 * resumed["epoch_length"]

    # GRCSF training with the switches as strings: no resume, no amp, no progress bars
    seg = ["training", "--config_file", _config("train", "demo"), *common, "--resume", "false",
           "--max_epochs", "1", "--max_slices_per_epoch", "8", "--val_interval", "1", "--input_size", "[64, 64]",
           "--rcu_patch_sizes", "[4, 4, 8]", "--num_passes", "1", "--lr_schedule_epoch_level", "false"]  # fmt: skip
    done = _run(seg, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training starts from scratch" not in done.stdout + done.stderr  # resume off: no look-up at all
    assert (tmp_path / "models" / "model.pt").is_file()
