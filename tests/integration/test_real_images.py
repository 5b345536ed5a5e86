"""Real images through the bundle: the five cases of the pyradiomics 3.1.0 source archive.

The archive is fetched once from the package index into the cache (``bundle.data.reference_cases``,
sha256 checked); where it cannot be fetched the tests that need it are skipped with the reason.
``scripts/real_images.py --quick`` runs every step on them: the CT cases through the MSD Lung
evaluation (NRRD, HU check, 5 mm slices, masks in the input's grid, metrics against the real
masks, overlays), the brain MR cases through the ITK registration round trip, and the residual-map
AUROC of the real CT lesions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from bundle.data import reference_cases
from bundle.data.reference_cases import REFERENCE_CASES, fetch_reference_cases
from bundle.tools import real_images
from bundle.utils.errors import DatasetError
from PIL import Image


@pytest.fixture(scope="session")
def real_cases() -> dict[str, dict[str, str]]:
    """The five cases, from the cache or fetched into it; skipped (with the reason) when unreachable."""
    try:
        return fetch_reference_cases(timeout_s=60)
    except DatasetError as e:
        pytest.skip(f"the pyradiomics 3.1.0 archive is not available here: {e}")


def test_fetch_refuses_a_corrupt_archive_and_an_unreachable_index(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / reference_cases.PYRADIOMICS_ARCHIVE).write_bytes(b"not the archive")
    with pytest.raises(DatasetError, match="sha256 .* is not the pyradiomics 3.1.0 archive"):
        fetch_reference_cases(cache_dir=cache)
    assert not (cache / reference_cases.PYRADIOMICS_ARCHIVE).exists()  # a corrupt file is not kept
    with pytest.raises(DatasetError, match="archive is not there"):
        fetch_reference_cases(cache_dir=cache, download=False)
    monkeypatch.setattr(reference_cases, "PYRADIOMICS_URL", "http://127.0.0.1:9/pyradiomics-3.1.0.tar.gz")
    with pytest.raises(DatasetError, match="cannot be fetched"):
        fetch_reference_cases(cache_dir=cache, timeout_s=5)
    assert [p.name for p in cache.iterdir()] == []  # no partial download left behind
    # a given archive is checked, never removed
    given = tmp_path / "given.tar.gz"
    given.write_bytes(b"x")
    with pytest.raises(DatasetError, match="sha256"):
        fetch_reference_cases(cache_dir=cache, archive=given)
    assert given.is_file()


def test_the_cache_holds_every_case(real_cases: dict[str, dict[str, str]]) -> None:
    assert sorted(real_cases) == sorted(REFERENCE_CASES)
    for case in real_cases.values():
        assert all(os.path.getsize(p) > 0 for p in case.values())
    assert fetch_reference_cases(download=False) == real_cases  # a second call reads the cache


@pytest.mark.slow
def test_real_cases_through_the_bundle(real_cases: dict[str, dict[str, str]], tmp_path: Path, capsys) -> None:
    out = tmp_path / "real"
    assert real_images.main(["--output", str(out), "--quick", "--threads", "2"]) == 0
    results = json.loads((out / "results.json").read_text())

    # CT: NRRD in, HU check passed, masks in the exact grid of the 5 mm NRRD, metrics against the real masks
    ct = results["ct"]["cases"]
    assert sorted(ct) == ["lung1", "lung2"]
    for case, r in ct.items():
        g = r["geometry"]
        assert g["same_shape"] and g["same_affine"] and g["same_orientation"], (case, g)
        assert g["orientation"] == "LPS" and g["spacing_mm"][2] == 5.0
        assert 0.0 <= r["dice"] <= 1.0 and r["lesions_true"] == 1
        assert Path(r["prediction"]).is_file()
    assert [Path(p).name for p in results["ct"]["overlays"]] and all(
        Image.open(p).size[0] > 600 for p in results["ct"]["overlays"]
    )
    # brain MR: the registration round trip keeps the lesion where it was
    for case in ("brain1", "brain2"):
        r = results["brain"][case]
        assert r["registered"], r
        assert r["round_trip_dice"] > 0.85 and Path(r["figure"]).is_file()
    # residual maps of the real CT lesions: a measured AUROC per ratio (no target)
    for case in ("lung1", "lung2"):
        r = results["residual_maps"][case]
        assert 0.0 <= r["auroc_mean"] <= 1.0 and r["lesion_voxels"] > 0
    assert "| lung2 |" in (out / "results.md").read_text()
    # nothing is overwritten: a second run into the same folder stops at once
    assert real_images.main(["--output", str(out), "--quick"]) == 2
    assert "not empty" in capsys.readouterr().err
