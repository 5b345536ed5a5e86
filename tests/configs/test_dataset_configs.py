"""The per-data-set configs (configs/datasets/*.json) drive every workflow on their look-alike data.

For ATLAS v2.0, MSD Task06 Lung and orCaScore, at toy scale: the config merged over
train_mae.json pre-trains an MAE on the data set's lesion-free slices, merged over train.json it
trains GRCSF with residual maps of that MAE, and merged over inference.json + evaluate.json it
evaluates the model on the data set's test split (orCaScore with its calcium scores). Also the
split files of scripts/prepare_dataset.py and the inputs the inference finds (.mhd, DICOM series).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from bundle.data.atlas import find_atlas_subjects
from bundle.data.inputs import list_inputs
from bundle.data.msd_lung import load_msd_lung
from bundle.data.orcascore import find_orcascore_scans
from bundle.data.synthetic.atlas import generate_atlas_like_dataset
from bundle.data.synthetic.ct import generate_msd_lung_like, generate_orcascore_like
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle import run as bundle_run

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
DATASETS = ("atlas", "msd_lung", "orcascore")


def _config(*names: str) -> list[str]:
    return [str(CONFIGS / name) for name in names]


@pytest.fixture(scope="module")
def look_alikes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small look-alikes of the three data sets."""
    root = tmp_path_factory.mktemp("datasets")
    atlas = root / "atlas"
    generate_atlas_like_dataset(
        atlas, num_subjects=8, num_cohorts=4, lesion_free_fraction=0.25, resolution_mm=4, seed=0, progress=False
    )
    lung = Path(generate_msd_lung_like(root / "Task06_Lung", num_cases=6, shape=(64, 64, 32), seed=0, progress=False))
    orca = Path(
        generate_orcascore_like(
            root / "orCaScore", num_cases=6, shape=(96, 96, 12), spacing=(1.8, 1.8, 3.0), seed=0, progress=False
        )
    )
    return {"atlas": atlas, "msd_lung": lung, "orcascore": orca}


def _common(dataset: str, data: Path, bundle_root: Path) -> dict[str, Any]:
    overrides: dict[str, Any] = {"bundle_root": str(bundle_root), "dataset_dir": str(data), "num_workers": 0}
    if dataset == "atlas":
        overrides["atlas_num_subsets"] = 1  # 4 cohorts: 3 train (2 + 1 validation), 1 test
    if dataset == "msd_lung":
        # keep the look-alike's coarse grid: one 96 x 96 window per slice
        overrides["preprocessing_options"] = {"window": "lung"}
    return overrides


def _mae_overrides(dataset: str, data: Path, bundle_root: Path) -> dict[str, Any]:
    """Toy scale of train_mae.json on top of a data set config."""
    return {
        **_common(dataset, data, bundle_root),
        "mae_preset": "tiny",
        "mae_img_size": 32,
        "mae_max_epochs": 1,
        "mae_batch_size": 16,
        "mae_val_slice_stride": 4,
        "progress": False,
        "mae_log_interval": 1000,
    }


def _overrides(dataset: str, data: Path, bundle_root: Path, **extra: Any) -> dict[str, Any]:
    """Toy scale of train.json / inference.json on top of a data set config; outputs under bundle_root."""
    overrides: dict[str, Any] = {
        **_common(dataset, data, bundle_root),
        "network_preset": "small",
        "input_size": [96, 96],
        "rcu_patch_sizes": [4, 4, 8],
        "network_options": {"features": [4, 8, 8, 8, 8, 4]},
        "num_passes": 1,
        "max_epochs": 1,
        "warmup_epochs": 0,
        "batch_size": 4,
        "max_slices_per_epoch": 8,
        "sw_batch_size": 64,
        "amp": False,
        "num_overlays": 1,
    }
    overrides.update(extra)
    return overrides


@pytest.mark.parametrize("dataset", DATASETS)
def test_dataset_config_trains_and_evaluates(dataset: str, look_alikes: dict[str, Path], tmp_path: Path) -> None:
    config = f"datasets/{dataset}.json"
    overrides = _overrides(dataset, look_alikes[dataset], tmp_path)

    mae_overrides = _mae_overrides(dataset, look_alikes[dataset], tmp_path)
    bundle_run(run_id="training", config_file=_config("train_mae.json", config), logging_file=False, **mae_overrides)
    parser = ConfigParser()
    parser.read_config(_config("train.json", config))
    parser.update(overrides)
    ckpt_dir = Path(parser.get_parsed_content("ckpt_dir"))
    assert ckpt_dir.is_relative_to(tmp_path) and (ckpt_dir / "mae.pt").is_file()

    workflow = ConfigWorkflow(
        config_file=_config("train.json", config), workflow_type="train", logging_file=False, **overrides
    )
    workflow.initialize()
    split = workflow.parser.get_parsed_content("dataset_split")
    train, val = split["training"], split["validation"]
    assert train and val and not {r["image"] for r in train} & {r["image"] for r in val}
    workflow.run()
    workflow.finalize()
    assert (ckpt_dir / "model.pt").is_file()

    evaluation = ConfigWorkflow(
        config_file=_config("inference.json", "evaluate.json", config),
        workflow_type="infer",
        run_id="evaluating",
        logging_file=False,
        **overrides,
    )
    evaluation.initialize()
    test_records = evaluation.parser.get_parsed_content("evaluation_records")
    assert test_records and not {r["image"] for r in test_records} & {r["image"] for r in train + val}
    evaluation.run()
    eval_dir = Path(evaluation.parser.get_parsed_content("output_dir"))
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["n_subjects"] == len(test_records) and summary["n_failed"] == 0
    means = summary["mean_over_subjects"]
    assert 0.0 <= means["dice"] <= 1.0
    if dataset == "orcascore":
        # the calcium scores of the test CT, with its reference Agatston score from the HU image
        assert {"orcascore_f1_vol", "orcascore_agatston_ref", "orcascore_sens_lesion"} <= set(means)
        header = (eval_dir / "metrics.csv").read_text().splitlines()[0].split(",")
        assert "orcascore_f1_vol" in header
    else:
        assert "orcascore_f1_vol" not in means


def test_dataset_configs_use_the_paper_settings() -> None:
    """docs/method.md §6: loss, input size and schedule per data set."""
    expected = {
        "atlas": {
            "loss_type": "dice_focal",
            "input_size": [224, 224],
            "batch_size": 21,
            "preprocessing_domain": "brain",
        },
        "msd_lung": {
            "loss_type": "dice_focal",
            "input_size": [224, 224],
            "batch_size": 21,
            "preprocessing_domain": "ct",
        },
        "orcascore": {"loss_type": "focal", "input_size": [512, 512], "batch_size": 2, "preprocessing_domain": "ct"},
    }
    for dataset, values in expected.items():
        parser = ConfigParser()
        parser.read_config(_config("train.json", f"datasets/{dataset}.json"))
        for key, value in values.items():
            assert parser[key] == value, (dataset, key)
    parser = ConfigParser()
    parser.read_config(_config("train.json", "datasets/orcascore.json"))
    parser.update({"network_preset": "small", "device": "$torch.device('cpu')"})
    scheduler = parser.get_parsed_content("lr_scheduler", lazy=False)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler.factor == 0.5 and scheduler.patience == 5


def test_prepare_dataset_writes_the_splits(look_alikes: dict[str, Path], tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "prepare_dataset.py")
    expected_counts = {
        "msd_lung": len(load_msd_lung(look_alikes["msd_lung"])),
        "orcascore": len(find_orcascore_scans(look_alikes["orcascore"])),
    }
    for dataset in DATASETS:
        out = tmp_path / dataset
        args = [sys.executable, script, dataset, "--root", str(look_alikes[dataset]), "--output", str(out)]
        if dataset == "atlas":
            args += ["--num-subsets", "1"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        written = [Path(p) for p in done.stdout.split()]
        assert written and all(p.is_file() for p in written)
        if dataset == "atlas":
            subset = json.loads((out / "atlas_subset-0.json").read_text())
            images = [r["image"] for r in subset["training"] + subset["test"]]
            assert len(images) == len(find_atlas_subjects(look_alikes["atlas"]))
        else:
            split = json.loads(written[0].read_text())
            sizes = [len(split[k]) for k in ("training", "validation", "test")]
            assert sum(sizes) == expected_counts[dataset] and min(sizes) >= 1
        # existing files are kept
        again = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert again.returncode == 2 and "exist" in again.stderr
    bad = subprocess.run(
        [sys.executable, script, "msd_lung", "--root", str(tmp_path / "missing"), "--output", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "missing" in bad.stderr and "Traceback" not in bad.stderr


def test_inference_inputs_mhd_and_dicom_series(look_alikes: dict[str, Path]) -> None:
    """list_inputs finds MetaImage files and treats a DICOM series folder as one input."""
    records = find_orcascore_scans(look_alikes["orcascore"])
    mhd = records[0]["image"]
    folder = str(Path(mhd).parent)
    assert mhd in list_inputs(folder, (".mhd",))
    dicom = [r["image_dicom"] for r in records if r.get("image_dicom")]
    assert dicom, "the orCaScore look-alike writes DICOM series"
    assert list_inputs(dicom[0]) == [dicom[0]]
    found = list_inputs(str(Path(dicom[0]).parent))
    assert dicom[0] in found and all(Path(p).is_dir() for p in found)


def test_volume_preprocessing_domains(look_alikes: dict[str, Path]) -> None:
    """Each domain name builds its pipeline; an unknown one is refused with the choices."""
    from bundle.transforms.ct import HUWindowd
    from bundle.transforms.domains import PREPROCESSING_DOMAINS, volume_preprocessing
    from bundle.transforms.mni import EnsureMNIGridd, RegisterToMNId

    expected = {"brain_mni": EnsureMNIGridd, "brain_native": RegisterToMNId, "ct": HUWindowd}
    for domain in PREPROCESSING_DOMAINS:
        pipeline = volume_preprocessing(domain, keys=["image"], label_key=None)
        if domain in expected:
            assert any(isinstance(t, expected[domain]) for t in pipeline.flatten().transforms), domain
    record = load_msd_lung(look_alikes["msd_lung"])[0]
    item = volume_preprocessing("ct", window="lung")({"image": record["image"], "label": record["label"]})
    assert (
        item["image"].shape == item["label"].shape
        and 0.0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1.0
    )
    with pytest.raises(ValueError, match="brain_native"):
        volume_preprocessing("pet")
