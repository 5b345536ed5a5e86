"""The commands of README.md and docs/datasets.md, run verbatim on data in each release's own layout.

Every ``<!-- checked commands: <name> -->`` block of the two documents is run line by line, in a
fresh bundle folder (``configs/`` and ``scripts/`` of this repository, nothing else), through a
real shell-like argument split, on a tree built by ``tests/release_layouts.py`` in exactly the
layout of the download (ATLAS v2.0, MSD Task06 Lung, orCaScore). The only changes: ``/data`` is a
temporary folder, ``python`` is this interpreter, and the training commands get test-scale options
appended (:data:`TEST_SCALE`: tiny networks, 64 x 64 windows, one short epoch) -- nothing that
changes what they read or where they write. The README's evaluation and inference commands then
run exactly as written (they take every model setting from the weights); those of the data-set
configs get the test scale's window (:data:`SMALL_WINDOW`), because a data-set config asks for its
paper-scale window and weights trained with another need it given (the one-line error says so).
Each command must exit 0 without a traceback or a Python warning in its output, and its outputs
are checked (weights, metrics, masks in the input's exact geometry).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage

from tests.helpers import REPO
from tests.release_layouts import build_atlas_release, build_msd_lung_release, build_orcascore_release

BLOCK = re.compile(r"<!-- checked commands: (\w+) -->\s*```bash\n(.*?)```", re.S)
DOCUMENTS = (REPO / "README.md", REPO / "docs" / "datasets.md")

#: the test scale's model settings that the data-set configs also set (for their paper-scale training)
SMALL_WINDOW = "--input_size [64,64] --rcu_patch_sizes [4,4,8]"
#: appended to the commands, by the workflow the command runs (its first config file)
TEST_SCALE = {
    "train_mae.json": "--mae_preset tiny --mae_img_size 32 --mae_max_epochs 1 --mae_batch_size 16 "
    "--mae_val_slice_stride 4",
    "train.json": f"--network_preset small {SMALL_WINDOW} "
    "--network_options \"{'features': [4, 8, 8, 8, 8, 4]}\" --num_passes 1 --max_epochs 1 --warmup_epochs 0 "
    "--batch_size 4 --max_slices_per_epoch 8 --num_workers 0",
}
#: output of a run that a user should not see: Python warnings, tracebacks, deprecations
#: (and MONAI's warning for config files in several folders, which the flat configs/ avoids)
NOISE = re.compile(r"\b\w+Warning: |Traceback \(most recent call last\)|[Dd]eprecat|Not all config files are in")


def documented_commands(name: str) -> list[str]:
    """The command lines of the ``<!-- checked commands: name -->`` block (comments and blanks dropped)."""
    blocks = {key: body for doc in DOCUMENTS for key, body in BLOCK.findall(doc.read_text())}
    assert name in blocks, f"no checked command block {name!r} in {[str(d) for d in DOCUMENTS]}"
    lines = [line.strip() for line in blocks[name].splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _workflow(args: list[str]) -> str | None:
    """The first config file of a ``monai.bundle`` command (``train.json``, ``train_mae.json``, ...)."""
    if "--config_file" not in args:
        return None
    value = args[args.index("--config_file") + 1]
    first = re.findall(r"configs/([\w.]+\.json)", value)
    return first[0] if first else None


def run_documented(line: str, bundle_dir: Path, data_root: Path, timings: dict[str, float]) -> str:
    """Run one documented command line as written (``/data`` -> ``data_root``, test scale appended);
    returns its combined output."""
    args = [re.sub(r"^/data(?=/|$)", str(data_root), a) for a in shlex.split(line)]
    if args[0] == "python":
        args[0] = sys.executable
    if args[0] == "torchrun":
        args = [sys.executable, "-m", "torch.distributed.run", *args[1:]]
    workflow = _workflow(args)
    args += shlex.split(TEST_SCALE.get(workflow or "", ""))
    if workflow == "inference.json" and "configs/" in line:
        # the data-set config asks for its paper-scale window (224 / 512 px): weights trained at the
        # test scale need theirs given, as the one-line error of a contradicting setting says
        args += shlex.split(SMALL_WINDOW)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run(args, cwd=bundle_dir, env=env, capture_output=True, text=True, timeout=600)
    timings[line] = time.perf_counter() - start
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{output[-4000:]}"
    noise = [ln for ln in output.splitlines() if NOISE.search(ln)]
    assert not noise, f"{line} printed noise:\n" + "\n".join(noise[:10])
    return output


def _bundle_dir(tmp_path: Path) -> Path:
    """A fresh bundle folder as a user has it: the configs and scripts, no models, no outputs."""
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    for name in ("configs", "scripts"):
        (bundle_dir / name).symlink_to(REPO / name, target_is_directory=True)
    return bundle_dir


def _assert_same_grid(mask_path: Path, image_path: Path) -> None:
    """The mask is uint8 in {0, 1} on exactly the image's grid (shape, affine, orientation)."""
    image = LoadImage(image_only=True)(str(image_path))
    mask = nib.load(str(mask_path))
    data = np.asarray(mask.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1}
    assert data.shape == tuple(image.shape), (mask_path, data.shape, image.shape)
    np.testing.assert_allclose(mask.affine, image.affine.numpy(), atol=1e-4)
    assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(image.affine.numpy())


def _summary(path: Path) -> dict:
    summary = json.loads(path.read_text())
    assert summary["n_failed"] == 0 and summary["n_subjects"] >= 1
    assert 0.0 <= summary["mean_over_subjects"]["dice"] <= 1.0
    return summary


def _report_timings(name: str, timings: dict[str, float]) -> None:
    print(f"\n{name}: " + "; ".join(f"{t:.0f} s {line[:70]}..." for line, t in timings.items()))


@pytest.mark.slow
def test_readme_commands_on_the_atlas_release(tmp_path: Path) -> None:
    """README's "Using it on your data" commands, as written, on an ATLAS v2.0 release tree."""
    data_root = tmp_path / "data"
    release = build_atlas_release(data_root, tmp_path / "work")
    bundle_dir = _bundle_dir(tmp_path)
    timings: dict[str, float] = {}
    outputs = [run_documented(line, bundle_dir, data_root, timings) for line in documented_commands("readme")]
    _report_timings("readme", timings)

    assert (bundle_dir / "models" / "mae.pt").is_file() and (bundle_dir / "models" / "model.pt").is_file()
    assert "without a lesion mask left out" in outputs[0] and str(release["unlabelled"]) in outputs[0]
    summary = _summary(bundle_dir / "eval" / "summary.json")
    assert "validation" in summary["split_rule"] or "no test part" in summary["split_rule"]
    # inference on the Testing images: one mask per image, in its own grid, nothing else written
    [testing] = release["testing"]
    mask = bundle_dir / "outputs" / testing.name.replace(".nii.gz", "_seg.nii.gz")
    _assert_same_grid(mask, testing)
    assert sorted(p.name for p in (bundle_dir / "outputs").glob("*.nii.gz")) == [mask.name]


@pytest.mark.slow
def test_atlas_commands_on_the_release_layout(tmp_path: Path) -> None:
    """docs/datasets.md, ATLAS v2.0: the split script, MAE, training, evaluation and inference."""
    data_root = tmp_path / "data"
    release = build_atlas_release(data_root, tmp_path / "work")
    bundle_dir = _bundle_dir(tmp_path)
    timings: dict[str, float] = {}
    for line in documented_commands("atlas"):
        run_documented(line, bundle_dir, data_root, timings)
    _report_timings("atlas", timings)

    splits = sorted((bundle_dir / "splits" / "atlas").glob("atlas_subset-*.json"))
    assert [p.name for p in splits] == ["atlas_subset-0.json", "atlas_subset-1.json"]  # 4 cohorts: 2 subsets
    models = bundle_dir / "models" / "atlas" / "subset-0"
    assert (models / "mae.pt").is_file() and (models / "model.pt").is_file()
    summary = _summary(bundle_dir / "eval" / "atlas" / "summary.json")
    assert summary["split_rule"].startswith("subset 0 of 2 cohort-disjoint subsets (fewer than the 4 asked")
    test_part = json.loads(splits[0].read_text())["test"]
    assert summary["n_subjects"] == len(test_part)
    [testing] = release["testing"]
    _assert_same_grid(
        bundle_dir / "outputs" / "atlas" / "testing" / testing.name.replace(".nii.gz", "_seg.nii.gz"), testing
    )


@pytest.mark.slow
def test_msd_lung_commands_on_the_release_layout(tmp_path: Path) -> None:
    """docs/datasets.md, MSD Task06 Lung: from the tarball (with its ``._*`` files) to evaluation."""
    data_root = tmp_path / "data"
    data_root.mkdir()
    release = build_msd_lung_release(tmp_path / "unpacked", tmp_path / "work")
    bundle_dir = _bundle_dir(tmp_path)
    (bundle_dir / "Task06_Lung.tar").symlink_to(release["tarball"])  # downloaded into the bundle folder
    timings: dict[str, float] = {}
    for line in documented_commands("msd_lung"):
        run_documented(line, bundle_dir, data_root, timings)
    _report_timings("msd_lung", timings)

    unpacked = data_root / "Task06_Lung"
    assert (unpacked / "imagesTr" / f"._{release['training'][0].name}").is_file()  # the tarball's AppleDouble files
    split = json.loads((bundle_dir / "splits" / "msd_lung" / "msd_lung_split.json").read_text())
    assert sum(split[f"num_{k}"] for k in ("training", "validation", "test")) == 8 and split["num_test"] >= 1
    assert (bundle_dir / "models" / "msd_lung" / "model.pt").is_file()
    summary = _summary(bundle_dir / "eval" / "msd_lung" / "summary.json")
    assert summary["n_subjects"] == 1 and "MSD Task06 Lung" in summary["split_rule"]
    masks = sorted((bundle_dir / "outputs" / "msd_lung" / "imagesTs").glob("*.nii.gz"))
    tests = sorted(unpacked / "imagesTs" / p.name for p in release["test"])
    assert [m.name for m in masks] == [p.name.replace(".nii.gz", "_seg.nii.gz") for p in tests]  # no ._ file
    for mask, image in zip(masks, tests):
        _assert_same_grid(mask, image)


@pytest.mark.slow
def test_orcascore_commands_on_the_release_layout(tmp_path: Path) -> None:
    """docs/datasets.md, orCaScore: MetaImage training set with references, a test set without."""
    data_root = tmp_path / "data"
    release = build_orcascore_release(data_root, tmp_path / "work")
    bundle_dir = _bundle_dir(tmp_path)
    timings: dict[str, float] = {}
    for line in documented_commands("orcascore"):
        run_documented(line, bundle_dir, data_root, timings)
    _report_timings("orcascore", timings)

    assert (bundle_dir / "models" / "orcascore" / "model.pt").is_file()
    summary = _summary(bundle_dir / "eval" / "orcascore" / "summary.json")
    assert {"orcascore_f1_vol", "orcascore_agatston_ref"} <= set(summary["mean_over_subjects"])
    [test_image] = release["test"]
    mask = bundle_dir / "outputs" / "orcascore" / "test" / test_image.name.replace(".mhd", "_seg.nii.gz")
    _assert_same_grid(mask, test_image)
