"""scripts/residual_map_study.py: the exact AUROC and the study end to end on tiny data (CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle.data.synthetic.atlas import generate_atlas_like_dataset
from bundle.networks.mae import mae_preset, save_mae
from bundle.tools import residual_map_study as study


# ------------------------------------------------------------------------------------- auroc
def test_auroc_perfect_reversed_ties() -> None:
    labels = [0, 0, 1, 1]
    assert study.auroc([0.1, 0.2, 0.8, 0.9], labels) == 1.0
    assert study.auroc([0.9, 0.8, 0.2, 0.1], labels) == 0.0
    assert study.auroc([0.5, 0.5, 0.5, 0.5], labels) == 0.5


def test_auroc_mixed_by_hand() -> None:
    # scores   0.1  0.4  0.4  0.35  0.8
    # labels    0    0    1    1     0
    # pairs (positive, negative): 2 x 3 = 6
    #   pos 0.4 : > 0.1 (1), = 0.4 (1/2), < 0.8 (0) -> 1.5
    #   pos 0.35: > 0.1 (1), < 0.4 (0),   < 0.8 (0) -> 1
    # AUROC = 2.5 / 6 = 5/12
    # (ranks: 0.1 -> 1, 0.35 -> 2, 0.4 -> 3.5 (tie), 0.8 -> 5; positives 3.5 + 2 = 5.5; (5.5 - 3) / 6)
    value = study.auroc(np.array([0.1, 0.4, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1, 0]))
    assert value == pytest.approx(5 / 12, abs=1e-12)


def test_auroc_matches_pairwise_count() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    labels = rng.random(60) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert study.auroc(scores, labels) == pytest.approx(pairwise, abs=1e-12)


def test_auroc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        study.auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="same number"):
        study.auroc([0.1, 0.2, 0.3], [0, 1])


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rm_study")
    data = root / "atlas_4mm"
    generate_atlas_like_dataset(
        data, num_subjects=2, num_cohorts=1, lesion_free_fraction=0.0, resolution_mm=4, seed=0, progress=False
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        mae = mae_preset("tiny")
    mae_path = root / "mae.pt"
    save_mae(mae, mae_path)
    return data, mae_path


def _check_rows(rows: list[dict], ratios: tuple[str, ...] = ("0.5", "0.75")) -> None:
    assert [(r["masking"], r["num_passes"]) for r in rows] == [
        ("random", 1),
        ("random", 2),
        ("stratified", 1),
        ("stratified", 2),
    ]
    for row in rows:
        for key in [*(f"auroc_r{r}" for r in ratios), "auroc_mean", "auroc_mean_seed1"]:
            assert 0.0 <= row[key] <= 1.0, (key, row[key])
        assert row["seed_variability"] >= 0.0 and math.isfinite(row["seed_variability"])
        for r in ratios:
            assert row[f"seed_variability_r{r}"] >= 0.0
        assert row["seconds_per_volume"] > 0.0


def test_run_study_and_main(tiny_setup: tuple[Path, Path], tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data, mae_path = tiny_setup
    subjects = study.load_subjects(data, max_subjects=2)
    assert len(subjects) == 2
    rows = study.run_study(mae_path, subjects, ks=(1, 2), maskings=("random", "stratified"))
    _check_rows(rows)
    # different seeds draw different masks: the maps differ somewhere in the brain
    assert any(row["seed_variability"] > 0.0 for row in rows)

    json_path, md_path = tmp_path / "out" / "study.json", tmp_path / "study.md"
    cli_rows = study.main(
        [
            "--mae",
            str(mae_path),
            "--data-dir",
            str(data),
            "--max-subjects",
            "2",
            "--ks",
            "1",
            "2",
            "--maskings",
            "random",
            "stratified",
            "--json",
            str(json_path),
            "--markdown",
            str(md_path),
            "--num-threads",
            "1",
            "--quiet",
        ]
    )
    saved = json.loads(json_path.read_text())
    assert len(saved["rows"]) == 4
    _check_rows(saved["rows"])
    assert saved["config"]["ks"] == [1, 2] and len(saved["config"]["subjects"]) == 2
    # the maps are seeded: the CLI reproduces the function's numbers (timings aside)
    for a, b in zip(rows, cli_rows):
        assert a["auroc_mean"] == b["auroc_mean"] and a["seed_variability"] == b["seed_variability"]
    table = md_path.read_text().splitlines()
    assert table[0].startswith("| masking | K |") and "auroc_mean" in table[0]
    assert len(table) == 2 + 4
