"""
The README's main command: the whole GRCSF pipeline on the built-in demo data, end to end.

Steps (each a MONAI bundle command, printed before it runs so you can rerun it by hand):

1. generate the synthetic ATLAS v2.0 look-alike (``scripts/make_demo_data.py``; reused when the
   folder already holds a data set made with the same settings) and load it back through the
   bundle's MONAI preprocessing, printing a summary;
2. pre-train the tiny MAE on lesion-free slices (``configs/train_mae.json`` + ``demo.json``);
3. train the small GRCSF (``configs/train.json`` + ``demo.json``);
4. evaluate it on the held-out cohorts (``configs/inference.json`` + ``demo.json`` +
   ``evaluate.json``) and print the evaluation summary.

Every output of a run goes into a new folder ``outputs/demo-<UTC time>/`` (models, logs, PNGs,
predictions, metrics): nothing from an earlier run is overwritten. When the bundle's own
``models/`` holds no weights yet, the run's ``mae.pt`` and ``model.pt`` are copied there, so that the
README's inference command works right after the demo; weights already in ``models/`` are never
replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bundle.tools import BUNDLE_ROOT


def _run(cmd: list[str], log: list[dict]) -> None:
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.perf_counter()
    # the bundle package must import in every step, also without `pip install -e .`
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BUNDLE_ROOT), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(cmd, cwd=BUNDLE_ROOT, env=env)
    seconds = time.perf_counter() - start
    log.append({"command": cmd, "seconds": round(seconds, 1), "returncode": result.returncode})
    if result.returncode != 0:
        sys.exit(f"step failed (exit code {result.returncode}) after {seconds:.0f} s: {' '.join(cmd)}")


def _config(*names: str) -> str:
    """The ``--config_file`` value MONAI merges left to right."""
    return "[" + ",".join(f"'configs/{n}.json'" for n in names) + "]"


WEIGHT_FILES = ("mae.pt", "model.pt")


def install_weights(trained_dir: Path, models_dir: Path) -> list[Path]:
    """Copy the demo's weights into the bundle's ``models/`` when it holds none of them.

    Both files or neither: a GRCSF ``model.pt`` needs the ``mae.pt`` it was trained with. Returns
    the files written (empty when ``models_dir`` already had weights, which are never replaced).
    """
    if any((models_dir / name).exists() for name in WEIGHT_FILES):
        return []
    models_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in WEIGHT_FILES:
        tmp = models_dir / f".{name}.partial"
        shutil.copyfile(trained_dir / name, tmp)
        tmp.replace(models_dir / name)  # atomic: an interrupted copy never looks like weights
        written.append(models_dir / name)
    return written


def _summarise_data(dataset_dir: Path) -> None:
    """Load every demo subject back through the bundle's preprocessing and print a table."""
    import numpy as np
    from bundle.data.synthetic.atlas import load_atlas_like_records
    from bundle.transforms.brain import brain_preprocessing

    records = load_atlas_like_records(dataset_dir)
    load = brain_preprocessing(keys=["image", "label"])
    print(f"\nDemo data set: {dataset_dir} ({len(records)} subjects)")
    print(f"{'subject':<16}{'cohort':<8}{'shape':<16}{'lesions':>8}{'lesion vox':>12}{'image range':>16}")
    for rec in records:
        d = load({"image": rec["image"], "label": rec["label"]})
        img, lab = d["image"], d["label"]
        lo, hi = float(img.min()), float(img.max())
        print(
            f"{rec['subject']:<16}{rec['cohort']:<8}{str(tuple(img.shape[1:])):<16}"
            f"{rec['num_lesions']:>8}{int(np.count_nonzero(np.asarray(lab))):>12}{f'[{lo:.2f}, {hi:.2f}]':>16}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="demo_data/atlas_3mm", help="demo data folder (relative to the repo)")
    parser.add_argument("--resolution-mm", type=int, default=3, help="demo data resolution (1-4 mm)")
    parser.add_argument("--num-subjects", type=int, default=20)
    parser.add_argument("--output-dir", default=None, help="default: outputs/demo-<UTC time>")
    parser.add_argument("--data-only", action="store_true", help="only generate and summarise the demo data (step 1)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of the training and evaluation steps (default: torch's choice; "
        "1 is faster on a machine whose cores are busy with other work)",
    )
    args = parser.parse_args(argv)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.output_dir or f"outputs/demo-{stamp}")
    if (BUNDLE_ROOT / out).exists() and any((BUNDLE_ROOT / out).iterdir()):
        sys.exit(f"{out} exists and is not empty: choose another --output-dir (nothing is overwritten)")
    data_dir = Path(args.data_dir)
    log: list[dict] = []
    py = sys.executable
    total_start = time.perf_counter()

    # 1. demo data: generated once, reused afterwards (the settings of configs/demo.json)
    from bundle.data.synthetic.atlas import ensure_demo_dataset

    start = time.perf_counter()
    print(f"Demo data in {data_dir} (made on first use, reused afterwards; delete the folder to remake it).")
    ensure_demo_dataset(
        BUNDLE_ROOT / data_dir, num_subjects=args.num_subjects, resolution_mm=args.resolution_mm, progress=True
    )
    log.append({"command": ["make demo data", str(data_dir)], "seconds": round(time.perf_counter() - start, 1)})
    _summarise_data(BUNDLE_ROOT / data_dir)
    if args.data_only:
        return 0

    common = ["--dataset_dir", str(data_dir), "--ckpt_dir", str(out / "models")]
    if args.threads:
        common += ["--num_threads", str(args.threads)]
    bundle_run = [py, "-m", "monai.bundle", "run"]
    # 2. MAE pre-training on lesion-free slices
    _run(
        [
            *bundle_run,
            "training",
            "--config_file",
            _config("train_mae", "demo"),
            *common,
            "--output_dir",
            str(out / "mae"),
        ],
        log,
    )
    # 3. GRCSF training (residual maps from the MAE of step 2)
    _run(
        [
            *bundle_run,
            "training",
            "--config_file",
            _config("train", "demo"),
            *common,
            "--output_dir",
            str(out / "train"),
        ],
        log,
    )
    # 4. evaluation on the held-out cohorts
    _run(
        [
            *bundle_run,
            "evaluating",
            "--config_file",
            _config("inference", "evaluate", "demo"),
            *common,
            "--output_dir",
            str(out / "eval"),
        ],
        log,
    )
    summary_path = BUNDLE_ROOT / out / "eval" / "summary.json"
    summary = json.loads(summary_path.read_text())
    total = time.perf_counter() - total_start
    print("\n=== Demo evaluation summary (held-out subjects) ===")
    mean = summary["mean_over_subjects"]
    for key in ("dice", "iou", "precision", "recall", "fpr", "vose", "lesion_f1"):
        if key in mean:
            print(f"{key:>12}: {mean[key]:.4f}")
    installed = install_weights(BUNDLE_ROOT / out / "models", BUNDLE_ROOT / "models")
    if installed:
        print(
            f"\nWeights copied into models/ for the README's inference command: {', '.join(p.name for p in installed)}"
        )
    else:
        print("\nmodels/ already holds weights: left as it is (this run's weights are in its models/ folder)")
    print(f"\nAll outputs: {out}/ (models/, mae/ and train/ logs and PNGs, eval/ metrics.csv, summary.json, overlays)")
    print(f"Total time: {total:.0f} s; steps: " + ", ".join(f"{s['seconds']:.0f} s" for s in log))
    (BUNDLE_ROOT / out / "demo_run.json").write_text(
        json.dumps({"steps": log, "total_seconds": round(total, 1)}, indent=2)
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
