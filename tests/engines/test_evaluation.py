"""configs/evaluate.json merged over configs/inference.json: metrics, summaries, overlays, bad labels.

Same test scale as tests/engines/test_inference.py (whose helpers are reused): 4 mm synthetic subjects
cropped to 8 slices, the small GRCSF at 64 x 64, a tiny random MAE, a fresh network checkpoint;
all outputs under tmp_path.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle.data.atlas import find_atlas_subjects
from bundle.data.records import split_records
from bundle.engines.evaluation import EvaluationRunner, check_label
from bundle.metrics.segmentation import SEGMENTATION_METRIC_KEYS, segmentation_metrics
from bundle.utils.errors import FolderRunError, InvalidVolumeError, describe_error, user_error
from bundle.visualize.overlay import axial_axis, lesion_slice_index
from monai.bundle import ConfigParser

from tests.helpers import CONFIGS, REPO, make_parser, run_config

EVAL_CONFIGS = ("inference.json", "evaluate.json")
SUBSETS = ("A", "A", "B")


def test_evaluate_command(tmp_path: Path, small_bundle_root: Path, small_dataset: list[dict]) -> None:
    datalist = tmp_path / "datalist.json"
    test = [
        {"image": r["image"], "label": r["label"], "subject": r["subject"], "subset": s}
        for r, s in zip(small_dataset, SUBSETS, strict=True)
    ]
    datalist.write_text(json.dumps({"training": test[:1], "validation": [], "test": test}))
    ckpt = tmp_path / "chosen.pt"  # --ckpt_path picks the evaluated checkpoint
    shutil.copy(small_bundle_root / "models" / "model.pt", ckpt)
    eval_dir = tmp_path / "eval"

    # the command of evaluate.json's _description_, from the repository root
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "evaluating",
        "--config_file",
        "['configs/inference.json','configs/evaluate.json']",
        "--bundle_root",
        str(small_bundle_root),
        "--datalist",
        str(datalist),
        "--output_dir",
        str(eval_dir),
        "--ckpt_path",
        str(ckpt),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with open(eval_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["subject"] for r in rows] == [r["subject"] for r in small_dataset]
    assert [r["subset"] for r in rows] == list(SUBSETS)
    for row in rows:
        # the CSV holds segmentation_metrics of the saved mask against the label, recomputed here
        pred_img, label_img = nib.load(row["prediction"]), nib.load(row["label"])
        assert Path(row["prediction"]).parent == eval_dir / "predictions"
        np.testing.assert_allclose(pred_img.affine, label_img.affine, atol=1e-5)
        expected = segmentation_metrics(
            np.asarray(pred_img.dataobj), np.asarray(label_img.dataobj), spacing=label_img.header.get_zooms()[:3]
        )
        for key in SEGMENTATION_METRIC_KEYS:
            assert np.isclose(float(row[key]), expected[key], rtol=1e-9, equal_nan=True), (row["subject"], key)
        assert float(row["time_s"]) > 0

    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["checkpoint"] == str(ckpt)
    assert summary["n_subjects"] == 3 and summary["n_failed"] == 0 and summary["failed"] == []
    dice = np.array([float(r["dice"]) for r in rows])
    assert summary["mean_over_subjects"]["dice"] == pytest.approx(dice.mean())
    assert set(summary["per_subset"]) == {"A", "B"}
    assert summary["per_subset"]["A"]["n_subjects"] == 2
    assert summary["per_subset"]["A"]["mean"]["dice"] == pytest.approx(dice[:2].mean())
    # ATLAS: the mean over subsets weighs each subset equally, not each subject
    assert summary["mean_over_subsets"]["dice"] == pytest.approx((dice[:2].mean() + dice[2]) / 2)
    assert summary["time_per_subject_s"] > 0

    overlays = sorted(p.name for p in (eval_dir / "overlays").iterdir())
    order = [small_dataset[i]["subject"] for i in np.argsort(dice, kind="stable")]
    assert overlays == sorted([f"worst1_{order[0]}.png", f"worst2_{order[1]}.png", f"best1_{order[2]}.png"])
    for name in overlays:
        assert (eval_dir / "overlays" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(summary["overlays"]) == sorted(str(eval_dir / "overlays" / n) for n in overlays)

    # a second run refuses to replace the results (before predicting anything)
    with pytest.raises(RuntimeError) as err:
        run_config(
            small_bundle_root, EVAL_CONFIGS, run_id="evaluating", datalist=str(datalist), output_dir=str(eval_dir)
        )
    assert isinstance(user_error(err.value), FileExistsError)
    assert describe_error(err.value).startswith("evaluation outputs exist")
    assert str(eval_dir / "metrics.csv") in describe_error(err.value)


def _label_like(src: str, dst: Path, data: np.ndarray | None = None, shift: float = 0.0) -> str:
    img = nib.load(src)
    affine = img.affine.copy()
    affine[0, 3] += shift
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) if data is None else data, affine), str(dst))
    return str(dst)


def test_bad_labels_are_reported(tmp_path: Path, small_bundle_root: Path, small_dataset: list[dict]) -> None:
    good = small_dataset[0]
    label = np.asarray(nib.load(good["label"]).dataobj)
    cases = {  # label file -> words of its error
        _label_like(good["label"], tmp_path / "short.nii.gz", data=label[:, :, :-1]): "shape mismatch",
        _label_like(good["label"], tmp_path / "shifted.nii.gz", shift=4.0): "different affines",
        _label_like(good["label"], tmp_path / "twos.nii.gz", data=label * 2): "is not binary",
        _label_like(good["label"], tmp_path / "nan.nii.gz", data=np.full(label.shape, np.nan, np.float32)): "NaN",
        _label_like(good["label"], tmp_path / "fourd.nii.gz", data=np.stack([label, label], axis=-1)): "4D",
        str(tmp_path / "absent.nii.gz"): "does not exist",
    }
    records = [dict(good)] + [{"subject": f"bad{i}", "image": good["image"], "label": p} for i, p in enumerate(cases)]
    parser = make_parser(small_bundle_root, EVAL_CONFIGS, output_dir=str(tmp_path / "eval"))
    parser.get_parsed_content("checkpointloader")()
    evaluation: EvaluationRunner = parser.get_parsed_content("evaluation")

    # the run goes on past the bad subjects, writes the others' results, then fails naming the count
    with pytest.raises(FolderRunError, match=f"evaluation: {len(cases)} of {len(records)} subjects failed"):
        evaluation.run(records)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n_subjects"] == 1 and summary["n_failed"] == len(cases)
    assert "per_subset" not in summary  # no subset in these records
    for failed, (path, words) in zip(summary["failed"], cases.items(), strict=True):
        assert path in failed["error"] and words in failed["error"], failed
    with open(tmp_path / "eval" / "metrics.csv", newline="") as f:
        assert [r["subject"] for r in csv.DictReader(f)] == [good["subject"]]

    # nothing evaluable: an error listing the problems, no outputs
    bad_only = make_parser(small_bundle_root, EVAL_CONFIGS, output_dir=str(tmp_path / "eval2")).get_parsed_content(
        "evaluation"
    )
    with pytest.raises(FolderRunError, match="evaluation: all 1 subjects failed: .*is not binary"):
        bad_only.run(records[3:4])
    assert not (tmp_path / "eval2" / "metrics.csv").exists()


def test_check_label() -> None:
    label = np.zeros((1, 4, 5, 6), np.uint8)
    label[0, 1, 2, 3] = 1
    mask = check_label(label, "lab.nii")
    assert mask.dtype == bool and mask.shape == (4, 5, 6) and mask.sum() == 1
    with pytest.raises(InvalidVolumeError, match="lab.nii: the label has 2 channels"):
        check_label(np.zeros((2, 4, 5, 6)), "lab.nii")
    with pytest.raises(InvalidVolumeError, match="lab.nii: the label is not binary: values 0, 0.5"):
        check_label(label * 0.5, "lab.nii")


def test_default_test_set_is_the_training_validation_split(small_bundle_root: Path, small_dataset: list[dict]) -> None:
    # an ATLAS-layout folder has no test part: its held-out cohorts are evaluated, the validation
    # part of configs/train.json's split, which uses the same loader, fraction and seed
    train = ConfigParser.load_config_file(str(CONFIGS / "train.json"))
    parser = make_parser(small_bundle_root, EVAL_CONFIGS, dataset_dir=small_dataset[0]["source_dir"])
    assert (parser["val_fraction"], parser["seed"]) == (train["val_fraction"], train["seed"])
    assert parser["dataset_split"] == train["dataset_split"]
    records = find_atlas_subjects(small_dataset[0]["source_dir"])
    expected = split_records(records, train["val_fraction"], seed=train["seed"])[1]
    evaluated = parser.get_parsed_content("evaluation_records")
    assert [r["image"] for r in evaluated] == [r["image"] for r in expected] and evaluated


def test_overlay_slice_selection() -> None:
    truth = np.zeros((4, 5, 6), bool)
    pred = np.zeros((4, 5, 6), bool)
    assert lesion_slice_index(truth, pred, axis=2) == 3  # nothing anywhere: the middle slice
    pred[0, 0, 1] = True
    assert lesion_slice_index(truth, pred, axis=2) == 1  # no lesion: where the false positives are
    truth[:, :, 4] = True
    truth[0, 0, 5] = True
    assert lesion_slice_index(truth, pred, axis=2) == 4  # the most lesion
    assert axial_axis(np.diag([1.0, 1.0, 1.0, 1.0])) == 2
    assert axial_axis(np.diag([-1.0, -1.0, 1.0, 1.0])) == 2  # LPS
    # voxel axes permuted: the first voxel axis runs inferior-superior
    assert axial_axis(np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)) == 0
