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
"""The paper's ablation (Tables 1, 3-5, Fig. 9) reproduced on the synthetic ATLAS look-alike.

Arms (paper Table 3 and Table 1 rows), all with one preset's widths (``small`` at demo scale,
``paper`` at large scale), trained with the same cohort-disjoint split, budget and seeds:

============================  ===================================================  =====================
arm                           network (``grcsf_preset`` flags)                     input it sees
============================  ===================================================  =====================
``unet``                      U-Net backbone, no GCU, no RCU                       the image alone
``unetpp``                    UNet++ backbone, no GCU, no RCU                      the image alone
``unetpp_gcu``                UNet++ + GCU                                         the image alone
``unetpp_gcu_rcu_noscore``    UNet++ + GCU + RCU without the importance score      image + residual maps
``grcsf``                     full GRCSF                                           image + residual maps
``grcsf_k<K>``                full GRCSF, residual maps from K MAE passes          image + residual maps
============================  ===================================================  =====================

The arms without RCU are fed the same tensors, but the network routes only the image channel into
its encoder and ignores the residual-map channels when every RCU is off (``docs/architecture.md``),
so they see exactly what the paper's baselines see. Everything else comes from the bundle:

1. data: the look-alike of :mod:`bundle.data.synthetic.atlas` (generated once per scale), split
   cohort-disjoint into train and test by :func:`bundle.data.atlas.atlas_subset_splits` (the paper's
   four subsets; :func:`bundle.engines.split_records` when that adapter is absent); the split is
   written to ``<out>/split.json`` (a MONAI datalist that the workflows read);
2. MAE: ``configs/train_mae.json`` + ``configs/demo.json`` on the training subjects only, once;
3. residual maps: computed once per (volume, K) by the training workflow's disk cache
   (``<out>/cache``, mask seed fixed) and shared by every arm and seed;
4. training: ``configs/train.json`` + ``configs/demo.json`` through monai.bundle's ConfigParser with
   the arm's network flags and the study budget as overrides (fixed number of epochs, last weights,
   no model selection on the test cohorts);
5. evaluation on the test subjects with the workflow's own preprocessing and slice inferer:
   :func:`bundle.metrics.segmentation_metrics` per subject (means over the lesion-bearing test
   subjects of each subset, then over subsets, docs/method.md §8), per-lesion Dice by size (paper
   Fig. 9 bins in mm^3 = 1 mm voxels) and by the generator's lesion contrast, Wilcoxon signed-rank
   test of each arm against UNet++ over the test subjects (per-subject Dice averaged over seeds);
6. residual-map studies (paper Tables 4-5): AUROC of the maps for K = 1..6 with random and
   stratified masking, for the single ratios 0.3/0.5/0.75/0.9 and the 0.5+0.75 pair
   (``scripts/residual_map_study.py``), and the Dice of the full model for the K values of
   ``--k-study``.

Every (arm, seed) run writes ``<out>/runs/<arm>/seed<k>/result.json`` last; a run whose result
exists is skipped, so an interrupted study continues where it stopped (an unfinished run resumes
from its per-epoch checkpoint). Outputs: ``results.json``, CSV tables, ``tables.md`` and
``figures/*.png`` in ``<out>``; ``--docs docs/results.md`` writes the results page (figures copied
to ``docs/figures/``).

Examples::

    python scripts/ablation.py --quick --output-dir /tmp/ablation-quick      # CI smoke run, < 3 min
    python scripts/ablation.py --output-dir outputs/ablation --jobs 2 --docs docs/results.md
    python scripts/ablation.py --scale large --device cuda --output-dir outputs/ablation-gpu
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bundle.tools import BUNDLE_ROOT

__all__ = [
    "ARMS",
    "BASELINE_ARM",
    "CONTRAST_BINS",
    "SCALES",
    "SIZE_BINS_MM3",
    "Scale",
    "arm_network_flags",
    "lesion_contrasts",
    "main",
    "paired_wilcoxon",
    "run_study",
]

logger = logging.getLogger("ablation")

#: Network flags of every arm (overrides of ``bundle.networks.grcsf_preset``), paper Table 3 order.
ARMS: dict[str, dict[str, Any]] = {
    "unet": {"backbone": "unet", "gcu_levels": False, "rcu_layers": False},
    "unetpp": {"gcu_levels": False, "rcu_layers": False},
    "unetpp_gcu": {"rcu_layers": False},
    "unetpp_gcu_rcu_noscore": {"importance_score": False},
    "grcsf": {},
}
#: Human-readable arm names for tables and figures.
ARM_LABELS: dict[str, str] = {
    "unet": "U-Net",
    "unetpp": "UNet++",
    "unetpp_gcu": "UNet++ + GCU",
    "unetpp_gcu_rcu_noscore": "UNet++ + GCU + RCU w/o score",
    "grcsf": "GRCSF (full)",
}
#: The arm every other arm is compared with (paper: the UNet++ backbone).
BASELINE_ARM = "unetpp"
#: Lesion-size bins of the paper's Fig. 9 (1-100, 100-1000, > 1000 voxels of 1 mm), in mm^3.
SIZE_BINS_MM3: tuple[float, ...] = (0.0, 100.0, 1000.0, math.inf)
#: Lesion-contrast bins (fractional darkening of the look-alike's lesions).
CONTRAST_BINS: tuple[float, ...] = (0.0, 0.45, 0.6, 1.0)
#: Per-run metrics reported per arm (means over seeds of the per-run means).
METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "fpr", "vose", "lesion_f1")


@dataclass(frozen=True)
class Scale:
    """Sizes of one study scale (data, MAE, training budget, studies)."""

    resolution_mm: int
    num_subjects: int
    num_cohorts: int
    input_size: int
    network_preset: str
    max_epochs: int
    slices_per_epoch: int
    batch_size: int
    mae_epochs: int
    num_passes: int
    seeds: tuple[int, ...]
    auroc_ks: tuple[int, ...]
    k_study: tuple[int, ...]
    auroc_subjects: int
    inference_size: int = 0
    num_subsets: int = 4
    learning_rate: float = 3e-4
    warmup_epochs: int = 1
    lesion_oversampling: float = 10.0
    sw_batch_size: int = 32
    extra_overrides: dict[str, Any] = field(default_factory=dict)


#: ``quick``: CI smoke test (minutes, meaningless numbers); ``demo``: the CPU study (<= 60 min on
#: 2 cores with --jobs 2); ``large``: a GPU study.
SCALES: dict[str, Scale] = {
    "quick": Scale(
        resolution_mm=4,
        num_subjects=8,
        num_cohorts=4,
        input_size=64,
        network_preset="small",
        max_epochs=1,
        slices_per_epoch=8,
        batch_size=4,
        mae_epochs=1,
        num_passes=1,
        seeds=(0, 1),
        auroc_ks=(1, 2),
        k_study=(2,),
        auroc_subjects=1,
        num_subsets=2,
        sw_batch_size=64,
    ),
    "demo": Scale(
        resolution_mm=3,
        num_subjects=60,
        num_cohorts=20,
        input_size=64,
        network_preset="small",
        max_epochs=12,
        slices_per_epoch=320,
        batch_size=8,
        # the MAE's validation loss still falls by a third between epochs 2 and 5; 40 epochs
        # (about 2.5 min) give the residual maps a fair chance at this scale
        mae_epochs=40,
        num_passes=2,
        seeds=(0, 1, 2),
        auroc_ks=(1, 2, 3, 4, 5, 6),
        k_study=(1, 5),
        auroc_subjects=8,
        inference_size=96,
    ),
    "large": Scale(
        resolution_mm=2,
        num_subjects=120,
        num_cohorts=20,
        input_size=128,
        network_preset="paper",
        max_epochs=30,
        slices_per_epoch=4000,
        batch_size=21,
        mae_epochs=100,
        num_passes=5,
        seeds=(0, 1, 2),
        auroc_ks=(1, 2, 3, 4, 5, 6),
        k_study=(1, 2),
        auroc_subjects=24,
        learning_rate=1e-4,
        warmup_epochs=5,
        lesion_oversampling=3.0,
        sw_batch_size=64,
    ),
}


def arm_network_flags(arm: str) -> dict[str, Any]:
    """``grcsf_preset`` overrides of an arm; ``grcsf_k<K>`` arms are the full model."""
    if arm in ARMS:
        return dict(ARMS[arm])
    if _k_of_arm(arm) is not None:
        return {}
    raise ValueError(f"unknown arm {arm!r}; expected one of {list(ARMS)} or grcsf_k<K>.")


def _k_of_arm(arm: str) -> int | None:
    if arm.startswith("grcsf_k") and arm[len("grcsf_k") :].isdigit():
        return int(arm[len("grcsf_k") :])
    return None


def arm_label(arm: str) -> str:
    k = _k_of_arm(arm)
    return ARM_LABELS.get(arm, f"GRCSF, K={k}" if k is not None else arm)


# ----------------------------------------------------------------------------- small helpers


def _write_json(obj: Any, path: Path) -> None:
    from bundle.utils.io import json_safe, write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_safe(obj), str(path), overwrite=True)


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    from bundle.utils.io import write_csv

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv([{k: _cell(v, 6) for k, v in r.items()} for r in rows], columns, str(path), overwrite=True)


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.{digits}f}"
    return str(value)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) of the finite values; NaN when undefined."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def machine_description(device: str) -> dict[str, Any]:
    """CPU model, cores, torch version and device, for the results page."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


# ----------------------------------------------------------------------------- data and split


def prepare_data(data_dir: Path, scale: Scale, seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """The look-alike of this scale in ``data_dir``: generated once, reused when its settings match."""
    from bundle.data.synthetic.atlas import ATLAS_LESION_INDEX, generate_atlas_like_dataset, load_atlas_like_records

    index = data_dir / ATLAS_LESION_INDEX
    wanted = {
        "num_subjects": scale.num_subjects,
        "num_cohorts": scale.num_cohorts,
        "resolution_mm": scale.resolution_mm,
        "seed": seed,
    }
    if index.is_file():
        params = json.loads(index.read_text()).get("generator_parameters", {})
        different = {k: (params.get(k), v) for k, v in wanted.items() if params.get(k) != v}
        if different:
            raise SystemExit(
                f"{data_dir} holds a data set made with other settings ({different}, found vs wanted): "
                "choose another --data-dir or delete the folder."
            )
        logger.info(f"reusing the data set in {data_dir}")
        return load_atlas_like_records(data_dir)
    logger.info(f"generating {scale.num_subjects} subjects at {scale.resolution_mm} mm in {data_dir}")
    return generate_atlas_like_dataset(
        data_dir,
        num_subjects=scale.num_subjects,
        num_cohorts=scale.num_cohorts,
        resolution_mm=scale.resolution_mm,
        seed=seed,
        progress=progress,
    )


def make_split(records: Sequence[Mapping[str, Any]], num_subsets: int = 4, seed: int = 0) -> dict[str, Any]:
    """Cohort-disjoint train/test split: the paper's subsets when the ATLAS adapter is there."""
    keep = ("subject", "cohort", "image", "label")
    from bundle.data.atlas import atlas_subset_splits

    if atlas_subset_splits is not None:
        subsets = atlas_subset_splits(records, num_subsets=num_subsets, test_fraction=0.2, seed=seed)
        train = [{**{k: r[k] for k in keep}, "subset": s["subset"]} for s in subsets for r in s["training"]]
        test = [{**{k: r[k] for k in keep}, "subset": s["subset"]} for s in subsets for r in s["test"]]
        method = f"bundle.data.atlas.atlas_subset_splits(num_subsets={num_subsets}, test_fraction=0.2)"
    else:
        from bundle.data.records import split_records

        tr, te = split_records(records, val_fraction=0.2, seed=seed)
        train = [{k: r[k] for k in keep} for r in tr]
        test = [{k: r[k] for k in keep} for r in te]
        method = "bundle.data.split_records(val_fraction=0.2)"
    train_cohorts = {r["cohort"] for r in train}
    if train_cohorts & {r["cohort"] for r in test}:
        raise RuntimeError("the split is not cohort-disjoint")  # the adapters guarantee it
    # the workflows validate on the data list's validation list: here the test subjects, on which
    # no validation runs (val_interval beyond the schedule), so nothing is selected on them
    return {"method": method, "seed": seed, "training": train, "validation": test, "test": test}


def lesion_contrasts(
    truth: np.ndarray, truth_affine: np.ndarray, file_affine: np.ndarray, lesions: Sequence[Mapping[str, Any]]
) -> np.ndarray:
    """Contrast of every ground-truth lesion component, from the generator's per-lesion records.

    Each generated lesion is assigned to the component nearest to its centroid (the centroid of an
    irregular lesion can lie just outside it); a component made of several touching lesions gets
    their voxel-weighted mean contrast.

    Args:
        truth: binary (X, Y, Z) mask in the grid of ``truth_affine`` (after preprocessing).
        truth_affine: 4x4 voxel-to-world affine of ``truth``.
        file_affine: 4x4 affine of the label file, the grid of the records' ``centroid_vox``.
        lesions: ``lesions.json`` records ``{"voxels", "contrast", "centroid_vox"}``.

    Returns:
        (n_components,) contrasts in the label order of :func:`bundle.metrics.label_lesions` (full
        connectivity); NaN for a component that no record maps to.
    """
    from bundle.metrics.segmentation import label_lesions
    from scipy import ndimage

    labels, n = label_lesions(truth)
    out = np.full(n, np.nan)
    if n == 0 or not lesions:
        return out
    _, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    world_to_voxel = np.linalg.inv(np.asarray(truth_affine, dtype=np.float64)) @ np.asarray(
        file_affine, dtype=np.float64
    )
    weight_sum, contrast_sum = np.zeros(n), np.zeros(n)
    for lesion in lesions:
        centre = world_to_voxel @ np.append(np.asarray(lesion["centroid_vox"], dtype=np.float64), 1.0)
        index = tuple(int(np.clip(round(c), 0, s - 1)) for c, s in zip(centre[:3], labels.shape))
        component = int(labels[tuple(nearest[:, index[0], index[1], index[2]])]) - 1
        weight_sum[component] += float(lesion["voxels"])
        contrast_sum[component] += float(lesion["voxels"]) * float(lesion["contrast"])
    mapped = weight_sum > 0
    out[mapped] = contrast_sum[mapped] / weight_sum[mapped]
    return out


# ----------------------------------------------------------------------------- bundle workflows


def _parser(config_files: Sequence[str], overrides: Mapping[str, Any], progress: bool) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / f) for f in config_files])
    parser.update({"bundle_root": str(BUNDLE_ROOT), "progress": progress, **overrides})
    return parser


def train_mae(out: Path, scale: Scale, device: str, progress: bool, threads: int | None = None) -> Path:
    """``train_mae.json`` + ``demo.json`` on the training subjects of the split; once per study."""
    mae_path = out / "models" / "mae.pt"
    if mae_path.is_file():
        logger.info(f"reusing the MAE {mae_path}")
        return mae_path
    start = time.perf_counter()
    parser = _parser(
        ["train_mae.json", "demo.json"],
        {
            # the study's split instead of the demo data set, so that the MAE never sees a test subject
            "dataset_dir": None,
            "datalist": str(out / "split.json"),
            "ckpt_dir": str(out / "models"),
            "output_dir": str(out / "mae"),
            "device": device,
            "mae_max_epochs": scale.mae_epochs,
            "num_threads": threads,
        },
        progress,
    )
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    logger.info(f"MAE trained in {time.perf_counter() - start:.0f} s: {mae_path}")
    if not mae_path.is_file():
        raise RuntimeError(f"MAE pre-training wrote no {mae_path}")
    return mae_path


def segmentation_overrides(out: Path, scale: Scale, arm: str, seed: int, device: str, run_dir: Path) -> dict[str, Any]:
    """ConfigParser overrides of ``train.json`` + ``demo.json`` for one (arm, seed) run."""
    k = _k_of_arm(arm)
    datalist = str(out / "split.json")
    return {
        "dataset_dir": None,
        "datalist": datalist,
        # fixed budget, last weights: every training subject trains; the held-out set is never used
        # during training (the validation handler below never fires), so no arm is selected on it
        "val_interval": scale.max_epochs + 1,
        "ckpt_dir": str(run_dir / "checkpoints"),
        "output_dir": str(run_dir / "train"),
        "cache_dir": str(out / "cache"),
        "mae_path": str(out / "models" / "mae.pt"),
        "device": device,
        "seed": seed,
        # the masks do not depend on the training seed: every arm and seed shares the cached maps
        "residual_map_transform#seed": 0,
        "num_passes": k if k is not None else scale.num_passes,
        "network_preset": scale.network_preset,
        "network_options": arm_network_flags(arm),
        "input_size": [scale.input_size, scale.input_size],
        # inference on whole slices: one window of inference_size (the network is fully
        # convolutional) instead of overlapping training-size tiles, about half the cost
        "validate#inferer#roi_size": [scale.inference_size or scale.input_size] * 2,
        "max_epochs": scale.max_epochs,
        "max_slices_per_epoch": scale.slices_per_epoch,
        "batch_size": scale.batch_size,
        "learning_rate": scale.learning_rate,
        "warmup_epochs": scale.warmup_epochs,
        "lesion_oversampling": scale.lesion_oversampling,
        "sw_batch_size": scale.sw_batch_size,
        "early_stop_patience": 10**6,
        "num_workers": 0,
        "resume": True,
        **scale.extra_overrides,
    }


def _volume_affine(tensor: Any) -> np.ndarray:
    affine = getattr(tensor, "affine", None)
    if affine is None:
        return np.eye(4)
    return np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)


def evaluate_network(
    parser: Any, network: Any, test_records: Sequence[Mapping[str, Any]], lesion_index: Mapping[str, Any], device: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, np.ndarray]]:
    """Predict and score the test subjects with the workflow's preprocessing and slice inferer.

    Returns:
        (subject rows, lesion rows, predicted masks by subject).
    """
    import nibabel as nib
    import torch
    from bundle.metrics.segmentation import lesion_size_bins, segmentation_metrics
    from bundle.utils.geometry import voxel_spacing

    preprocessing = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    network.eval()
    subject_rows: list[dict[str, Any]] = []
    lesion_rows: list[dict[str, Any]] = []
    predictions: dict[str, np.ndarray] = {}
    for record in test_records:
        start = time.perf_counter()
        item = preprocessing(dict(record))
        image = torch.as_tensor(item["image"]).unsqueeze(0).to(device)
        with torch.no_grad(), torch.autocast(device_type="cuda", enabled=device.startswith("cuda")):
            logits = inferer(image, network)
        pred = (torch.sigmoid(logits.float()) > 0.5)[0, 0].cpu().numpy()
        truth = np.asarray(item["label"])[0] > 0
        affine = _volume_affine(item["label"])
        spacing = voxel_spacing(affine)
        metrics = segmentation_metrics(pred, truth, spacing=spacing)
        subject = str(record["subject"])
        row = {
            "subject": subject,
            "cohort": record.get("cohort"),
            "subset": record.get("subset"),
            "has_lesion": bool(truth.any()),
            **metrics,
            "seconds": time.perf_counter() - start,
        }
        subject_rows.append(row)
        predictions[subject] = pred.astype(np.uint8)
        per_lesion = lesion_size_bins(pred, truth, bins=(0.0, math.inf))
        contrasts = lesion_contrasts(
            truth, affine, nib.load(str(record["label"])).affine, lesion_index.get(subject, [])
        )
        voxel_mm3 = float(np.prod(spacing))
        for j in range(per_lesion["label"].size):
            lesion_rows.append(
                {
                    "subject": subject,
                    "lesion": int(per_lesion["label"][j]),
                    "voxels": int(per_lesion["size"][j]),
                    "volume_mm3": float(per_lesion["size"][j]) * voxel_mm3,
                    "contrast": float(contrasts[j]),
                    "detected": bool(per_lesion["detected"][j]),
                    "dice": float(per_lesion["dice"][j]),
                }
            )
    return subject_rows, lesion_rows, predictions


def run_one(
    out: Path, scale: Scale, arm: str, seed: int, device: str, threads: int | None, progress: bool
) -> dict[str, Any]:
    """Train and evaluate one (arm, seed); writes ``runs/<arm>/seed<seed>/result.json`` last."""
    import torch
    from bundle.utils.io import atomic_output

    run_dir = out / "runs" / arm / f"seed{seed}"
    result_path = run_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    if threads:
        torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    split = json.loads((out / "split.json").read_text())
    lesion_index = json.loads((out / "lesion_index.json").read_text())
    parser = _parser(
        ["train.json", "demo.json"], segmentation_overrides(out, scale, arm, seed, device, run_dir), progress
    )
    if not progress:
        parser["train#dataset#progress"] = False
    start = time.perf_counter()
    parser.get_parsed_content("initialize")
    network = parser.get_parsed_content("network")
    parser.get_parsed_content("training")
    train_seconds = time.perf_counter() - start
    with atomic_output(run_dir / "model.pt", overwrite=True) as tmp:
        torch.save({"model": network.state_dict()}, tmp)
    start = time.perf_counter()
    subjects, lesions, predictions = evaluate_network(parser, network, split["test"], lesion_index, device)
    eval_seconds = time.perf_counter() - start
    with atomic_output(run_dir / "predictions.npz", overwrite=True) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **predictions)
    _write_csv(subjects, run_dir / "subjects.csv")
    _write_csv(lesions, run_dir / "lesions.csv")
    result = {
        "arm": arm,
        "seed": seed,
        "num_passes": parser["num_passes"],
        "network_flags": arm_network_flags(arm),
        "parameters": int(sum(p.numel() for p in network.parameters())),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "torch_threads": torch.get_num_threads(),
        "subjects": subjects,
        "lesions": lesions,
    }
    _write_json(result, result_path)  # last: its presence marks the run as finished
    return result


def _run_one_logged(args: tuple) -> dict[str, Any]:
    """Worker entry point of ``--jobs`` (a fresh process: set up logging first)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_one(*args)


# ----------------------------------------------------------------------------- statistics


def paired_wilcoxon(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of paired per-subject values against a baseline.

    Pairs with a NaN are dropped; zero differences are dropped (``zero_method="wilcox"``); with no
    non-zero difference the p-value is 1 (no evidence of a difference).

    Returns:
        ``{"n": pairs, "n_nonzero", "mean_difference", "median_difference", "n_better", "n_worse",
        "statistic", "p_value"}``.
    """
    from scipy.stats import wilcoxon

    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}.")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    nonzero = diff[diff != 0]
    out = {
        "n": int(diff.size),
        "n_nonzero": int(nonzero.size),
        "mean_difference": float(diff.mean()) if diff.size else math.nan,
        "median_difference": float(np.median(diff)) if diff.size else math.nan,
        "n_better": int((diff > 0).sum()),
        "n_worse": int((diff < 0).sum()),
        "statistic": math.nan,
        "p_value": math.nan,
    }
    if diff.size == 0:
        return out
    if nonzero.size == 0:
        out.update(statistic=0.0, p_value=1.0)
        return out
    test = wilcoxon(a[keep], b[keep], zero_method="wilcox", alternative="two-sided")
    out.update(statistic=float(test.statistic), p_value=float(test.pvalue))
    return out


def _run_summary(result: Mapping[str, Any]) -> dict[str, float]:
    """Means of one run over the lesion-bearing test subjects (per subset first when there are subsets)."""
    from bundle.metrics.segmentation import aggregate_metrics

    rows = [r for r in result["subjects"] if r["has_lesion"]]
    if not rows:
        return dict.fromkeys(METRICS, math.nan)
    metric_rows = [
        {**{m: r[m] for m in METRICS}, **({"subset": r["subset"]} if r.get("subset") is not None else {})} for r in rows
    ]
    grouped = all("subset" in r for r in metric_rows)
    summary = aggregate_metrics(metric_rows, group_key="subset" if grouped else None)
    out = {m: float(summary["mean"][m]) for m in METRICS}
    free = [r for r in result["subjects"] if not r["has_lesion"]]
    out["lesion_free_subjects_with_fp"] = float(sum(r["fp"] > 0 for r in free)) if free else math.nan
    return out


def _bin_rows(lesions: Sequence[Mapping[str, Any]], key: str, edges: Sequence[float]) -> list[dict[str, float]]:
    from bundle.metrics.segmentation import summarise_lesion_bins

    usable = [l for l in lesions if l[key] is not None and math.isfinite(l[key])]
    return summarise_lesion_bins(
        [l[key] for l in usable], [l["detected"] for l in usable], [l["dice"] for l in usable], edges
    )


def _bin_name(low: float, high: float, unit: str) -> str:
    if math.isinf(high):
        return f"> {low:g}{unit}"
    if low <= 0:
        return f"<= {high:g}{unit}"
    return f"{low:g}-{high:g}{unit}"


def summarise(results: Sequence[Mapping[str, Any]], arms: Sequence[str]) -> dict[str, Any]:
    """Per-arm means/stds over seeds, bins, per-subject seed means and paired tests vs UNet++."""
    by_arm: dict[str, list[Mapping[str, Any]]] = {a: [r for r in results if r["arm"] == a] for a in arms}
    summary: dict[str, Any] = {"arms": {}, "per_subject_dice": {}, "paired_vs_baseline": {}}
    subjects = sorted({s["subject"] for r in results for s in r["subjects"] if s["has_lesion"]})
    for arm, runs in by_arm.items():
        if not runs:
            continue
        per_run = [_run_summary(r) for r in runs]
        entry: dict[str, Any] = {
            "label": arm_label(arm),
            "seeds": [r["seed"] for r in runs],
            "num_passes": runs[0]["num_passes"],
            "parameters": runs[0]["parameters"],
            "train_seconds_mean": float(np.mean([r["train_seconds"] for r in runs])),
            "eval_seconds_mean": float(np.mean([r["eval_seconds"] for r in runs])),
            "per_seed": per_run,
        }
        for m in (*METRICS, "lesion_free_subjects_with_fp"):
            entry[f"{m}_mean"], entry[f"{m}_std"] = _mean_std([p[m] for p in per_run])
        for key, edges, unit in (("volume_mm3", SIZE_BINS_MM3, " mm³"), ("contrast", CONTRAST_BINS, "")):
            per_seed_bins = [_bin_rows(r["lesions"], key, edges) for r in runs]
            bins = []
            for b in range(len(edges) - 1):
                dice_mean, dice_std = _mean_std([s[b]["mean_dice"] for s in per_seed_bins])
                det_mean, det_std = _mean_std([s[b]["detection_rate"] for s in per_seed_bins])
                bins.append(
                    {
                        "bin": _bin_name(edges[b], edges[b + 1], unit),
                        "n_lesions": per_seed_bins[0][b]["n_lesions"],
                        "dice_mean": dice_mean,
                        "dice_std": dice_std,
                        "detection_rate_mean": det_mean,
                        "detection_rate_std": det_std,
                    }
                )
            entry["by_size" if key == "volume_mm3" else "by_contrast"] = bins
        summary["arms"][arm] = entry
        per_subject = {}
        for subject in subjects:
            values = [s["dice"] for r in runs for s in r["subjects"] if s["subject"] == subject]
            per_subject[subject] = float(np.mean(values)) if values else math.nan
        summary["per_subject_dice"][arm] = per_subject
    if BASELINE_ARM in summary["per_subject_dice"]:
        base = summary["per_subject_dice"][BASELINE_ARM]
        for arm in summary["per_subject_dice"]:
            if arm == BASELINE_ARM:
                continue
            values = summary["per_subject_dice"][arm]
            summary["paired_vs_baseline"][arm] = paired_wilcoxon(
                [values[s] for s in subjects], [base[s] for s in subjects]
            )
    summary["test_subjects_with_lesion"] = subjects
    return summary


# ----------------------------------------------------------------------------- residual-map study


def residual_map_auroc(
    out: Path, scale: Scale, test_records: Sequence[Mapping[str, Any]], lesion_index: Mapping[str, Sequence[Any]]
) -> dict[str, Any]:
    """AUROC of the maps (paper Tables 4-5): K x masking, and single ratios vs the 0.5+0.75 pair."""
    path = out / "residual_map_auroc.json"
    if path.is_file():
        return json.loads(path.read_text())
    from bundle.tools import residual_map_study as study
    from bundle.transforms.brain import brain_preprocessing

    # the first test subjects with lesions (the AUROC pools their brain voxels; it needs both classes)
    chosen = [r for r in test_records if lesion_index.get(str(r["subject"]))][: scale.auroc_subjects]
    pre = brain_preprocessing(keys=["image", "label"])
    subjects = [pre(dict(r)) for r in chosen]
    mae = str(out / "models" / "mae.pt")
    start = time.perf_counter()
    k_rows = study.run_study(mae, subjects, ks=scale.auroc_ks, maskings=("random", "stratified"), ratios=(0.5, 0.75))
    ratio_rows = study.run_study(
        mae, subjects, ks=(scale.num_passes,), maskings=("random",), ratios=(0.3, 0.5, 0.75, 0.9)
    )
    pair = (
        next(r for r in k_rows if r["masking"] == "random" and r["num_passes"] == scale.num_passes)
        if scale.num_passes in scale.auroc_ks
        else None
    )
    ratios = [{"maps": f"{r:g}", "auroc": ratio_rows[0][f"auroc_r{r:g}"]} for r in (0.3, 0.5, 0.75, 0.9)]
    if pair is not None:
        ratios.append({"maps": "0.5 + 0.75 (mean map)", "auroc": pair["auroc_mean"]})
    result = {
        "subjects": [str(r["subject"]) for r in chosen],
        "num_passes_for_ratios": scale.num_passes,
        "k_masking": k_rows,
        "ratios": ratios,
        "seconds": time.perf_counter() - start,
    }
    _write_json(result, path)
    return result


# ----------------------------------------------------------------------------- tables and figures


def write_tables(out: Path, summary: Mapping[str, Any], auroc: Mapping[str, Any] | None) -> str:
    """CSV tables and ``tables.md``; returns the markdown."""
    arms = summary["arms"]
    arm_rows = []
    for arm, e in arms.items():
        arm_rows.append(
            {
                "arm": arm,
                "label": e["label"],
                "num_passes": e["num_passes"],
                "seeds": len(e["seeds"]),
                "parameters": e["parameters"],
                **{f"{m}_{s}": e[f"{m}_{s}"] for m in METRICS for s in ("mean", "std")},
                "train_seconds_mean": e["train_seconds_mean"],
            }
        )
    _write_csv(arm_rows, out / "arms.csv")
    bin_rows = [
        {"arm": a, "binning": b_key, **b}
        for a, e in arms.items()
        for b_key in ("by_size", "by_contrast")
        for b in e[b_key]
    ]
    _write_csv(bin_rows, out / "lesion_bins.csv")
    subject_rows = [
        {"arm": a, "subject": s, "dice_seed_mean": v}
        for a, d in summary["per_subject_dice"].items()
        for s, v in d.items()
    ]
    _write_csv(subject_rows, out / "per_subject_dice.csv")
    paired_rows = [{"arm": a, "baseline": BASELINE_ARM, **t} for a, t in summary["paired_vs_baseline"].items()]
    _write_csv(paired_rows, out / "paired_tests.csv")

    md = ["### Arms (mean ± std over seeds of the per-run means over lesion-bearing test subjects)\n"]
    header = ["arm", "K", "seeds", "params", *METRICS]
    md.append(
        _markdown_table(
            header,
            [
                [
                    e["label"],
                    str(e["num_passes"]) if _uses_rcu(a) else "-",
                    str(len(e["seeds"])),
                    f"{e['parameters'] / 1e6:.2f} M",
                    *[_pm(e[f"{m}_mean"], e[f"{m}_std"]) for m in METRICS],
                ]
                for a, e in arms.items()
            ],
        )
    )
    md.append(
        f"\n### Paired comparison with {arm_label(BASELINE_ARM)} "
        "(per-subject Dice averaged over seeds; Wilcoxon signed-rank, two-sided)\n"
    )
    md.append(
        _markdown_table(
            ["arm", "subjects", "mean ΔDice", "median ΔDice", "better / worse", "W", "p"],
            [
                [
                    arm_label(a),
                    str(t["n"]),
                    _cell(t["mean_difference"], 4),
                    _cell(t["median_difference"], 4),
                    f"{t['n_better']} / {t['n_worse']}",
                    _cell(t["statistic"], 1),
                    _cell(t["p_value"], 4),
                ]
                for a, t in summary["paired_vs_baseline"].items()
            ],
        )
    )
    for key, title in (
        ("by_size", "Per-lesion Dice by lesion size (paper Fig. 9 bins, mm³ = 1 mm voxels)"),
        ("by_contrast", "Per-lesion Dice by lesion contrast (fractional darkening)"),
    ):
        first = next(iter(arms.values()))
        md.append(f"\n### {title}\n")
        md.append(
            _markdown_table(
                ["arm", *[f"{b['bin']} (n={int(b['n_lesions'])})" for b in first[key]]],
                [[e["label"], *[_pm(b["dice_mean"], b["dice_std"]) for b in e[key]]] for e in arms.values()],
            )
        )
        md.append("\nDetection rate (any overlap):\n\n")
        md.append(
            _markdown_table(
                ["arm", *[b["bin"] for b in first[key]]],
                [
                    [e["label"], *[_pm(b["detection_rate_mean"], b["detection_rate_std"]) for b in e[key]]]
                    for e in arms.values()
                ],
            )
        )
    if auroc is not None:
        _write_csv(auroc["k_masking"], out / "residual_map_auroc_k.csv")
        _write_csv(auroc["ratios"], out / "residual_map_auroc_ratios.csv")
        md.append(
            f"\n### Residual-map AUROC (lesion vs healthy brain voxels, {len(auroc['subjects'])} test subjects) by K and masking\n"
        )
        md.append(
            _markdown_table(
                ["masking", "K", "AUROC r0.5", "AUROC r0.75", "AUROC mean map", "seed variability", "s / volume"],
                [
                    [
                        r["masking"],
                        str(r["num_passes"]),
                        _cell(r["auroc_r0.5"], 4),
                        _cell(r["auroc_r0.75"], 4),
                        _cell(r["auroc_mean"], 4),
                        _cell(r["seed_variability"], 4),
                        _cell(r["seconds_per_volume"], 3),
                    ]
                    for r in auroc["k_masking"]
                ],
            )
        )
        md.append(f"\n### Residual-map AUROC by mask ratio (random masking, K={auroc['num_passes_for_ratios']})\n")
        md.append(
            _markdown_table(["mask ratio(s)", "AUROC"], [[r["maps"], _cell(r["auroc"], 4)] for r in auroc["ratios"]])
        )
    k_arms = {a: e for a, e in arms.items() if _uses_rcu(a) and a != "unetpp_gcu_rcu_noscore"}
    if len(k_arms) > 1:
        md.append("\n### Dice of the full model by number of MAE passes K\n")
        md.append(
            _markdown_table(
                ["K", "Dice", "lesion F1", "seeds"],
                [
                    [
                        str(e["num_passes"]),
                        _pm(e["dice_mean"], e["dice_std"]),
                        _pm(e["lesion_f1_mean"], e["lesion_f1_std"]),
                        str(len(e["seeds"])),
                    ]
                    for e in sorted(k_arms.values(), key=lambda e: e["num_passes"])
                ],
            )
        )
    text = "".join(md)
    (out / "tables.md").write_text(text)
    return text


def _uses_rcu(arm: str) -> bool:
    flags = arm_network_flags(arm)
    return flags.get("rcu_layers", True) is not False


def write_figures(out: Path, summary: Mapping[str, Any], split: Mapping[str, Any]) -> list[Path]:
    """Bar chart of the arms, Dice by lesion size and contrast, example overlays; PNGs in ``<out>/figures``."""
    from bundle.utils.io import atomic_output
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    arms = summary["arms"]
    names = list(arms)
    labels = [arms[a]["label"] for a in names]
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = figures / name
        with atomic_output(path, overwrite=True) as tmp:
            fig.savefig(tmp, format="png")
        written.append(path)

    fig = Figure(figsize=(max(6, 1.3 * len(names)), 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    means = [arms[a]["dice_mean"] for a in names]
    stds = [arms[a]["dice_std"] if math.isfinite(arms[a]["dice_std"]) else 0.0 for a in names]
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="#4c72b0")
    for i, a in enumerate(names):  # every seed's value, so the spread is visible
        seeds = [p["dice"] for p in arms[a]["per_seed"]]
        ax.scatter([i] * len(seeds), seeds, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(names)), labels, rotation=20, ha="right")
    ax.set_ylabel("Dice (mean over test subjects)")
    ax.set_title("Arms: mean ± std over seeds (dots: seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    save(fig, "ablation_arms.png")

    for key, name, xlabel in (
        ("by_size", "dice_by_lesion_size.png", "lesion volume (mm³ = 1 mm voxels)"),
        ("by_contrast", "dice_by_lesion_contrast.png", "lesion contrast (fractional darkening)"),
    ):
        fig = Figure(figsize=(8, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        bins = arms[names[0]][key]
        width = 0.8 / len(names)
        for i, a in enumerate(names):
            vals = [b["dice_mean"] if math.isfinite(b["dice_mean"]) else 0.0 for b in arms[a][key]]
            errs = [b["dice_std"] if math.isfinite(b["dice_std"]) else 0.0 for b in arms[a][key]]
            ax.bar(
                np.arange(len(bins)) + (i - (len(names) - 1) / 2) * width,
                vals,
                width,
                yerr=errs,
                capsize=2,
                label=arms[a]["label"],
            )
        ax.set_xticks(range(len(bins)), [f"{b['bin']}\n(n={int(b['n_lesions'])})" for b in bins])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("per-lesion Dice")
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        save(fig, name)

    written.append(_overlay_figure(out, summary, split, figures))
    return written


def _overlay_figure(out: Path, summary: Mapping[str, Any], split: Mapping[str, Any], figures: Path) -> Path:
    """One test subject (the median Dice of the full model): image, truth and every arm's mask (seed 0 run)."""
    from bundle.transforms.brain import brain_preprocessing
    from bundle.utils.io import atomic_output
    from bundle.visualize.overlay import lesion_slice_index, take_slice
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = list(summary["arms"])
    reference = "grcsf" if "grcsf" in arms else arms[-1]
    per_subject = summary["per_subject_dice"][reference]
    ranked = sorted((v, s) for s, v in per_subject.items() if math.isfinite(v))
    subject = ranked[len(ranked) // 2][1] if ranked else split["test"][0]["subject"]
    record = next(r for r in split["test"] if r["subject"] == subject)
    item = brain_preprocessing(keys=["image", "label"])(dict(record))
    image = np.asarray(item["image"])[0]
    truth = np.asarray(item["label"])[0] > 0
    axis = 2  # axial after RAS reorientation
    masks = {}
    for arm in arms:
        seed = summary["arms"][arm]["seeds"][0]
        with np.load(out / "runs" / arm / f"seed{seed}" / "predictions.npz") as data:
            masks[arm] = data[subject] > 0
    index = lesion_slice_index(truth, masks[reference], axis)
    fig = Figure(figsize=(2.6 * (len(arms) + 1), 3.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(arms) + 1, squeeze=False)[0]
    base = np.rot90(take_slice(image, axis, index))
    axes[0].imshow(base, cmap="gray")
    axes[0].contour(np.rot90(take_slice(truth, axis, index)).astype(float), levels=[0.5], colors="lime", linewidths=0.8)
    axes[0].set_title(f"{subject}\ntruth (green)", fontsize=8)
    for ax, arm in zip(axes[1:], arms):
        ax.imshow(base, cmap="gray")
        ax.contour(np.rot90(take_slice(truth, axis, index)).astype(float), levels=[0.5], colors="lime", linewidths=0.8)
        pred = np.rot90(take_slice(masks[arm], axis, index)).astype(float)
        if pred.any():
            ax.contour(pred, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(
            f"{arm_label(arm)}\nDice {summary['per_subject_dice'][arm].get(subject, math.nan):.3f} (seed mean)",
            fontsize=8,
        )
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = figures / "example_overlays.png"
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return path


#: Heading of the hand-written part of the results page; everything from it on survives a rerun.
READING_HEADING = "## Reading (written by a human)"


def write_docs(docs_path: Path, out: Path, tables: str, figures: Sequence[Path], meta: Mapping[str, Any]) -> Path:
    """The results page: command, machine, date, sizes, tables and figures; the reading left to a human."""
    from bundle.utils.io import atomic_output

    figure_dir = docs_path.parent / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    links = []
    for fig in figures:
        target = figure_dir / fig.name
        shutil.copyfile(fig, target)
        links.append(f"![{fig.stem}]({os.path.relpath(target, docs_path.parent)})")
    m = meta["machine"]
    sizes = meta["scale"]
    gpu = f" ({m['gpu']})" if m.get("gpu") else ""
    text = f"""# Ablation on the ATLAS look-alike

Generated by `scripts/ablation.py` on {meta["date"]}; edit only the section marked for a human.

## How it was made

```
{meta["command"]}
```

- Machine: {m["cpu"]}, {m["cpu_count"]} cores, {m["platform"]}; Python {m["python"]}, torch {m["torch"]};
  device `{m["device"]}`{gpu}; load average at start {m.get("load_average_at_start", "n/a")};
  torch threads per run {meta.get("threads")}, parallel runs {meta.get("jobs")}.
- Scale `{meta["scale_name"]}`: {sizes["num_subjects"]} synthetic subjects at {sizes["resolution_mm"]} mm in
  {sizes["num_cohorts"]} cohorts; split {meta["split_method"]}: {meta["num_train"]} training /
  {meta["num_test"]} test subjects ({meta["num_test_lesion"]} with lesions),
  cohort-disjoint. Network preset `{sizes["network_preset"]}`, training crops {sizes["input_size"]} x {sizes["input_size"]},
  inference windows {sizes["inference_size"] or sizes["input_size"]} x {sizes["inference_size"] or sizes["input_size"]};
  every run {sizes["max_epochs"]} epochs x {sizes["slices_per_epoch"]} slices, batch {sizes["batch_size"]}, peak lr
  {sizes["learning_rate"] * 10:g} ({sizes["warmup_epochs"]}-epoch warm-up, cosine), lesion-slice oversampling
  {sizes["lesion_oversampling"]:g}, last weights (no model selection). MAE: tiny demo MAE,
  {sizes["mae_epochs"]} epochs on the training
  subjects' lesion-free slices; residual maps with K = {sizes["num_passes"]} passes, {meta["masking"]} masking (ratios 0.5
  and 0.75), computed once and shared. Seeds {list(sizes["seeds"])}.
- Inputs: U-Net, UNet++ and UNet++ + GCU see the image alone (their encoders take only the image
  channel and the residual-map channels are ignored without RCUs); the RCU arms see the image and the residual maps.
- Metrics over the lesion-bearing test subjects (mean per subset, then over subsets when the split has subsets),
  per run; tables give mean ± std over seeds. Per-lesion Dice: component-overlap Dice
  (`bundle.metrics`), lesions pooled over the test subjects of a run. Lesion contrast: the generator's
  fractional darkening of the lesion (`lesions.json`).
- Wall time of the whole study: {meta["total_seconds"] / 60:.1f} min.

## Results

{tables}
## Figures

{chr(10).join(links)}

{READING_HEADING}

<!-- HUMAN: which components helped, by how much, how sure (seeds, p-values), and what this synthetic
benchmark can and cannot say about the paper's claims. Not generated. -->

_Not written yet._
"""
    # a rerun regenerates the tables but keeps the reading a person wrote under the heading
    if docs_path.is_file():
        previous = docs_path.read_text(encoding="utf-8")
        if READING_HEADING in previous:
            text = text[: text.index(READING_HEADING)] + previous[previous.index(READING_HEADING) :]
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(docs_path, overwrite=True) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return docs_path


# ----------------------------------------------------------------------------- the study


def run_study(
    output_dir: str | os.PathLike,
    scale_name: str = "demo",
    data_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    seeds: Sequence[int] | None = None,
    arms: Sequence[str] | None = None,
    k_study: Sequence[int] | None = None,
    jobs: int = 1,
    threads: int | None = None,
    auroc: bool = True,
    docs: str | os.PathLike | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or continue) the whole study in ``output_dir``; returns the results dict (``results.json``)."""
    import torch

    if scale_name not in SCALES:
        raise ValueError(f"unknown scale {scale_name!r}; expected one of {list(SCALES)}.")
    scale = SCALES[scale_name]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available.")
    seeds = tuple(scale.seeds if seeds is None else seeds)
    k_values = tuple(scale.k_study if k_study is None else k_study)
    arm_list = list(ARMS if arms is None else arms)
    for arm in arm_list:
        arm_network_flags(arm)
    if BASELINE_ARM not in arm_list:
        raise ValueError(f"the arms must include the baseline {BASELINE_ARM!r} of the paired tests.")
    arm_list += [f"grcsf_k{k}" for k in k_values if k != scale.num_passes]
    out = Path(output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if threads:  # the main process's own work: residual maps, AUROC study (and the runs when jobs == 1)
        torch.set_num_threads(threads)
    start = time.perf_counter()
    machine = machine_description(device)

    if data_dir:
        data_path = Path(data_dir).expanduser().resolve()
    elif scale_name == "quick":  # a smoke run writes nothing outside its output folder
        data_path = out / "data"
    else:
        data_path = BUNDLE_ROOT / "demo_data" / f"ablation_{scale_name}_{scale.resolution_mm}mm"
    phases: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        phases[name] = round(now - since, 1)
        return now

    records = prepare_data(data_path, scale, progress=progress)
    split_path = out / "split.json"
    if split_path.is_file():
        split = json.loads(split_path.read_text())
    else:
        split = make_split(records, num_subsets=scale.num_subsets)
        _write_json(split, split_path)
    lesion_index = {str(r["subject"]): r["lesions"] for r in records}
    _write_json(lesion_index, out / "lesion_index.json")
    logger.info(f"split ({split['method']}): {len(split['training'])} training, {len(split['test'])} test subjects")

    mark = lap("data and split", start)
    train_mae(out, scale, device, progress, threads)
    mark = lap("MAE pre-training", mark)
    # residual maps of every volume, once per K (the disk cache the runs read)
    for k in sorted({scale.num_passes, *k_values}):
        _fill_cache(out, scale, k, device, split, progress)
    mark = lap("residual maps (cache)", mark)
    auroc_result = residual_map_auroc(out, scale, split["test"], lesion_index) if auroc else None
    mark = lap("residual-map AUROC study", mark)

    tasks = [(out, scale, arm, seed, device, threads, progress and jobs == 1) for arm in arm_list for seed in seeds]
    pending = [t for t in tasks if not (out / "runs" / t[2] / f"seed{t[3]}" / "result.json").is_file()]
    logger.info(
        f"{len(tasks)} runs, {len(tasks) - len(pending)} finished earlier; running {len(pending)} with {jobs} job(s)"
    )
    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), desc="ablation runs", unit="run", disable=not progress)
    if jobs > 1 and len(pending) > 1:
        import multiprocessing

        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for result in pool.map(_run_one_logged, pending):
                bar.update(1)
                logger.info(f"finished {result['arm']} seed {result['seed']} in {result['train_seconds']:.0f} s")
    else:
        for task in pending:
            result = run_one(*task)
            bar.update(1)
            logger.info(f"finished {result['arm']} seed {result['seed']} in {result['train_seconds']:.0f} s")
    bar.close()
    results = [json.loads((out / "runs" / t[2] / f"seed{t[3]}" / "result.json").read_text()) for t in tasks]

    mark = lap(f"{len(pending)} training + evaluation runs", mark)
    summary = summarise(results, arm_list)
    tables = write_tables(out, summary, auroc_result)
    figures = write_figures(out, summary, split)
    lap("tables and figures", mark)
    total = time.perf_counter() - start
    meta = {
        "command": command or "python scripts/ablation.py",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "scale_name": scale_name,
        "scale": dataclasses.asdict(scale) | {"seeds": list(seeds), "k_study": list(k_values)},
        "threads": threads or torch.get_num_threads(),
        "jobs": jobs,
        "data_dir": str(data_path),
        "masking": _parser(["train.json", "demo.json"], {}, False)["masking"],
        "split_method": split["method"],
        "num_train": len(split["training"]),
        "num_test": len(split["test"]),
        "num_test_lesion": len(summary["test_subjects_with_lesion"]),
        "arms": arm_list,
        "total_seconds": total,
        "phase_seconds": phases,
        "run_seconds": {
            f"{r['arm']}/seed{r['seed']}": round(r["train_seconds"] + r["eval_seconds"], 1) for r in results
        },
    }
    payload = {"meta": meta, "summary": summary, "residual_map_auroc": auroc_result}
    _write_json(payload, out / "results.json")
    if docs:
        write_docs(Path(docs).expanduser().resolve(), out, tables, figures, meta)
    logger.info(f"study finished in {total / 60:.1f} min: {out / 'results.json'}, {out / 'tables.md'}")
    return payload


def _fill_cache(out: Path, scale: Scale, k: int, device: str, split: Mapping[str, Any], progress: bool) -> None:
    """Compute (or find) the cached residual maps of every training and test volume for K passes."""
    arm = "grcsf" if k == scale.num_passes else f"grcsf_k{k}"
    parser = _parser(
        ["train.json", "demo.json"], segmentation_overrides(out, scale, arm, 0, device, out / "cache-fill"), False
    )
    transform = parser.get_parsed_content("cached_volume_transform")
    from tqdm.auto import tqdm

    records = [*split["training"], *split["test"]]
    for record in tqdm(records, desc=f"residual maps K={k}", unit="volume", disable=not progress):
        transform(dict(record))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="study folder (created; a rerun continues it)")
    parser.add_argument("--scale", choices=list(SCALES), default="demo", help="sizes of the study (default demo)")
    parser.add_argument("--quick", action="store_true", help="same as --scale quick: CI smoke run, meaningless numbers")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="data folder (default demo_data/ablation_<scale>_<r>mm; quick: <output-dir>/data)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the scale's)")
    parser.add_argument("--arms", nargs="+", default=None, choices=list(ARMS), help="arms (default all)")
    parser.add_argument(
        "--k-study",
        type=int,
        nargs="*",
        default=None,
        help="extra K values for the full model's Dice (default: the scale's; none: --k-study)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (e.g. 2 on 2 CPU cores)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run (default: torch's; 1 with --jobs > 1 or --quick)",
    )
    parser.add_argument("--no-auroc", action="store_true", help="skip the residual-map AUROC study")
    parser.add_argument("--docs", default=None, help="also write this results page (e.g. docs/results.md)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scale = "quick" if args.quick else args.scale
    if args.jobs < 1:
        raise SystemExit("--jobs must be >= 1.")
    # one thread per run when runs share the cores, and for the quick run's tiny tensors
    threads = args.threads if args.threads is not None else (1 if args.jobs > 1 or scale == "quick" else None)
    arms = list(args.arms) if args.arms else None
    if arms is not None and BASELINE_ARM not in arms:
        arms = [BASELINE_ARM, *arms]
    command = "python scripts/ablation.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    try:
        return run_study(
            args.output_dir,
            scale_name=scale,
            data_dir=args.data_dir,
            device=args.device,
            seeds=args.seeds,
            arms=arms,
            k_study=args.k_study,
            jobs=args.jobs,
            threads=threads,
            auroc=not args.no_auroc,
            docs=args.docs,
            progress=not args.no_progress,
            command=command,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    main()
