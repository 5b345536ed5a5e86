"""The repository is a MONAI bundle: layout, metadata and the installed package."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Fields the MONAI bundle specification asks of configs/metadata.json.
REQUIRED_METADATA_FIELDS = (
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "name",
    "task",
    "description",
    "authors",
    "copyright",
    "data_source",
    "data_type",
    "image_classes",
    "label_classes",
    "pred_classes",
    "eval_metrics",
    "intended_use",
    "references",
    "network_data_format",
)


def _metadata() -> dict:
    with open(ROOT / "configs" / "metadata.json") as f:
        return json.load(f)


def test_metadata_has_spec_fields() -> None:
    meta = _metadata()
    missing = [k for k in REQUIRED_METADATA_FIELDS if k not in meta]
    assert not missing, f"configs/metadata.json lacks {missing}"
    assert meta["version"] in meta["changelog"], "the current version needs a changelog entry"
    fmt = meta["network_data_format"]
    assert set(fmt) >= {"inputs", "outputs"}
    for group in ("inputs", "outputs"):
        for name, desc in fmt[group].items():
            assert len(desc["channel_def"]) == desc["num_channels"], f"{group}.{name}: channel_def size"


def test_metadata_versions_match_installed() -> None:
    import monai
    import numpy
    import torch

    meta = _metadata()
    # The bundle states the versions it was built with; a mismatch of the major.minor of the
    # libraries that define the config syntax and the weights format is worth failing on.
    assert monai.__version__.split(".")[:2] == meta["monai_version"].split(".")[:2]
    assert torch.__version__.split("+")[0].split(".")[:2] == meta["pytorch_version"].split(".")[:2]
    assert numpy.__version__.split(".")[0] == meta["numpy_version"].split(".")[0]


def test_root_metadata_is_a_symlink_to_configs() -> None:
    root_meta = ROOT / "metadata.json"
    assert root_meta.is_symlink(), "metadata.json must be a symlink, not a copy"
    assert os.path.realpath(root_meta) == os.path.realpath(ROOT / "configs" / "metadata.json")


def test_monai_verifies_metadata_schema_fields() -> None:
    # MONAI's own parser must read the metadata (this is what `monai.bundle run` loads).
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_meta(str(ROOT / "configs" / "metadata.json"))
    assert parser.get("_meta_#network_data_format#inputs#image#num_channels") == 3


@pytest.mark.parametrize("sub", ["networks", "transforms", "data", "metrics", "engines"])
def test_package_imports(sub: str) -> None:
    import importlib

    mod = importlib.import_module(f"bundle.{sub}")
    assert mod.__name__ == f"bundle.{sub}"


def test_layout() -> None:
    for path in ("configs/logging.conf", "LICENSE", "README.md", "docs/README.md", "docs/data_license.txt"):
        assert (ROOT / path).is_file(), f"missing {path}"
    assert "Apache License" in (ROOT / "LICENSE").read_text()


# ids that training and inference must define identically; the model's settings (network, its
# input, the residual maps, the preprocessing) are not among them: inference reads them from the
# weights file (tests/engines/test_inference.py checks that training records them)
SHARED_IDS = (
    "bundle_root",
    "ckpt_dir",
    "dataset_dir",
    "device",
    "mae_path",
    "network",
    "reader",
    "seed",
    "amp",
    "debug",
    "progress",
)


def _config(name: str) -> dict:
    with open(ROOT / "configs" / f"{name}.json") as f:
        return json.load(f)


def test_train_and_inference_share_definitions() -> None:
    train, infer = _config("train"), _config("inference")
    differing = [k for k in SHARED_IDS if train.get(k, "<missing>") != infer.get(k, "<missing>")]
    assert not differing, f"train.json and inference.json differ on {differing}"
    # evaluation re-creates the training split: same fraction and seed
    assert _config("evaluate")["val_fraction"] == train["val_fraction"]
    assert infer["seed"] == train["seed"]


@pytest.mark.parametrize("name", ["train", "train_mae", "inference"])
def test_every_config_parses(name: str) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / f"{name}.json"))
    parser.parse(True)
    assert parser.get("network_def") is not None or parser.get("mae_def") is not None


def test_one_version() -> None:
    """``bundle.__version__`` is the version: the metadata repeats it, the package is built with it."""
    import re

    import bundle

    assert _metadata()["version"] == bundle.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+; 3.10 is supported)
    assert re.search(r'^dynamic = \["version"\]$', pyproject, re.M)
    assert not re.search(r"^version = \"", pyproject, re.M)  # no literal version in [project]
    assert re.search(r'^version = \{ attr = "bundle.__version__" \}$', pyproject, re.M)


def test_scripts_are_command_line_programs_only() -> None:
    """scripts/ is CLI-only (README): no package, each file a program over bundle.tools, nothing uses it
    as code (the configs name the `bundle` package; the zoo's bundles would import `scripts`)."""
    scripts = sorted((ROOT / "scripts").iterdir())
    assert scripts and not (ROOT / "scripts" / "__init__.py").exists()
    for path in scripts:
        text = path.read_text()
        assert path.suffix == ".py" and text.startswith("#!/usr/bin/env python"), path
        assert os.access(path, os.X_OK) and 'if __name__ == "__main__":' in text, path
        assert "from bundle.tools." in text, path
    for config in (ROOT / "configs").rglob("*.json"):
        assert "scripts." not in config.read_text(), config


def test_models_folder_documents_how_weights_arrive() -> None:
    readme = (ROOT / "models" / "README.md").read_text()
    for name in ("mae.pt", "model.pt", "model.ts", "configs/train_mae.json", "configs/train.json", "large_files.yml"):
        assert name in readme, name
