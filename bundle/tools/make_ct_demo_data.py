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
"""Generate the synthetic CT demo data: MSD Task06 Lung and orCaScore look-alikes with split datalists.

Writes, under ``--output``::

    msd_lung/                 MSD Task06 Lung layout (dataset.json, imagesTr, labelsTr, imagesTs)
    orcascore/                orCaScore layout (Training Set/Images, Reference standard, DICOM)
    msd_lung_datalist.json    the paper's split scaled to the cases (43/11/10 of 64)
    orcascore_datalist.json   the paper's split scaled to the cases (26/5/1 of 32)

The datalists have absolute paths and read with
``monai.data.load_decathlon_datalist(path, data_list_key="training")``. The defaults (12 lung
and 8 orCaScore cases) take about 10 s and 45 MB.

Examples::

    python scripts/make_ct_demo_data.py
    python scripts/make_ct_demo_data.py --output /tmp/ct --cases 4 --seed 1 --overwrite
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bundle.data.msd_lung import load_msd_lung, msd_lung_split
from bundle.data.orcascore import find_orcascore_scans, orcascore_split
from bundle.data.records import write_split_datalist
from bundle.data.synthetic.ct import ORCASCORE_REFERENCE_SCORES, generate_msd_lung_like, generate_orcascore_like


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo_data/ct", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--cases",
        type=int,
        default=None,
        help="labelled cases per data set (default: 12 lung, 8 orCaScore; at least 3 for the splits)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="write into existing output folders")
    parser.add_argument("--no-dicom", action="store_true", help="orCaScore images as .mhd only (no DICOM)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    """Generate both look-alikes and their datalists; returns the paths written."""
    args = build_parser().parse_args(argv)
    output = Path(args.output).expanduser().resolve()
    lung_cases = 12 if args.cases is None else args.cases
    orca_cases = 8 if args.cases is None else args.cases
    start = time.perf_counter()
    try:
        if lung_cases < 3:
            raise ValueError(f"--cases must be at least 3 (one case per split part), got {lung_cases}.")
        lung_root = generate_msd_lung_like(
            output / "msd_lung",
            num_cases=lung_cases,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        orca_root = generate_orcascore_like(
            output / "orcascore",
            num_cases=orca_cases,
            seed=args.seed,
            overwrite=args.overwrite,
            formats=("mhd",) if args.no_dicom else ("mhd", "dicom"),
            progress=not args.no_progress,
        )
        lung_split = msd_lung_split(load_msd_lung(lung_root), seed=args.seed)
        orca_split = orcascore_split(find_orcascore_scans(orca_root), seed=args.seed)
        lung_list = write_split_datalist(lung_split, output / "msd_lung_datalist.json", overwrite=args.overwrite)
        orca_list = write_split_datalist(orca_split, output / "orcascore_datalist.json", overwrite=args.overwrite)
    except (ValueError, FileExistsError, ImportError) as err:
        # argument, existing-output and environment problems are the user's to fix: no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err

    with open(Path(orca_root) / ORCASCORE_REFERENCE_SCORES, encoding="utf-8") as f:
        scores = json.load(f)["cases"]

    def sizes(split: dict) -> str:
        return " / ".join(f"{len(split[k])} {k}" for k in ("training", "validation", "test"))

    print(f"MSD Task06 Lung look-alike: {lung_root} ({lung_cases} labelled cases; split {sizes(lung_split)})")
    print(f"orCaScore look-alike:       {orca_root} ({orca_cases} cases; split {sizes(orca_split)})")
    for case in scores:
        lesions = f"{case['n_lesions']} lesion(s)"
        print(f"  {case['subject']:>8}  {lesions}  Agatston {case['total']:8.2f}  category {case['category']}")
    print(f"datalists: {lung_list}\n           {orca_list}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return {
        "msd_lung": lung_root,
        "orcascore": orca_root,
        "msd_lung_datalist": lung_list,
        "orcascore_datalist": orca_list,
    }


if __name__ == "__main__":
    main()
