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
"""Check a data set download and write the paper's split as datalist JSON files to inspect and reuse.

    python scripts/prepare_dataset.py atlas     --root <ATLAS_2>      --output splits/atlas
    python scripts/prepare_dataset.py msd_lung  --root <Task06_Lung>  --output splits/msd_lung
    python scripts/prepare_dataset.py orcascore --root <orCaScore>    --output splits/orcascore

The data set configs (``configs/datasets/*.json``) compute the same split from ``--dataset_dir``
and ``--seed`` at run time; the files written here show what they will use (subjects, cohorts,
counts) and can be passed to the base configs as ``--datalist`` / ``--test_datalist``.

- atlas: ``atlas_subset-<i>.json`` per subset (``training`` and ``test``) and ``atlas_splits.json``;
- msd_lung: ``msd_lung_split.json`` (43 / 11 / 10 for the 64 labelled CTs);
- orcascore: ``orcascore_split.json`` (26 / 5 / 1 for the 32 training CTs).

Existing files are kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys

from bundle.data.atlas import write_atlas_datalists
from bundle.data.msd_lung import load_msd_lung, msd_lung_split
from bundle.data.orcascore import find_orcascore_scans, orcascore_split
from bundle.data.records import write_split_datalist

DATASETS = ("atlas", "msd_lung", "orcascore")


def prepare(dataset: str, root: str, output: str, seed: int = 0, overwrite: bool = False, **atlas: float) -> list[str]:
    """Write the split files of ``dataset`` found under ``root`` into ``output``; return their paths."""
    if dataset == "atlas":
        return write_atlas_datalists(root, output, seed=seed, overwrite=overwrite, **atlas)
    if dataset == "msd_lung":
        split = msd_lung_split(load_msd_lung(root), seed=seed)
    elif dataset == "orcascore":
        split = orcascore_split(find_orcascore_scans(root), seed=seed)
    else:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {DATASETS}.")
    os.makedirs(output, exist_ok=True)
    return [write_split_datalist(split, os.path.join(output, f"{dataset}_split.json"), overwrite=overwrite)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--root", required=True, help="the data set's download folder")
    parser.add_argument("--output", required=True, help="folder of the split JSON files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (the configs' seed)")
    parser.add_argument("--num-subsets", type=int, default=4, help="ATLAS: number of cohort subsets")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="ATLAS: test share of each subset")
    parser.add_argument("--overwrite", action="store_true", help="replace existing split files")
    args = parser.parse_args(argv)
    atlas = {"num_subsets": args.num_subsets, "test_fraction": args.test_fraction} if args.dataset == "atlas" else {}
    try:
        paths = prepare(args.dataset, args.root, args.output, seed=args.seed, overwrite=args.overwrite, **atlas)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
