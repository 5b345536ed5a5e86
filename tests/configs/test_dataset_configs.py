"""The per-data-set configs (configs/atlas.json, msd_lung.json, orcascore.json): the paper's settings, the inputs inference finds
(.mhd, DICOM series) and the preprocessing of each domain, on the look-alikes. Every workflow of
every data-set config runs on a tree in the release's layout in
tests/integration/test_documented_commands.py (the commands of docs/datasets.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from bundle.data.inputs import list_inputs
from bundle.data.msd_lung import load_msd_lung
from bundle.data.orcascore import find_orcascore_scans
from bundle.data.synthetic.atlas import generate_atlas_like_dataset
from bundle.data.synthetic.ct import generate_msd_lung_like, generate_orcascore_like
from monai.bundle import ConfigParser

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
        parser.read_config(_config("train.json", f"{dataset}.json"))
        for key, value in values.items():
            assert parser[key] == value, (dataset, key)
    parser = ConfigParser()
    parser.read_config(_config("train.json", "orcascore.json"))
    parser.update({"network_preset": "small", "device": "$torch.device('cpu')"})
    scheduler = parser.get_parsed_content("lr_scheduler", lazy=False)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler.factor == 0.5 and scheduler.patience == 5


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
