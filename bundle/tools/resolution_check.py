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
"""Does a model score the same on a scan at another resolution? (docs/real_images.md, resolution)

    python scripts/resolution_check.py --bundle-dir <folder with models/> --output <new folder>

For weights trained on the 3 mm look-alike (the demo's), new look-alike subjects are generated at
1 mm and block-averaged to 3 mm (3 x 3 x 3 voxels, the way the 3 mm template is made; labels
> 0.5), and the evaluation workflow (``inference.json`` + ``evaluate.json``, a data list) scores

- the 3 mm versions (the model's own grid),
- the 1 mm scans, which inference resamples to the spacing recorded in the weights and the mask
  back to 1 mm,
- the 1 mm scans with the same weights minus their recorded spacing (as weights of bundle 0.3 and
  older: no resampling, the network sees 1 mm voxels).

It prints and writes (``resolution.json``, ``resolution.md``) Dice per subject and the means.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bundle.tools import BUNDLE_ROOT

CONFIGS = BUNDLE_ROOT / "configs"
#: the three runs of the module docstring: (name, data list part, weights)
RUNS = (("3 mm version", "3mm", "weights"), ("1 mm, resampled", "1mm", "weights"), ("1 mm, legacy", "1mm", "legacy"))


def make_subjects(out: Path, num_subjects: int, seed: int) -> dict[str, list[dict[str, str]]]:
    """``num_subjects`` look-alike subjects at 1 mm and their 3 mm block averages; records per grid."""
    import nibabel as nib
    from bundle.data.mni import block_average, mni152_grid
    from bundle.data.synthetic.atlas import generate_atlas_like_dataset

    generated = generate_atlas_like_dataset(
        out / "atlas_1mm",
        num_subjects=num_subjects,
        num_cohorts=1,
        lesion_free_fraction=0.0,
        resolution_mm=1,
        seed=seed,
        progress=False,
    )
    shape_3mm, affine_3mm = mni152_grid(3)
    folder = out / "atlas_3mm_block_average"
    folder.mkdir(parents=True)
    records: dict[str, list[dict[str, str]]] = {"1mm": [], "3mm": []}
    for rec in generated:
        records["1mm"].append({"subject": rec["subject"], "image": rec["image"], "label": rec["label"]})
        image = block_average(np.asarray(nib.load(rec["image"]).dataobj, dtype=np.float32), 3)
        label = block_average(np.asarray(nib.load(rec["label"]).dataobj, dtype=np.float32), 3) > 0.5
        assert image.shape == tuple(shape_3mm)
        paths = {}
        for key, data in (("image", image), ("label", label.astype(np.uint8))):
            paths[key] = str(folder / f"{rec['subject']}_{key}.nii.gz")
            nib.save(nib.Nifti1Image(data, affine_3mm), paths[key])
        records["3mm"].append({"subject": rec["subject"], **paths})
    return records


def legacy_copy(bundle_dir: Path, out: Path) -> Path:
    """A bundle folder with the same MAE and network weights but without the recorded training spacing."""
    import torch

    legacy = out / "legacy_bundle"
    (legacy / "models").mkdir(parents=True)
    shutil.copyfile(bundle_dir / "models" / "mae.pt", legacy / "models" / "mae.pt")
    weights = torch.load(bundle_dir / "models" / "model.pt", map_location="cpu", weights_only=True)
    weights["model_settings"] = {k: v for k, v in weights["model_settings"].items() if k != "training_spacing_mm"}
    torch.save(weights, legacy / "models" / "model.pt")
    return legacy


def evaluate(bundle_dir: Path, records: list[dict[str, str]], out: Path, threads: int | None) -> dict[str, dict]:
    """The evaluation workflow on ``records``; per subject: Dice and seconds."""
    from bundle.data.records import write_split_datalist
    from monai.bundle import run as bundle_run

    datalist = write_split_datalist({"test": records}, out / "datalist.json")
    bundle_run(
        run_id="evaluating",
        config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")],
        logging_file=str(CONFIGS / "logging.conf"),
        bundle_root=str(bundle_dir),
        datalist=datalist,
        output_dir=str(out),
        progress=False,
        num_overlays=1,
        save_probabilities=True,
        **({"num_threads": threads} if threads else {}),
    )
    with open(out / "metrics.csv", newline="") as f:
        return {r["subject"]: {"dice": float(r["dice"]), "seconds": float(r["time_s"])} for r in csv.DictReader(f)}


def _run_dir_name(name: str) -> str:
    return name.replace(" ", "_").replace(",", "")


def probability_agreement(fine: Path, coarse: Path) -> float:
    """Pearson correlation of a 1 mm run's lesion probability, block-averaged to 3 mm, with the
    3 mm version's: close to 1 when the network saw the same voxels (a check that does not need a
    good model, unlike Dice)."""
    import nibabel as nib
    from bundle.data.mni import block_average

    a = block_average(np.asarray(nib.load(str(fine)).dataobj, dtype=np.float32), 3).ravel()
    b = np.asarray(nib.load(str(coarse)).dataobj, dtype=np.float32).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{fine} block-averaged has {a.size} voxels, {coarse} has {b.size}.")
    if a.std() == 0 or b.std() == 0:
        return float(np.array_equal(a, b))
    return float(np.corrcoef(a, b)[0, 1])


def _probability_file(run_dir: Path, subject: str) -> Path:
    found = sorted((run_dir / "predictions").glob(f"{subject}*_prob.nii.gz"))
    if len(found) != 1:
        raise FileNotFoundError(f"{run_dir / 'predictions'}: {len(found)} probability maps of {subject}.")
    return found[0]


def format_markdown(results: dict[str, Any]) -> str:
    names = [name for name, _, _ in RUNS if name in results["runs"]]
    lines = ["| subject | " + " | ".join(f"Dice, {n}" for n in names) + " |", "|---|" + "---|" * len(names)]
    for subject in results["subjects"]:
        lines.append(f"| {subject} | " + " | ".join(f"{results['runs'][n][subject]['dice']:.3f}" for n in names) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{results['mean_dice'][n]:.3f}**" for n in names) + " |")
    corr = results["mean_probability_correlation"]
    lines.append(
        "| probability vs 3 mm version (r) | "
        + " | ".join(f"{corr[n]:.3f}" if n in corr else "(itself)" for n in names)
        + " |"
    )
    lines.append("| seconds per subject | " + " | ".join(f"{results['mean_seconds'][n]:.1f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def run(bundle_dir: str | os.PathLike, output: str | os.PathLike, num_subjects: int = 6, seed: int = 100,
        threads: int | None = None, legacy: bool = True) -> dict[str, Any]:  # fmt: skip
    """The three evaluations of the module docstring (the last one only with ``legacy``, the
    slowest: the network runs on 1 mm voxels); returns (and writes) the results."""
    from bundle.utils import set_num_threads

    bundle_dir, out = Path(bundle_dir), Path(output)
    if not (bundle_dir / "models" / "model.pt").is_file():
        raise FileNotFoundError(f"{bundle_dir / 'models' / 'model.pt'}: no weights to check.")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new --output (nothing is overwritten).")
    set_num_threads(threads)
    start = time.perf_counter()
    records = make_subjects(out / "data", num_subjects, seed)
    bundles = {"weights": bundle_dir, **({"legacy": legacy_copy(bundle_dir, out)} if legacy else {})}
    runs = {}
    for name, grid, weights in RUNS:
        if weights not in bundles:
            continue
        runs[name] = evaluate(bundles[weights], records[grid], out / _run_dir_name(name), threads)
        print(f"{name}: mean Dice {np.mean([r['dice'] for r in runs[name].values()]):.3f}", flush=True)
    coarse_dir = out / _run_dir_name(RUNS[0][0])
    for name, grid, _ in RUNS:
        if grid == "1mm" and name in runs:
            for subject, row in runs[name].items():
                row["probability_correlation"] = probability_agreement(
                    _probability_file(out / _run_dir_name(name), subject), _probability_file(coarse_dir, subject)
                )
    results = {
        "bundle_dir": str(bundle_dir),
        "subjects": [r["subject"] for r in records["1mm"]],
        "runs": runs,
        "mean_dice": {n: float(np.mean([r["dice"] for r in v.values()])) for n, v in runs.items()},
        "mean_probability_correlation": {
            n: float(np.mean([r["probability_correlation"] for r in v.values()]))
            for n, v in runs.items()
            if n != RUNS[0][0]
        },
        "mean_seconds": {n: float(np.mean([r["seconds"] for r in v.values()])) for n, v in runs.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "resolution.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "resolution.md").write_text(format_markdown(results))
    print(format_markdown(results), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle-dir", required=True, help="bundle folder whose models/ holds mae.pt and model.pt")
    parser.add_argument("--output", required=True, help="new (or empty) folder of the results")
    parser.add_argument("--subjects", type=int, default=6, help="new look-alike subjects generated at 1 mm")
    parser.add_argument("--seed", type=int, default=100, help="seed of the subjects (not the demo data's 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--skip-legacy", action="store_true", help="leave out the run without the recorded spacing (the slowest)"
    )
    args = parser.parse_args(argv)
    from bundle.utils.errors import user_error

    try:
        run(args.bundle_dir, args.output, args.subjects, args.seed, args.threads, legacy=not args.skip_legacy)
    except Exception as e:
        problem = user_error(e)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
