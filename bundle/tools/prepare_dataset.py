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
"""Check a data set download and write the split the configs will use, as datalist JSON files.

    python scripts/prepare_dataset.py atlas     --root /data/ATLAS_2      --output splits/atlas
    python scripts/prepare_dataset.py msd_lung  --root /data/Task06_Lung  --output splits/msd_lung
    python scripts/prepare_dataset.py orcascore --root /data/orCaScore    --output splits/orcascore

The split is :func:`bundle.data.load_split`'s, the function every workflow calls with the data set
config's ``dataset_layout`` and the same ``--seed`` / ``--val_fraction``: the files show what the
workflows will use (subjects, cohorts, counts, the rule) and can be passed to the base configs as
``--datalist``. Written: ``atlas_subset-<i>.json`` per cohort-disjoint ATLAS subset the release
allows (4 asked by default, fewer with fewer than 8 cohorts); ``msd_lung_split.json``;
``orcascore_split.json``. Each holds ``training``, ``validation``, ``test`` and the ``rule``.
Existing files are kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys

from bundle.data.layouts import atlas_subset_count, load_split
from bundle.data.records import write_split_datalist
from bundle.utils.errors import user_error

DATASETS = ("atlas", "msd_lung", "orcascore")


def prepare(
    dataset: str,
    root: str,
    output: str,
    seed: int = 0,
    val_fraction: float = 0.2,
    overwrite: bool = False,
    num_subsets: int = 4,
    test_fraction: float = 0.2,
) -> list[str]:
    """Write the split files of ``dataset`` found under ``root`` into ``output``; return their paths."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {DATASETS}.")
    if dataset == "atlas":
        count = atlas_subset_count(root, num_subsets)
        jobs = [
            (f"atlas_subset-{s}.json", {"subset": s, "num_subsets": num_subsets, "test_fraction": test_fraction})
            for s in range(count)
        ]
    else:
        jobs = [(f"{dataset}_split.json", {})]
    names = [os.path.join(output, name) for name, _ in jobs]
    existing = [n for n in names if os.path.exists(n)]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist(s): pass --overwrite to replace.")
    os.makedirs(output, exist_ok=True)
    paths = []
    for path, (_, options) in zip(names, jobs):
        split = load_split(root, layout=dataset, val_fraction=val_fraction, seed=seed, layout_options=options)
        paths.append(write_split_datalist(split, path, overwrite=overwrite))
        print(
            f"{path}: {' / '.join(f'{len(split[k])} {k}' for k in ('training', 'validation', 'test'))} ({split['rule']})"
        )
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--root", required=True, help="the data set's download folder")
    parser.add_argument("--output", required=True, help="folder of the split JSON files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (the configs' seed)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="the configs' val_fraction")
    parser.add_argument("--num-subsets", type=int, default=4, help="ATLAS: cohort subsets asked for")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="ATLAS: test share of each subset")
    parser.add_argument("--overwrite", action="store_true", help="replace existing split files")
    args = parser.parse_args(argv)
    try:
        prepare(
            args.dataset,
            args.root,
            args.output,
            seed=args.seed,
            val_fraction=args.val_fraction,
            overwrite=args.overwrite,
            num_subsets=args.num_subsets,
            test_fraction=args.test_fraction,
        )
    except Exception as e:
        problem = user_error(e)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
