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
"""Real images through the bundle: the five cases of the pyradiomics 3.1.0 archive (docs/real_images.md).

    python scripts/real_images.py --output outputs/real_images [--ct-bundle <folder>] [--quick]

1. The cases (:func:`bundle.data.reference_cases.fetch_reference_cases`: fetched once from the
   package index into a cache, sha256 checked).
2. A CT model: ``--ct-bundle`` (a bundle folder whose ``models/msd_lung/`` holds ``mae.pt`` and
   ``model.pt`` trained with ``configs/msd_lung.json``), or one trained here at demo scale on
   the MSD Lung look-alike (``train_mae.json`` / ``train.json`` + ``msd_lung.json`` +
   ``demo.json``; ``--quick``: one short epoch each, for the tests).
3. ``lung1``, ``lung2`` through the MSD Lung evaluation (``inference.json`` + ``evaluate.json`` +
   ``msd_lung.json``, a data list of the two NRRD pairs): NRRD read, HU check, 5 mm slices
   resampled to the model's spacing and the mask back, metrics against the real masks, overlays.
   The saved masks are checked against the NRRD's grid (shape, affine, orientation).
4. ``brain1``, ``brain2`` through ``brain_native``'s registration (ITK affine to MNI-152): image
   and mask native -> MNI 1 mm -> native; the mask's overlap after the round trip, the time, and a
   PNG of the registered slice beside the template.
5. The residual maps of ``lung1`` and ``lung2`` (the CT model's MAE, the model's preprocessing): the
   AUROC of each ratio's map and of their mean for lesion voxels against the other voxels inside
   the body (HU > -500, holes filled, per slice) of the lesion's slices.

Writes ``results.json`` and ``results.md`` (the tables of docs/real_images.md) into ``--output``,
with ``ct_model/`` (when trained here), ``evaluation/`` (metrics, masks, overlays) and
``registration/`` (PNGs). Nothing in ``--output`` is overwritten: it must be new or empty.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bundle.tools import BUNDLE_ROOT

CONFIGS = BUNDLE_ROOT / "configs"
CT_CASES = ("lung1", "lung2")
BRAIN_CASES = ("brain1", "brain2")
#: the MSD Lung look-alike the CT model is trained on: chest field of view like the real scans
LOOK_ALIKE = {"demo": {"num_cases": 12, "shape": (96, 96, 48)}, "quick": {"num_cases": 6, "shape": (64, 64, 16)}}
#: training schedule of the CT model on top of demo.json (quick: one short epoch each)
QUICK_MAE = {"mae_max_epochs": 1, "mae_preset": "tiny", "mae_img_size": 32}
QUICK_TRAIN = {"max_epochs": 1, "max_slices_per_epoch": 16, "val_interval": 1, "warmup_epochs": 0}
#: the window of demo.json, which the CT model is trained with (msd_lung.json asks for 224 x 224)
CT_WINDOW = {"input_size": [64, 64], "rcu_patch_sizes": [8, 8, 16]}


def _log(message: str) -> None:
    print(message, flush=True)


def _configs(*names: str) -> list[str]:
    return [str(CONFIGS / f"{n}.json") for n in names]


def train_ct_model(root: Path, quick: bool, threads: int | None) -> Path:
    """MAE and GRCSF trained with the MSD Lung config at demo scale on its look-alike; the bundle folder."""
    from bundle.data.synthetic.ct import generate_msd_lung_like
    from monai.bundle import run as bundle_run

    scale = LOOK_ALIKE["quick" if quick else "demo"]
    data = Path(generate_msd_lung_like(root / "Task06_Lung_look_alike", seed=0, progress=False, **scale))
    common: dict[str, Any] = {
        "bundle_root": str(root),
        "dataset_dir": str(data),
        "logging_file": str(CONFIGS / "logging.conf"),
        "run_id": "training",
        "progress": False,
    }
    if threads:
        common["num_threads"] = threads
    start = time.perf_counter()
    bundle_run(
        config_file=_configs("train_mae", "msd_lung", "demo"),
        output_dir=str(root / "mae"),
        **common,
        **(QUICK_MAE if quick else {}),
    )
    bundle_run(
        config_file=_configs("train", "msd_lung", "demo"),
        output_dir=str(root / "train"),
        **common,
        **(QUICK_TRAIN if quick else {}),
    )
    _log(f"CT model trained in {time.perf_counter() - start:.0f} s: {root / 'models' / 'msd_lung'}")
    return root


def _same_grid(mask_path: str, image_path: str) -> dict[str, Any]:
    """Shape, affine and orientation of a saved mask against its input image."""
    import nibabel as nib
    from bundle.transforms.io import LoadVolumed

    image = LoadVolumed("image")({"image": image_path})["image"]
    mask = nib.load(mask_path)
    affine = image.affine.numpy()
    return {
        "shape": list(mask.shape),
        "same_shape": tuple(mask.shape) == tuple(image.shape),
        "same_affine": bool(np.allclose(mask.affine, affine, atol=1e-4)),
        "orientation": "".join(nib.aff2axcodes(mask.affine)),
        "same_orientation": nib.aff2axcodes(mask.affine) == nib.aff2axcodes(affine),
        "spacing_mm": [round(float(s), 4) for s in np.linalg.norm(affine[:3, :3], axis=0)],
    }


def evaluate_ct_cases(cases: Mapping[str, Mapping[str, str]], ct_bundle: Path, out: Path, threads: int | None) -> dict:
    """lung1 and lung2 through the MSD Lung evaluation workflow; per case: metrics, geometry, time."""
    from bundle.data.records import write_split_datalist
    from monai.bundle import run as bundle_run

    records = [{"subject": c, "image": cases[c]["image"], "label": cases[c]["label"]} for c in CT_CASES]
    datalist = write_split_datalist({"test": records}, out / "ct_datalist.json")
    overrides: dict[str, Any] = {"num_threads": threads} if threads else {}
    start = time.perf_counter()
    bundle_run(
        run_id="evaluating",
        config_file=_configs("inference", "evaluate", "msd_lung"),
        logging_file=str(CONFIGS / "logging.conf"),
        bundle_root=str(ct_bundle),
        datalist=datalist,
        output_dir=str(out / "evaluation"),
        progress=False,
        **CT_WINDOW,
        **overrides,
    )
    seconds = time.perf_counter() - start
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    rows = _read_csv(out / "evaluation" / "metrics.csv")
    results = {}
    for row in rows:
        case = row["subject"]
        results[case] = {
            "dice": float(row["dice"]),
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "lesions_true": int(float(row.get("n_true_lesions", "nan") or 0)),
            "lesions_predicted": int(float(row.get("n_pred_lesions", "nan") or 0)),
            "seconds": round(float(row["time_s"]), 1),
            "geometry": _same_grid(row["prediction"], row["image"]),
            "prediction": row["prediction"],
        }
    return {"cases": results, "overlays": summary.get("overlays", []), "workflow_seconds": round(seconds, 1)}


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def register_brain_cases(cases: Mapping[str, Mapping[str, str]], out: Path) -> dict:
    """brain1 and brain2: native -> MNI -> native through RegisterToMNId; overlap, time, a PNG each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bundle.data.mni import load_mni152_template
    from bundle.transforms.io import LoadVolumed
    from bundle.transforms.mni import RegisterToMNId
    from monai.transforms import Compose, EnsureChannelFirstd

    template = load_mni152_template(1)
    load = Compose([LoadVolumed(["image", "label"]), EnsureChannelFirstd(["image", "label"])])
    (out / "registration").mkdir(parents=True, exist_ok=True)
    results = {}
    for case in BRAIN_CASES:
        item = load({"image": cases[case]["image"], "label": cases[case]["label"]})
        native = item["label"].numpy()[0] > 0.5
        register = RegisterToMNId(["image", "label"])
        start = time.perf_counter()
        try:
            in_mni = register(item)
        except Exception as e:  # reported, not raised: the question is whether this scan registers
            results[case] = {"registered": False, "error": str(e)}
            continue
        back = register.inverse(dict(in_mni))
        seconds = time.perf_counter() - start
        round_trip = back["label"].numpy()[0] > 0.5
        dice = 2.0 * float((native & round_trip).sum()) / float(native.sum() + round_trip.sum())
        mni_label = in_mni["label"].numpy()[0] > 0.5
        z = int(np.argmax(mni_label.sum(axis=(0, 1))))
        image = in_mni["image"].numpy()[0]
        figure, axes = plt.subplots(1, 2, figsize=(8, 4.6))
        axes[0].imshow(np.rot90(template.t1[:, :, z]), cmap="gray")
        axes[0].set_title(f"MNI-152 template, z = {z}")
        axes[1].imshow(np.rot90(image[:, :, z]), cmap="gray")
        if mni_label[:, :, z].any():
            axes[1].contour(np.rot90(mni_label[:, :, z]).astype(float), levels=[0.5], colors="r", linewidths=0.8)
        axes[1].contour(np.rot90(template.brain_mask[:, :, z]).astype(float), levels=[0.5], colors="c", linewidths=0.6)
        axes[1].set_title(f"{case} registered (cyan: template brain, red: lesion)", fontsize=9)
        for ax in axes:
            ax.axis("off")
        figure.tight_layout()
        png = out / "registration" / f"{case}_mni.png"
        figure.savefig(png, dpi=90)
        plt.close(figure)
        info = in_mni["mni_registration"]
        results[case] = {
            "registered": True,
            "round_trip_dice": round(dice, 4),
            "lesion_voxels_native": int(native.sum()),
            "lesion_voxels_mni_1mm": int(mni_label.sum()),
            "mattes_mi": round(float(info["metric_value"]), 4),
            "seconds": round(seconds, 1),
            "figure": str(png),
        }
        _log(f"{case}: registered in {seconds:.1f} s, round-trip Dice {dice:.3f}")
    return results


def residual_map_aurocs(cases: Mapping[str, Mapping[str, str]], ct_bundle: Path) -> dict:
    """Lesion AUROC of the CT model's residual maps on the real CT cases (module docstring, step 5)."""
    from bundle.metrics.ranking import auroc
    from bundle.networks.checkpoint import resolve_model_settings
    from bundle.transforms import ResidualMapd, model_preprocessing_options, volume_preprocessing
    from bundle.transforms.ct import resolve_window
    from scipy import ndimage

    models = ct_bundle / "models" / "msd_lung"
    settings = resolve_model_settings(str(models / "model.pt"))
    options = model_preprocessing_options(settings)
    window = resolve_window(options.get("window", "lung"))
    body_level = (-500.0 - window.min_hu) / (window.max_hu - window.min_hu)  # -500 HU in the windowed image
    preprocess = volume_preprocessing(settings["preprocessing_domain"], keys=["image", "label"], options=options)
    maps = ResidualMapd(
        keys="image",
        mae=str(models / "mae.pt"),
        mask_ratios=settings["mask_ratios"],
        num_passes=settings["num_passes"],
        masking=settings["masking"],
        foreground_threshold=settings["residual_map_skip_threshold"],
        slice_axis=settings["slice_axis"],
        seed=0,
    )
    results = {}
    for case in CT_CASES:
        item = maps(preprocess({"image": cases[case]["image"], "label": cases[case]["label"]}))
        image, label = item["image"].numpy()[0], item["label"].numpy()[0] > 0.5
        residual = item["residual_maps"].numpy()
        lesion_slices = np.flatnonzero(label.any(axis=(0, 1)))
        body = np.stack([ndimage.binary_fill_holes(image[:, :, z] > body_level) for z in range(image.shape[2])], -1)
        region = np.zeros_like(label)
        region[:, :, lesion_slices] = body[:, :, lesion_slices] | label[:, :, lesion_slices]
        scores = {
            f"auroc_r{r:g}": auroc(residual[i][region], label[region]) for i, r in enumerate(settings["mask_ratios"])
        }
        scores["auroc_mean"] = auroc(residual.mean(axis=0)[region], label[region])
        results[case] = {
            **{k: round(v, 4) for k, v in scores.items()},
            "lesion_voxels": int(label.sum()),
            "region_voxels": int(region.sum()),
            "lesion_slices": len(lesion_slices),
            "spacing_mm": [round(float(s), 3) for s in item["image"].pixdim[:3]],
        }
        _log(f"{case}: residual-map AUROC (mean map) {scores['auroc_mean']:.3f}")
    return results


def format_markdown(results: Mapping[str, Any]) -> str:
    """The tables of docs/real_images.md."""
    lines = [
        "| case | Dice | precision | recall | lesions (true / predicted) | mask grid = NRRD grid | orientation "
        "| spacing (mm) | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, r in results["ct"]["cases"].items():
        g = r["geometry"]
        same = "yes" if g["same_shape"] and g["same_affine"] and g["same_orientation"] else "NO"
        lines.append(
            f"| {case} | {r['dice']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['lesions_true']} / "
            f"{r['lesions_predicted']} | {same} ({' x '.join(map(str, g['shape']))}) | {g['orientation']} | "
            f"{' x '.join(f'{s:g}' for s in g['spacing_mm'])} | {r['seconds']:.1f} |"
        )
    lines += ["", "| case | registered | round-trip Dice | lesion voxels (native / MNI 1 mm) | Mattes MI | seconds |"]
    lines += ["|---|---|---|---|---|---|"]
    for case, r in results["brain"].items():
        if r["registered"]:
            lines.append(
                f"| {case} | yes | {r['round_trip_dice']:.3f} | {r['lesion_voxels_native']} / "
                f"{r['lesion_voxels_mni_1mm']} | {r['mattes_mi']:.3f} | {r['seconds']:.1f} |"
            )
        else:
            lines.append(f"| {case} | no: {r['error']} | | | | |")
    ratios = [k for k in next(iter(results["residual_maps"].values())) if k.startswith("auroc_")]
    lines += ["", "| case | " + " | ".join(ratios) + " | lesion voxels | lesion slices |"]
    lines += ["|---|" + "---|" * (len(ratios) + 2)]
    for case, r in results["residual_maps"].items():
        lines.append(
            f"| {case} | "
            + " | ".join(f"{r[k]:.3f}" for k in ratios)
            + f" | {r['lesion_voxels']} | {r['lesion_slices']} |"
        )
    return "\n".join(lines) + "\n"


def run(
    output: str | os.PathLike,
    ct_bundle: str | os.PathLike | None = None,
    archive: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    quick: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Steps 1-5 of the module docstring; returns (and writes) the results."""
    from bundle.data.reference_cases import fetch_reference_cases
    from bundle.utils import set_num_threads

    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new --output (nothing is overwritten).")
    out.mkdir(parents=True, exist_ok=True)
    set_num_threads(threads)
    start = time.perf_counter()
    cases = fetch_reference_cases(cache_dir=cache_dir, archive=archive)
    _log(f"cases: {', '.join(cases)} in {Path(cases['lung1']['image']).parent}")
    bundle = Path(ct_bundle) if ct_bundle else train_ct_model(out / "ct_model", quick, threads)
    results: dict[str, Any] = {"ct_bundle": str(bundle), "quick": bool(quick)}
    results["ct"] = evaluate_ct_cases(cases, bundle, out, threads)
    results["brain"] = register_brain_cases(cases, out)
    results["residual_maps"] = residual_map_aurocs(cases, bundle)
    results["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(format_markdown(results))
    _log(format_markdown(results))
    _log(f"all outputs in {out} ({results['seconds']:.0f} s)")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="new (or empty) folder of the results")
    parser.add_argument("--ct-bundle", default=None, help="bundle folder with models/msd_lung/{mae,model}.pt")
    parser.add_argument("--archive", default=None, help="a downloaded pyradiomics-3.1.0.tar.gz")
    parser.add_argument("--cache-dir", default=None, help="cache of the archive (default ~/.cache/grcsf-bundle)")
    parser.add_argument("--quick", action="store_true", help="train the CT model for one short epoch (tests)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    from bundle.utils.errors import user_error

    try:
        run(args.output, args.ct_bundle, args.archive, args.cache_dir, args.quick, args.threads)
    except Exception as e:
        problem = user_error(e)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
