"""Fixtures shared by the tests (plain helpers are in ``tests/helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import CONFIGS, make_bundle_root, make_dataset

#: the skip reason of tests marked ``cuda`` on machines without a CUDA device
NO_CUDA_REASON = "no CUDA device"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped, with their reason printed (``-ra``), where CUDA is unavailable."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Three synthetic 4 mm subjects with lesions, cropped to 8 axial slices (``make_dataset``)."""
    return make_dataset(tmp_path_factory.mktemp("small-dataset"))


@pytest.fixture(scope="session")
def small_bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle folder with a tiny random MAE and a fresh small GRCSF with its settings (``make_bundle_root``).
    Tests must not write into it: give them their own output folders."""
    return make_bundle_root(tmp_path_factory.mktemp("small-bundle"))


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bundle folder trained by the bundle's own workflows at a reduced demo scale: 12 look-alike
    subjects at 3 mm, the tiny MAE (4 epochs), the small GRCSF (2 short epochs). The weights carry
    real model settings (training spacing, residual-map reference); they barely segment, so tests
    use them for what the workflows do, not for accuracy. Returns ``{"root", "data", "models"}``;
    tests must not write into it."""
    from bundle.data.synthetic.atlas import generate_atlas_like_dataset
    from monai.bundle import run as bundle_run

    root = tmp_path_factory.mktemp("demo-model")
    data = root / "atlas_3mm"
    generate_atlas_like_dataset(data, num_subjects=12, num_cohorts=3, resolution_mm=3, seed=0, progress=False)
    common = {
        "bundle_root": str(root),
        "dataset_dir": str(data),
        "logging_file": str(CONFIGS / "logging.conf"),
        "run_id": "training",
        "progress": False,
        "num_threads": 2,
    }
    bundle_run(
        config_file=[str(CONFIGS / "train_mae.json"), str(CONFIGS / "demo.json")],
        mae_max_epochs=4,
        output_dir=str(root / "mae"),
        **common,
    )
    bundle_run(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")],
        max_epochs=2,
        max_slices_per_epoch=32,
        val_interval=1,
        output_dir=str(root / "train"),
        **common,
    )
    return {"root": root, "data": data, "models": root / "models"}
