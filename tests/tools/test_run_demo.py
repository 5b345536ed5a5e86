"""The demo hands its weights to ``models/`` only when that folder has none."""

from __future__ import annotations

from pathlib import Path

from bundle.tools.run_demo import WEIGHT_FILES, install_weights


def _trained(tmp_path: Path) -> Path:
    trained = tmp_path / "run" / "models"
    trained.mkdir(parents=True)
    for name in WEIGHT_FILES:
        (trained / name).write_bytes(f"new {name}".encode())
    return trained


def test_weights_are_copied_into_an_empty_models_folder(tmp_path):
    trained = _trained(tmp_path)
    written = install_weights(trained, tmp_path / "models")
    assert sorted(p.name for p in written) == sorted(WEIGHT_FILES)
    for name in WEIGHT_FILES:
        assert (tmp_path / "models" / name).read_bytes() == f"new {name}".encode()
    assert not list((tmp_path / "models").glob(".*partial"))


def test_weights_already_there_are_never_replaced(tmp_path):
    trained = _trained(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"the user's own")
    assert install_weights(trained, models) == []
    assert (models / "model.pt").read_bytes() == b"the user's own"
    # no mae.pt either: a model.pt without the MAE it was trained with would be a mismatched pair
    assert not (models / "mae.pt").exists()
