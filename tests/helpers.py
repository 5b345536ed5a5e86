"""Helpers shared by the tests: the repository's paths, small data sets and bundle folders, config runs.

(Fixtures built on them live in ``tests/conftest.py``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from bundle.data.synthetic.atlas import generate_atlas_like_dataset
from bundle.networks import MODEL_SETTING_DEFAULTS, ModelSettings, grcsf_from_settings, mae_digest
from bundle.networks.mae import mae_preset, save_mae
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run

#: the repository (bundle) root
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
NUM_SLICES = 8  # axial slices kept per test volume: lesions in view, little CPU time

#: test scale of the model settings: small network at 64 x 64 (decoder layers 16/32/64 px,
#: divisible by 4/4/8); with the tiny MAE of :func:`make_bundle_root`
SMALL = {"network_preset": "small", "input_size": [64, 64], "rcu_patch_sizes": [4, 4, 8], "num_passes": 1}


def make_dataset(root: Path, num_subjects: int = 3) -> list[dict]:
    """Synthetic 4 mm subjects, cropped to the ``NUM_SLICES`` axial slices around their lesions.

    Returns records ``{"subject", "cohort", "image", "label", "source_dir"}``; the generated data set
    (uncropped) stays in ``root / "atlas"`` (``source_dir``).
    """
    source = root / "atlas"
    generated = generate_atlas_like_dataset(
        source,
        num_subjects=num_subjects,
        num_cohorts=2,
        lesion_free_fraction=0.0,
        resolution_mm=4,
        seed=0,
        progress=False,
    )
    out_dir = root / "cropped"
    out_dir.mkdir(parents=True)
    records = []
    for rec in generated:
        image, label = nib.load(rec["image"]), nib.load(rec["label"])
        lab = np.asarray(label.dataobj)
        centre = int(np.argmax((lab > 0).sum(axis=(0, 1))))
        z0 = int(np.clip(centre - NUM_SLICES // 2, 0, lab.shape[2] - NUM_SLICES))
        affine = image.affine.copy()
        affine[:3, 3] += affine[:3, 2] * z0  # the crop starts z0 voxels further along the third axis
        paths = {}
        for key, img, dtype in (("image", image, np.float32), ("label", label, np.uint8)):
            data = np.asarray(img.dataobj)[:, :, z0 : z0 + NUM_SLICES].astype(dtype)
            paths[key] = str(out_dir / f"{rec['subject']}_{key}.nii.gz")
            nib.save(nib.Nifti1Image(data, affine), paths[key])
        records.append({"subject": rec["subject"], "cohort": rec["cohort"], **paths, "source_dir": str(source)})
    return records


def save_model(network: torch.nn.Module, path: Path, mae_path: Path | None = None, **settings: Any) -> Path:
    """``network``'s weights with model settings (:data:`SMALL` over the defaults, then ``settings``),
    as the training's best-model saver writes them; the MAE's sha256 when ``mae_path`` is given."""
    recorded = {**SMALL, **settings}
    if mae_path is not None:
        recorded["mae_sha256"] = mae_digest(mae_path)
    torch.save({"model": network.state_dict(), "model_settings": ModelSettings(**recorded).state_dict()}, path)
    return path


def make_bundle_root(root: Path) -> Path:
    """A bundle root with ``models/mae.pt`` (tiny random MAE) and ``models/model.pt`` (fresh network
    at :data:`SMALL` scale, with its model settings)."""
    models = root / "models"
    models.mkdir(parents=True)
    torch.manual_seed(0)
    save_mae(mae_preset("tiny"), models / "mae.pt")
    network = grcsf_from_settings({**MODEL_SETTING_DEFAULTS, **SMALL})
    save_model(network, models / "model.pt", mae_path=models / "mae.pt")
    return root


def make_parser(bundle_root: Path, configs: tuple[str, ...] = ("inference.json",), **overrides) -> ConfigParser:
    """The configs merged in order, at test scale, with ``bundle_root`` and ``overrides`` applied."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update({"bundle_root": str(bundle_root), **overrides})
    return parser


def run_config(bundle_root: Path, configs: tuple[str, ...] = ("inference.json",), run_id: str = "run", **overrides):
    """``python -m monai.bundle run <run_id> --config_file <configs> ...`` in-process (same code path)."""
    bundle_run(
        run_id=run_id,
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        bundle_root=str(bundle_root),
        **overrides,
    )


def flip_to_lps(src: str, dst: Path) -> None:
    """Write ``src`` with voxel axes 0 and 1 reversed and an affine compensating it (same world image)."""
    img = nib.load(src)
    data = np.asarray(img.dataobj)[::-1, ::-1].copy()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, img.affine @ flip), str(dst))


def tensorboard_scalars(log_dir: Path) -> dict[str, list[float]]:
    """Every scalar series (values in step order) of the TensorBoard event files in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
