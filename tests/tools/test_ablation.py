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
"""scripts/ablation.py: the --quick study end to end (tables, figures, JSON, paired tests), resume, helpers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from bundle.tools import ablation as ablation
from scipy.stats import wilcoxon

EXPECTED_ARMS = ["unet", "unetpp", "unetpp_gcu", "unetpp_gcu_rcu_noscore", "grcsf", "grcsf_k2"]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ablation_quick")
    docs = out / "docs" / "results.md"
    payload = ablation.main(["--quick", "--output-dir", str(out), "--docs", str(docs), "--no-progress"])
    return {"out": out, "docs": docs, "payload": payload}


def test_quick_study_writes_every_output(quick_study: dict) -> None:
    out = quick_study["out"]
    for name in (
        "results.json",
        "tables.md",
        "arms.csv",
        "lesion_bins.csv",
        "paired_tests.csv",
        "per_subject_dice.csv",
        "residual_map_auroc_k.csv",
        "residual_map_auroc_ratios.csv",
        "split.json",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("ablation_arms.png", "dice_by_lesion_size.png", "dice_by_lesion_contrast.png", "example_overlays.png"):
        data = (out / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    results = json.loads((out / "results.json").read_text())
    assert list(results["summary"]["arms"]) == EXPECTED_ARMS
    with open(out / "arms.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["arm"] for r in rows] == EXPECTED_ARMS
    for metric in ("dice", "iou", "precision", "recall", "fpr", "vose", "lesion_f1"):
        assert f"{metric}_mean" in rows[0] and f"{metric}_std" in rows[0]
    for arm, entry in results["summary"]["arms"].items():
        assert entry["seeds"] == [0, 1], arm
        assert [b["bin"] for b in entry["by_size"]] == ["<= 100 mm³", "100-1000 mm³", "> 1000 mm³"]
        assert len(entry["by_contrast"]) == len(ablation.CONTRAST_BINS) - 1
        assert 0.0 <= entry["dice_mean"] <= 1.0
    # the cohort-disjoint split, and the MAE trained on the training subjects only
    split = json.loads((out / "split.json").read_text())
    assert not {r["cohort"] for r in split["training"]} & {r["cohort"] for r in split["test"]}
    # the residual-map studies: K x masking rows and the ratio table (0.3 ... 0.9 and the pair)
    auroc = results["residual_map_auroc"]
    assert {(r["masking"], r["num_passes"]) for r in auroc["k_masking"]} == {
        (m, k) for m in ("random", "stratified") for k in (1, 2)
    }
    assert [r["maps"] for r in auroc["ratios"]] == ["0.3", "0.5", "0.75", "0.9", "0.5 + 0.75 (mean map)"]
    assert all(0.0 <= r["auroc"] <= 1.0 for r in auroc["ratios"])
    tables = (out / "tables.md").read_text()
    for label in (
        "U-Net",
        "UNet++ + GCU + RCU w/o score",
        "GRCSF (full)",
        "Wilcoxon",
        "AUROC",
        "by number of MAE passes",
    ):
        assert label in tables


def test_residual_maps_are_computed_once_and_shared(quick_study: dict) -> None:
    out = quick_study["out"]
    split = json.loads((out / "split.json").read_text())
    cached = list((out / "cache").glob("*.pt"))
    volumes = len(split["training"]) + len(split["test"])
    # one cache entry per volume and K (quick: K=1 for the arms, K=2 for the K study), whatever the arm or seed
    assert len(cached) == 2 * volumes
    results = json.loads((out / "results.json").read_text())
    arms = results["summary"]["arms"]
    assert arms["grcsf"]["num_passes"] == 1 and arms["grcsf_k2"]["num_passes"] == 2


def test_paired_tests_match_the_per_subject_values(quick_study: dict) -> None:
    out = quick_study["out"]
    summary = json.loads((out / "results.json").read_text())["summary"]
    subjects = summary["test_subjects_with_lesion"]
    assert subjects
    # per-subject Dice = mean over the seeds' run files
    for arm in EXPECTED_ARMS:
        runs = [json.loads((out / "runs" / arm / f"seed{s}" / "result.json").read_text()) for s in (0, 1)]
        for subject in subjects:
            values = [r["dice"] for run in runs for r in run["subjects"] if r["subject"] == subject]
            assert summary["per_subject_dice"][arm][subject] == pytest.approx(np.mean(values), abs=1e-9)
    base = [summary["per_subject_dice"]["unetpp"][s] for s in subjects]
    assert set(summary["paired_vs_baseline"]) == set(EXPECTED_ARMS) - {"unetpp"}
    for arm, test in summary["paired_vs_baseline"].items():
        values = [summary["per_subject_dice"][arm][s] for s in subjects]
        diff = np.asarray(values) - np.asarray(base)
        assert test["n"] == len(subjects)
        assert test["mean_difference"] == pytest.approx(diff.mean(), abs=1e-9)
        assert test["n_better"] == int((diff > 0).sum()) and test["n_worse"] == int((diff < 0).sum())
        if np.any(diff != 0):
            expected = wilcoxon(values, base, zero_method="wilcox", alternative="two-sided")
            assert test["p_value"] == pytest.approx(float(expected.pvalue), abs=1e-9)
            assert test["statistic"] == pytest.approx(float(expected.statistic), abs=1e-9)
        else:
            assert test["p_value"] == 1.0
    with open(out / "paired_tests.csv", newline="") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    for arm, test in summary["paired_vs_baseline"].items():
        assert float(rows[arm]["p_value"]) == pytest.approx(test["p_value"], abs=1e-5)


def test_docs_page_has_command_machine_tables_and_a_human_section(quick_study: dict) -> None:
    text = quick_study["docs"].read_text()
    assert "python scripts/ablation.py --quick" in text
    assert "torch" in text and "cores" in text and "device `cpu`" in text
    assert "| GRCSF (full) |" in text
    assert ablation.READING_HEADING in text
    for name in ("ablation_arms.png", "example_overlays.png"):
        assert f"](figures/{name})" in text
        assert (quick_study["docs"].parent / "figures" / name).is_file()


def test_a_rerun_skips_finished_runs(quick_study: dict) -> None:
    out = quick_study["out"]
    result = out / "runs" / "unet" / "seed0" / "result.json"
    before = result.stat().st_mtime_ns
    payload = ablation.run_study(
        out, scale_name="quick", arms=["unet", "unetpp"], k_study=(), auroc=False, progress=False
    )
    assert result.stat().st_mtime_ns == before  # not trained again
    assert list(payload["summary"]["arms"]) == ["unet", "unetpp"]
    assert payload["meta"]["phase_seconds"]["0 training + evaluation runs"] >= 0


def test_a_rerun_keeps_the_hand_written_reading(quick_study: dict, tmp_path: Path) -> None:
    docs = tmp_path / "results.md"
    docs.write_text(quick_study["docs"].read_text().replace("_Not written yet._", "GCU helped a little."))
    meta = dict(quick_study["payload"]["meta"], date="a later date")
    ablation.write_docs(docs, quick_study["out"], "| fresh table |\n", [], meta)
    text = docs.read_text()
    assert "GCU helped a little." in text and "_Not written yet._" not in text
    assert "| fresh table |" in text and "a later date" in text
    assert text.count(ablation.READING_HEADING) == 1


def test_paired_wilcoxon_edge_cases() -> None:
    same = ablation.paired_wilcoxon([0.2, 0.4, 0.6], [0.2, 0.4, 0.6])
    assert same["p_value"] == 1.0 and same["n_nonzero"] == 0
    test = ablation.paired_wilcoxon([0.5, 0.6, 0.7, float("nan"), 0.9], [0.4, 0.5, 0.5, 0.1, 0.95])
    assert test["n"] == 4 and test["n_better"] == 3 and test["n_worse"] == 1
    assert test["p_value"] == pytest.approx(wilcoxon([0.5, 0.6, 0.7, 0.9], [0.4, 0.5, 0.5, 0.95]).pvalue)
    with pytest.raises(ValueError, match="equal lengths"):
        ablation.paired_wilcoxon([0.1], [0.1, 0.2])


def test_lesion_contrasts_follow_the_lesion_records() -> None:
    truth = np.zeros((12, 12, 12), dtype=bool)
    truth[1:4, 1:4, 1:4] = True  # component 1
    truth[8:11, 8:11, 8:11] = True  # component 2
    lesions = [
        {"voxels": 27, "contrast": 0.6, "centroid_vox": [9.0, 9.0, 9.0]},
        {"voxels": 27, "contrast": 0.2, "centroid_vox": [2.0, 2.0, 2.0]},
    ]
    eye = np.eye(4)
    assert ablation.lesion_contrasts(truth, eye, eye, lesions) == pytest.approx([0.2, 0.6])
    # a centroid just outside its lesion still finds it; a flipped grid maps through the affines
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = 11.0
    moved = [dict(lesions[0], centroid_vox=[11 - 9.0, 9.0, 9.0]), dict(lesions[1], centroid_vox=[11 - 4.6, 2.0, 2.0])]
    assert ablation.lesion_contrasts(truth, eye, flipped, moved) == pytest.approx([0.2, 0.6])
    assert math.isnan(ablation.lesion_contrasts(truth, eye, eye, lesions[:1])[0])


def test_arms_and_their_inputs() -> None:
    assert ablation.arm_network_flags("unet") == {"backbone": "unet", "gcu_levels": False, "rcu_layers": False}
    assert ablation.arm_network_flags("grcsf_k5") == {}
    with pytest.raises(ValueError, match="unknown arm"):
        ablation.arm_network_flags("transunet")
    with pytest.raises(SystemExit):
        ablation.main(["--output-dir", "/nonexistent/x", "--jobs", "0"])
