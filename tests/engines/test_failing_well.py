"""Failing well, from the real command line: a corpus of broken inputs, data and checkpoints.

Every case runs ``python -m monai.bundle run ...`` in a subprocess and must end with the expected
exit status and a last stderr line ``error: <file>: <problem>`` (no traceback); afterwards every
input and every earlier output is byte-identical. Inputs plainly unlike the training data run
through with a warning in the log and the report, naming the measure.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from bundle.data.dicom import write_dicom_series
from bundle.networks import ModelSettings

from tests.helpers import CONFIGS, REPO

CASES_RUN_AT_ONCE = 2  # the CI machine has two cores


@dataclass
class Case:
    """One command-line run: its arguments, what it must end with, the files it must not touch."""

    name: str
    args: list[str]
    status: int
    last_line: list[str]  # substrings of the last stderr line
    log: list[str] = field(default_factory=list)  # substrings of the whole output (warnings)
    result: subprocess.CompletedProcess | None = None


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _inference(
    bundle: Path, image: Path | str, out: Path, *extra: str, configs: tuple[str, ...] = ("inference",)
) -> list[str]:
    config = "[" + ",".join(f"'{CONFIGS / c}.json'" for c in configs) + "]"
    return ["--config_file", config, "--bundle_root", str(bundle), "--input_dir", str(image),
            "--output_dir", str(out), "--progress", "false", *extra]  # fmt: skip


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _dicom_series(folder: Path, volume: np.ndarray, affine: np.ndarray, modality: str, **kwargs: Any) -> list[str]:
    return write_dicom_series(volume, affine, folder, modality=modality, **kwargs)


def _rewrite(path: str, **tags: Any) -> None:
    ds = pydicom.dcmread(path)
    for tag, value in tags.items():
        setattr(ds, tag, value)
    ds.save_as(path)


def _build(root: Path, demo: dict[str, Path]) -> tuple[list[Case], list[Path]]:
    """The corpus: broken files under ``root/inputs``, bundles under ``root/bundles``."""
    inputs, out = root / "inputs", root / "out"
    inputs.mkdir()
    good = sorted(demo["data"].glob("Training/*/*/ses-1/anat/*_T1w.nii.gz"))[0]
    label = Path(str(good).replace("_T1w.nii.gz", "_label-L_desc-T1lesion_mask.nii.gz"))
    img = nib.load(good)
    array = np.asarray(img.dataobj).astype(np.float32)
    affine = img.affine

    # bundles: the trained demo weights, and variants of its weights files
    brain = root / "bundles" / "brain"
    shutil.copytree(demo["root"] / "models", brain / "models")
    weights = torch.load(brain / "models" / "model.pt", weights_only=True)
    ct = root / "bundles" / "ct"  # the same network recorded as a CT model (lung window)
    (ct / "models").mkdir(parents=True)
    shutil.copy(brain / "models" / "mae.pt", ct / "models" / "mae.pt")
    settings = {k: v for k, v in weights["model_settings"].items() if k not in ("format", "bundle_version")}
    settings.update(preprocessing_domain="ct", preprocessing_options={"window": "lung"}, training_spacing_mm=None)
    torch.save(
        {"model": weights["model"], "model_settings": ModelSettings(**settings).state_dict()},
        ct / "models" / "model.pt",
    )
    bad_weights = root / "weights"
    bad_weights.mkdir()
    truncated = bad_weights / "truncated.pt"
    truncated.write_bytes((brain / "models" / "model.pt").read_bytes()[:5000])
    not_a_state_dict = bad_weights / "list.pt"
    torch.save([1, 2, 3], not_a_state_dict)
    legacy = bad_weights / "legacy.pt"
    torch.save(weights["model"], legacy)
    old_version = bad_weights / "v020.pt"
    old_settings = dict(weights["model_settings"], bundle_version="0.2.0")
    torch.save({"model": weights["model"], "model_settings": old_settings}, old_version)

    # images
    empty = inputs / "empty.nii.gz"
    empty.write_bytes(b"")
    garbage = inputs / "garbage.nii.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00not really gzip at all")
    truncated_image = inputs / "truncated.nii"
    nib.save(nib.Nifti1Image(array, affine), str(inputs / "whole.nii"))
    truncated_image.write_bytes((inputs / "whole.nii").read_bytes()[:2000])
    (inputs / "whole.nii").unlink()
    nan = array.copy()
    nan[10, 10, 10] = np.nan
    tiny = np.random.default_rng(0).uniform(0, 100, (8, 8, 2)).astype(np.float32)
    noise = np.random.default_rng(1).uniform(0, 1000, array.shape).astype(np.float32)
    files = {
        "nan": _nifti(inputs / "nan.nii.gz", nan, affine),
        "constant": _nifti(inputs / "constant.nii.gz", np.full_like(array, 7.0), affine),
        "four_d": _nifti(inputs / "fourd.nii.gz", np.stack([array, array], -1), affine),
        "two_d": _nifti(inputs / "flat.nii.gz", array[:, :, 10], affine),
        "tiny": _nifti(inputs / "tiny.nii.gz", tiny, np.eye(4)),
        "noise": _nifti(inputs / "noise_T1w.nii.gz", noise, affine),
        "ct_not_hu": _nifti(inputs / "ct_scaled.nii.gz", array / max(float(array.max()), 1.0), affine),
    }
    mhd = inputs / "orphan.mhd"
    mhd.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_SHORT\nElementDataFile = orphan.raw\n"
    )

    # DICOM series of the image (MR), and their damaged versions
    hu = np.clip(array, 0, 3000).astype(np.float32)
    mr = _dicom_series(inputs / "mr_ok", hu, affine, "MR", rescale_intercept=0.0)
    shutil.copytree(inputs / "mr_ok", inputs / "mr_missing_slice")
    (inputs / "mr_missing_slice" / Path(mr[10]).name).unlink()
    shutil.copytree(inputs / "mr_ok", inputs / "mr_duplicate_slice")
    shutil.copy(mr[10], inputs / "mr_duplicate_slice" / "copy_of_slice_10.dcm")
    shutil.copytree(inputs / "mr_ok", inputs / "mr_mixed_series")
    other = _dicom_series(root / "other_series", hu[:, :, :5], affine, "MR", rescale_intercept=0.0)
    for i, path in enumerate(other):
        shutil.copy(path, inputs / "mr_mixed_series" / f"other_{i}.dcm")
    shutil.copytree(inputs / "mr_ok", inputs / "mr_uneven_spacing")
    moved = sorted((inputs / "mr_uneven_spacing").iterdir())
    position = pydicom.dcmread(mr[-1]).ImagePositionPatient
    _rewrite(
        str(inputs / "mr_uneven_spacing" / Path(mr[-1]).name),
        ImagePositionPatient=[position[0], position[1], position[2] + 1.3],
    )
    assert moved
    ct_volume = np.where(array > 0, array, -1000.0).astype(np.float32)
    _dicom_series(inputs / "ct_series", ct_volume, affine, "CT")
    ct_raw = _dicom_series(inputs / "ct_no_rescale", np.clip(array, 0, 3000), affine, "CT", rescale_intercept=0.0)
    for path in ct_raw:
        ds = pydicom.dcmread(path)
        del ds.RescaleIntercept
        del ds.RescaleSlope
        ds.save_as(path)

    # evaluation: labels that do not fit
    lab = np.asarray(nib.load(label).dataobj)
    labels = {
        "label_shape": _nifti(inputs / "label_short.nii.gz", lab[:, :, :-1], affine),
        "label_values": _nifti(inputs / "label_twos.nii.gz", (lab * 2).astype(np.uint8), affine),
    }
    shifted = affine.copy()
    shifted[0, 3] += 6.0
    labels["label_affine"] = _nifti(inputs / "label_shifted.nii.gz", lab, shifted)
    evaluation = {}
    for name, path in labels.items():
        datalist = inputs / f"{name}.json"
        datalist.write_text(json.dumps({"test": [{"image": str(good), "label": str(path), "subject": name}]}))
        evaluation[name] = datalist

    # earlier outputs that a run must not replace
    earlier = root / "earlier"
    first = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *_inference(brain, good, earlier)],
                           cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    all_bad = inputs / "all_bad"
    all_bad.mkdir()
    for name in ("nan", "constant", "four_d"):
        shutil.copy(files[name], all_bad / files[name].name)

    def inf(name: str, image: Any, *extra: str, bundle: Path = brain, **kw: Any) -> list[str]:
        return _inference(bundle, image, out / name, *extra, **kw)

    def ev(name: str) -> list[str]:
        return ["evaluating", *_inference(brain, "unused", out / name, "--datalist", str(evaluation[name]),
                                          configs=("inference", "evaluate"))]  # fmt: skip

    cases = [
        Case("missing file", inf("missing", inputs / "nowhere.nii.gz"), 1, ["nowhere.nii.gz", "does not exist"]),
        Case("empty file", inf("empty", empty), 1, [str(empty), "cannot read"]),
        Case("corrupt gzip", inf("garbage", garbage), 1, [str(garbage), "cannot read"]),
        Case("truncated NIfTI", inf("truncated", truncated_image), 1, [str(truncated_image), "cannot read"]),
        Case("4D image", inf("fourd", files["four_d"]), 1, [str(files["four_d"]), "4D"]),
        Case("2D image", inf("flat", files["two_d"]), 1, [str(files["two_d"]), "3D volume is expected"]),
        Case("NaN voxels", inf("nan", files["nan"]), 1, [str(files["nan"]), "NaN"]),
        Case("constant image", inf("constant", files["constant"]), 1, [str(files["constant"]), "constant"]),
        Case(
            "too small for the network",
            inf("tiny", files["tiny"]),
            1,
            [str(files["tiny"]), "the network needs at least"],
        ),
        Case("MetaImage without its data file", inf("orphan", mhd), 1, [str(mhd), "cannot read"]),
        Case("DICOM: missing slice", inf("gap", inputs / "mr_missing_slice"), 1, ["mr_missing_slice", "missing slice"]),
        Case(
            "DICOM: duplicated slice", inf("dup", inputs / "mr_duplicate_slice"), 1, ["mr_duplicate_slice", "duplicate"]
        ),
        Case("DICOM: mixed series", inf("mixed", inputs / "mr_mixed_series"), 1, ["mr_mixed_series", "series"]),
        Case("DICOM: uneven spacing", inf("uneven", inputs / "mr_uneven_spacing"), 1, ["mr_uneven_spacing", "spacing"]),
        Case(
            "DICOM: CT series given to the brain model",
            inf("ct_as_mr", inputs / "ct_series"),
            1,
            ["Modality is 'CT'", "'MR' is required"],
        ),
        Case(
            "DICOM: MR series given to a CT model",
            inf("mr_as_ct", inputs / "mr_ok", bundle=ct),
            1,
            ["Modality is 'MR'", "'CT' is required"],
        ),
        Case(
            "DICOM: CT without rescale tags",
            inf("no_rescale", inputs / "ct_no_rescale", bundle=ct),
            1,
            ["ct_no_rescale", "RescaleIntercept"],
        ),
        Case(
            "CT file not in HU",
            inf("not_hu", files["ct_not_hu"], bundle=ct),
            1,
            [str(files["ct_not_hu"]), "Hounsfield"],
        ),
        Case("a folder of bad files", inf("all_bad", all_bad), 1, ["inference: 3 of 3 inputs failed"]),
        Case(
            "existing output, --overwrite false",
            _inference(brain, good, earlier, "--overwrite", "false"),
            1,
            ["exists; set --overwrite true"],
        ),
        Case(
            "truncated weights", inf("w_trunc", good, "--ckpt_path", str(truncated)), 1, [str(truncated), "truncated"]
        ),
        Case(
            "not a state dict",
            inf("w_list", good, "--ckpt_path", str(not_a_state_dict)),
            1,
            [str(not_a_state_dict), "a list"],
        ),
        Case(
            "the MAE given as the network",
            inf("w_mae", good, "--ckpt_path", str(brain / "models" / "mae.pt")),
            1,
            ["mae.pt", "MAE weights"],
        ),
        Case(
            "the network given as the MAE",
            inf("w_net", good, "--mae_path", str(brain / "models" / "model.pt")),
            1,
            ["model.pt", "not the MAE"],
        ),
        Case(
            "weights without settings (bundle <= 0.3)",
            inf("w_legacy", good, "--ckpt_path", str(legacy)),
            1,
            [str(legacy), "--legacy_weights_version"],
        ),
        Case(
            "weights of bundle 0.2",
            inf("w_old", good, "--ckpt_path", str(old_version)),
            1,
            [str(old_version), "bundle 0.2.0", "retrain"],
        ),
        Case(
            "a setting contradicting the weights",
            inf("contra", good, "--network_preset", "paper"),
            1,
            ["network_preset is 'paper' in the configs", "trained with 'small'", "Pass --network_preset small"],
        ),
        Case(
            "training with no data set",
            # the card's literal command (outputs redirected so that the repository stays clean)
            [
                "training",
                "--config_file",
                "configs/train.json",
                "--output_dir",
                str(out / "no_data"),
                "--ckpt_dir",
                str(out / "no_data" / "models"),
            ],  # fmt: skip
            1,
            ["no data set given", "--dataset_dir", "python scripts/run_demo.py"],
        ),
        Case("evaluation: label of another shape", ev("label_shape"), 1, ["1 subjects failed", "shape mismatch"]),
        Case("evaluation: label not binary", ev("label_values"), 1, ["1 subjects failed", "not binary"]),
        Case("evaluation: label on another grid", ev("label_affine"), 1, ["1 subjects failed", "different affines"]),
        Case(
            "plainly not a brain T1 (noise)",
            inf("noise", files["noise"]),
            0,
            [],
            ["residual maps average", "training volumes"],
        ),
    ]
    return cases, [inputs, earlier, root / "bundles", bad_weights]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, demo_model: dict[str, Path]) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("corpus")
    cases, kept = _build(root, demo_model)
    before = {str(k): _digest_tree(k) for k in kept}

    def run(case: Case) -> Case:
        case.result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *case.args], cwd=REPO,
                                     capture_output=True, text=True, timeout=600)  # fmt: skip
        return case

    with ThreadPoolExecutor(max_workers=CASES_RUN_AT_ONCE) as pool:
        done = list(pool.map(run, cases))
    after = {str(k): _digest_tree(k) for k in kept}
    table = root / "corpus.md"
    lines = ["| case | exit | last line |", "|---|---|---|"]
    for case in done:
        lines.append(f"| {case.name} | {case.result.returncode} | {_last_line(case.result)[:300]} |")
    table.write_text("\n".join(lines) + "\n")
    print(f"\nthe corpus and its last lines: {table}")
    return {"cases": {c.name: c for c in done}, "before": before, "after": after, "root": root}


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


CASE_NAMES = [
    "missing file", "empty file", "corrupt gzip", "truncated NIfTI", "4D image", "2D image", "NaN voxels",
    "constant image", "too small for the network", "MetaImage without its data file", "DICOM: missing slice",
    "DICOM: duplicated slice", "DICOM: mixed series", "DICOM: uneven spacing", "DICOM: CT series given to the brain model",
    "DICOM: MR series given to a CT model", "DICOM: CT without rescale tags", "CT file not in HU", "a folder of bad files",
    "existing output, --overwrite false", "truncated weights", "not a state dict", "the MAE given as the network",
    "the network given as the MAE", "weights without settings (bundle <= 0.3)", "weights of bundle 0.2",
    "a setting contradicting the weights", "training with no data set",
    "evaluation: label of another shape", "evaluation: label not binary",
    "evaluation: label on another grid", "plainly not a brain T1 (noise)",
]  # fmt: skip


def test_the_corpus_is_large_enough() -> None:
    assert len(CASE_NAMES) >= 20 and len(set(CASE_NAMES)) == len(CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_case(name: str, corpus: dict[str, Any]) -> None:
    case = corpus["cases"][name]
    result = case.result
    last = _last_line(result)
    assert result.returncode == case.status, f"{name}: exit {result.returncode}\n{result.stderr[-3000:]}"
    if case.status:
        assert last.startswith("error: "), f"{name}: the last line is not the error: {last!r}\n{result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr, f"{name}: a traceback was printed\n{result.stderr[-3000:]}"
        for words in case.last_line:
            assert words in last, f"{name}: {words!r} not in the last line {last!r}"
        log = last.rpartition("(traceback: ")[2].partition(";")[0]
        assert Path(log).is_file() and "Traceback" in Path(log).read_text()  # the details are kept
    for words in case.log:
        assert words in result.stdout + result.stderr, f"{name}: no {words!r} in the output"


def test_inputs_and_earlier_outputs_are_untouched(corpus: dict[str, Any]) -> None:
    assert corpus["after"] == corpus["before"]


def test_the_warning_is_in_the_report(corpus: dict[str, Any]) -> None:
    out = corpus["root"] / "out" / "noise"
    (mask,) = out.glob("*_seg.nii.gz")  # processed anyway: a warning, not an error
    assert mask.is_file()
    # a single file writes no report; the same input in a folder run does
    folder = corpus["root"] / "noise_folder"
    folder.mkdir()
    shutil.copy(corpus["root"] / "inputs" / "noise_T1w.nii.gz", folder)
    args = _inference(corpus["root"] / "bundles" / "brain", folder, corpus["root"] / "out" / "noise_folder")
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (report,) = (corpus["root"] / "out" / "noise_folder").glob("inference_report_*.json")
    entry = json.loads(report.read_text())["files"][0]
    assert entry["status"] == "ok" and "residual maps average" in entry["warnings"][0]
