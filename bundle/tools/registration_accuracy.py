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
"""Accuracy and time of the ITK affine registration to MNI-152 (bundle.transforms.mni).

Synthetic ATLAS look-alike subjects (``generate_atlas_like_dataset``, in a temporary folder) are
moved into a "native" space by a known random affine -- rotations up to ``--max-rotation-deg``
about each axis, translations up to ``--max-translation-mm``, per-axis scaling up to
``--max-scaling`` -- and resampled (trilinear) onto an axis-aligned native grid of
``--native-voxel-mm`` voxels. :func:`register_affine_to_mni` then registers each native image
to the template, and the recovered native-to-MNI matrix ``W`` is compared with the truth over the
template's brain mask: displacement ``|W x - y|`` (mm) for every brain point ``y`` of the MNI grid
and its native position ``x``.

Two kinds of subjects:

- ``template``: the generator without anatomical variation (no random affine, no elastic
  warp): the truth is exactly the applied affine.
- ``deformed``: the generator's default anatomy (its own small random affine and 3 mm elastic
  warp). The applied affine is then not the whole truth; the script reports the consistency
  error against ``W0 @ T``, where ``W0`` registers the untransformed subject (what the
  registration should give whatever the native position), and the error against ``T`` alone.

Also timed: :class:`RegisterToMNId` (registration + resampling image and label onto the 1 mm
grid), and the Dice of a head mask taken native -> MNI -> native through its ``inverse``.

Example::

    python scripts/registration_accuracy.py --resolution-mm 3 --subjects 2 --trials 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import nibabel as nib
import numpy as np
import torch
from bundle.data.mni import load_mni152_template
from bundle.data.synthetic.atlas import SyntheticAtlasParams, generate_atlas_like_dataset
from bundle.registration import register_affine_to_mni
from bundle.transforms.mni import RegisterToMNId
from monai.data import MetaTensor
from scipy import ndimage
from scipy.spatial.transform import Rotation


def random_affine(rng: np.random.Generator, centre: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """A native-to-MNI world matrix about ``centre`` within the requested ranges."""
    angles = rng.uniform(-args.max_rotation_deg, args.max_rotation_deg, 3)
    linear = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    linear = linear @ np.diag(1.0 + rng.uniform(-args.max_scaling, args.max_scaling, 3))
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre - linear @ centre + rng.uniform(-args.max_translation_mm, args.max_translation_mm, 3)
    return matrix


def native_scan(
    image: np.ndarray, affine: np.ndarray, truth: np.ndarray, voxel_mm: float, order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Resample an MNI-space volume onto an axis-aligned native grid covering its moved extent."""
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in image.shape], indexing="ij")).reshape(3, -1)
    native_corners = np.linalg.inv(truth) @ affine @ np.vstack([corners, np.ones((1, 8))])
    low, high = native_corners[:3].min(axis=1) - voxel_mm, native_corners[:3].max(axis=1) + voxel_mm
    native_affine = np.diag([voxel_mm] * 3 + [1.0])
    native_affine[:3, 3] = low
    shape = tuple(int(np.ceil(n)) for n in (high - low) / voxel_mm + 1)
    voxel_map = np.linalg.inv(affine) @ truth @ native_affine
    out = ndimage.affine_transform(image, voxel_map[:3, :3], voxel_map[:3, 3], output_shape=shape, order=order)
    return out.astype(np.float32), native_affine


def displacement_mm(estimated: np.ndarray, truth: np.ndarray, brain_world: np.ndarray) -> np.ndarray:
    native = np.linalg.inv(truth) @ np.vstack([brain_world, np.ones((1, brain_world.shape[1]))])
    return np.linalg.norm((estimated @ native)[:3] - brain_world, axis=0)


def summarise(name: str, means: list[float], maxima: list[float]) -> str:
    return (
        f"{name:<34} mean displacement {statistics.mean(means):5.2f} mm (worst trial {max(means):5.2f}), "
        f"max {statistics.mean(maxima):5.2f} mm (worst {max(maxima):5.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution-mm", type=int, default=3, choices=(2, 3), help="voxel size of the subjects")
    parser.add_argument("--registration-resolution-mm", type=int, default=3, help="template resolution")
    parser.add_argument("--native-voxel-mm", type=float, default=2.5, help="voxel size of the native grids")
    parser.add_argument("--subjects", type=int, default=2, help="subjects of each kind")
    parser.add_argument("--trials", type=int, default=3, help="random affines per subject")
    parser.add_argument("--metric", default="mattes", choices=("mattes", "correlation"))
    parser.add_argument("--max-rotation-deg", type=float, default=10.0)
    parser.add_argument("--max-translation-mm", type=float, default=10.0)
    parser.add_argument("--max-scaling", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    template = load_mni152_template(args.registration_resolution_mm)
    grid = load_mni152_template(args.resolution_mm)
    brain_world = grid.affine[:3, :3] @ np.argwhere(grid.brain_mask).T + grid.affine[:3, 3:4]
    centre = brain_world.mean(axis=1)
    rng = np.random.default_rng(args.seed)
    register_kwargs: dict[str, Any] = {"template": template, "metric": args.metric}
    print(
        f"subjects {args.resolution_mm} mm, native grids {args.native_voxel_mm} mm, template "
        f"{args.registration_resolution_mm} mm, metric {args.metric}, {args.subjects} subject(s) x "
        f"{args.trials} trial(s) per kind; torch threads {torch.get_num_threads()}"
    )
    # ITK loads its registration modules on first use (seconds): keep that out of the timings.
    warm = time.perf_counter()
    register_affine_to_mni(
        template.t1, affine=template.affine, template=template, rigid_iterations=1, affine_iterations=1
    )
    print(f"ITK warm-up (module loading): {time.perf_counter() - warm:.1f} s")

    results: dict[str, list[float]] = {k: [] for k in ("time", "cpu", "tm", "tx", "cm", "cx", "dm", "dx")}
    round_trip: dict[str, list[float]] = {"time": [], "dice": []}
    with tempfile.TemporaryDirectory() as tmp:
        kinds = {
            "template": SyntheticAtlasParams(rotation_deg=0.0, scaling=0.0, translation_mm=0.0, elastic_mm=0.0),
            "deformed": SyntheticAtlasParams(),
        }
        for kind, params in kinds.items():
            records = generate_atlas_like_dataset(
                f"{tmp}/{kind}",
                num_subjects=args.subjects,
                num_cohorts=1,
                resolution_mm=args.resolution_mm,
                seed=args.seed,
                progress=False,
                params=params,
            )
            for record in records:
                source = nib.load(record["image"])
                image, affine = np.asarray(source.dataobj, dtype=np.float32), source.affine
                reference = np.eye(4)
                if kind == "deformed":
                    reference, _ = register_affine_to_mni(image, affine=affine, **register_kwargs)
                for trial in range(args.trials):
                    truth = random_affine(rng, centre, args)
                    native, native_affine = native_scan(image, affine, truth, args.native_voxel_mm)
                    estimated, info = register_affine_to_mni(native, affine=native_affine, **register_kwargs)
                    results["time"].append(info["time_s"])
                    results["cpu"].append(info["cpu_s"])
                    error = displacement_mm(estimated, truth, brain_world)
                    if kind == "template":
                        results["tm"].append(float(error.mean()))
                        results["tx"].append(float(error.max()))
                    else:
                        results["dm"].append(float(error.mean()))
                        results["dx"].append(float(error.max()))
                        consistency = displacement_mm(estimated, reference @ truth, brain_world)
                        results["cm"].append(float(consistency.mean()))
                        results["cx"].append(float(consistency.max()))
                    print(
                        f"  {kind:<8} {record['subject']} trial {trial}: mean {error.mean():5.2f} mm, "
                        f"max {error.max():5.2f} mm, {info['time_s']:.2f} s "
                        f"(iterations {[s['iterations'] for s in info['stages']]})"
                    )
                    if kind == "template" and trial == 0:
                        head = (image > 0.25 * image.max()).astype(np.float32)
                        native_head, _ = native_scan(head, affine, truth, args.native_voxel_mm)
                        native_head = (native_head > 0.5).astype(np.uint8)
                        data = {
                            "image": MetaTensor(torch.as_tensor(native)[None], affine=torch.as_tensor(native_affine)),
                            "label": MetaTensor(
                                torch.as_tensor(native_head)[None], affine=torch.as_tensor(native_affine)
                            ),
                        }
                        transform = RegisterToMNId(
                            ["image", "label"],
                            output_resolution_mm=1,
                            template=template,
                            registration_kwargs={"metric": args.metric},
                        )
                        start = time.perf_counter()
                        out = transform(data)
                        round_trip["time"].append(time.perf_counter() - start)
                        back = transform.inverse(out)["label"][0].numpy()
                        overlap = (
                            2.0
                            * float(((back > 0) & (native_head > 0)).sum())
                            / float((back > 0).sum() + native_head.sum())
                        )
                        round_trip["dice"].append(overlap)

    print()
    print(summarise("template anatomy vs applied affine", results["tm"], results["tx"]))
    print(summarise("deformed anatomy, consistency", results["cm"], results["cx"]))
    print(summarise("deformed anatomy vs applied affine", results["dm"], results["dx"]))
    print(
        f"registration time: wall mean {statistics.mean(results['time']):.2f} s (max {max(results['time']):.2f} s), "
        f"CPU mean {statistics.mean(results['cpu']):.2f} s, over {len(results['time'])} registrations; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"RegisterToMNId onto the 1 mm grid (registration + resampling image and label): mean "
        f"{statistics.mean(round_trip['time']):.2f} s; head-mask Dice native -> MNI 1 mm -> native: "
        f"{min(round_trip['dice']):.3f} (worst)"
    )


if __name__ == "__main__":
    main()
