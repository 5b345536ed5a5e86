"""Fixtures shared by the tests (plain helpers are in ``tests/helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_bundle_root, make_dataset


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Three synthetic 4 mm subjects with lesions, cropped to 8 axial slices (``make_dataset``)."""
    return make_dataset(tmp_path_factory.mktemp("small-dataset"))


@pytest.fixture(scope="session")
def small_bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle folder with a tiny random MAE and a fresh small GRCSF with its settings (``make_bundle_root``).
    Tests must not write into it: give them their own output folders."""
    return make_bundle_root(tmp_path_factory.mktemp("small-bundle"))
