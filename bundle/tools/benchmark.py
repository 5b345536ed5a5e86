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
"""End-to-end speed of GRCSF against its bare UNet++ backbone on one volume.

In one process, on one volume and one device, with warm-up runs and the median of repeats:

* residual maps: the batched path (:func:`~bundle.transforms.residual_maps.compute_residual_maps`,
  what inference runs) against the naive reference that reconstructs one slice with one mask per
  MAE forward (:func:`~bundle.transforms.residual_maps.residual_maps_reference`);
* end to end, from the NIfTI path to the binary mask in memory, for GRCSF and for the bare
  UNet++ (``grcsf_preset(..., gcu_levels=False, rcu_layers=False)``), with its parts: loading and
  preprocessing, residual maps, slice-wise segmentation, postprocessing (sigmoid, inversion to the
  input's grid, threshold); and their ratio;
* one training step (Dice + focal loss, Adam) of GRCSF on cached residual maps and of UNet++;
* peak memory of each phase (CPU resident set size; GPU ``max_memory_allocated``), parameters,
  GFLOPs per slice window and per MAE pass;
* with ``--precision`` only the CPU inference variants (:func:`time_precision`: float32,
  channels-last, bf16 autocast, ONNX Runtime) on the block, their ratios and their masks'
  agreement with the first.

The pipeline mirrors ``configs/inference.json`` (its volume preprocessing, ``ResidualMapd`` with
the config's ratios, K, masking and foreground threshold, ``ConcatResidualMapsd``, the config's
``SliceInferer``, then ``Activationsd``/``Invertd``/``AsDiscreted``), with the volume moved to the
device once after preprocessing. Networks and MAE have random weights: speed does not depend on
them. GRCSF is measured with the shipped K and masking and, unless ``--no-paper-setting``, with
the paper's K = 5 random masks as well.

Before any speed-up is reported the benchmark checks, and exits with status 2 if a check fails,
that: the masks of a seed are reproducible; the batched maps (float32) equal the reference maps
computed with the same masks; the maps the pipeline's ``ResidualMapd`` produced are those maps
(float32 runs); and the segmentation from the batched maps equals the one from the reference
maps (probabilities close; masks equal wherever the probability is not within the tolerance of
the 0.5 threshold).

Without ``--image`` it generates (once, into ``--cache-dir``) a full-resolution demo subject
(197 x 233 x 189, 1 mm) with :mod:`bundle.data.synthetic.atlas`. On the CPU a block of
``--slices`` axial slices in the middle of the volume stands in for the volume (default 8;
loading, preprocessing and postprocessing still cover the whole volume); on CUDA all slices
are used. Examples::

    python scripts/benchmark.py --threads 2 --json bench_cpu.json
    python scripts/benchmark.py --device cuda --mae-preset large --num-passes 5 --masking random \\
        --amp bf16 --json bench_gpu.json
    python scripts/benchmark.py --image sub-01_T1w.nii.gz --slices all --repeats 5

Timings on a shared machine are noisy: compare the ratios measured in one run; the JSON records
the machine, its load average before and after, and the process CPU time next to the wall time.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bundle.handlers.timing import IterationTimingHandler
from bundle.losses import build_loss
from bundle.networks.checkpoint import MODEL_SETTING_DEFAULTS
from bundle.networks.grcsf import GRCSF_PRESETS, grcsf_preset
from bundle.networks.mae import MAE_PRESETS, load_mae, mae_preset
from bundle.tools import BUNDLE_ROOT
from bundle.transforms.domains import PREPROCESSING_DOMAINS, volume_preprocessing
from bundle.transforms.residual_maps import (
    MASKINGS,
    ConcatResidualMapsd,
    ResidualMapd,
    compute_residual_maps,
    foreground_slice_indices,
    residual_maps_reference,
)
from bundle.utils.io import write_json
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.transforms import Activationsd, AsDiscreted, Compose, EnsureChannelFirstd, EnsureTyped, Invertd, SpatialCropd
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "BenchmarkCheckError",
    "BenchmarkContext",
    "build_parser",
    "check_residual_maps",
    "config_defaults",
    "demo_record",
    "demo_volume",
    "describe",
    "format_table",
    "main",
    "prepare",
    "run_benchmark",
    "time_end_to_end",
    "time_residual_maps",
    "time_train_step",
    "time_training_loop",
]

INFERENCE_CONFIG = BUNDLE_ROOT / "configs" / "inference.json"
TRAIN_CONFIG = BUNDLE_ROOT / "configs" / "train.json"
AMP_CHOICES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PAPER_SETTING = {"num_passes": 5, "masking": "random"}
#: the slice-inference variants :func:`time_precision` compares (``--precision``)
#: windows per ONNX Runtime call of the exported network (``onnxruntime`` variant)
ONNX_BATCH = 2
PRECISIONS = ("float32", "channels_last", "bf16", "bf16_channels_last", "onnxruntime")
# float32 batched vs reference maps: the same arithmetic in another order
MAPS_ATOL, MAPS_RTOL = 1e-5, 1e-4


class BenchmarkCheckError(RuntimeError):
    """An equality check failed: the fast path does not compute what the reference computes."""


# ------------------------------------------------------------------------------------ settings
def config_defaults(path: str | os.PathLike = INFERENCE_CONFIG) -> dict[str, Any]:
    """The shipped settings the benchmark mirrors: the model settings a training with the default
    configs records (:data:`~bundle.networks.checkpoint.MODEL_SETTING_DEFAULTS`), the MAE preset
    of ``train_mae.json`` and the sliding-window batch of the inference config ``path``."""
    with open(path) as f:
        inference = json.load(f)
    with open(BUNDLE_ROOT / "configs" / "train_mae.json") as f:
        mae = json.load(f)
    settings = MODEL_SETTING_DEFAULTS
    return {
        "mask_ratios": [float(r) for r in settings["mask_ratios"]],
        "num_passes": int(settings["num_passes"]),
        "masking": str(settings["masking"]),
        "residual_map_skip_threshold": settings["residual_map_skip_threshold"],
        "slice_axis": int(settings["slice_axis"]),
        "input_size": [int(s) for s in settings["input_size"]],
        "sw_batch_size": int(inference["sw_batch_size"]),
        "network_preset": str(settings["network_preset"]),
        "mae_preset": str(mae["mae_preset"]),
        "rcu_patch_sizes": [int(p) for p in settings["rcu_patch_sizes"]],
        "preprocessing_domain": str(settings["preprocessing_domain"]),
        "preprocessing_options": dict(settings["preprocessing_options"]),
    }


def _parse_slices(text: str) -> tuple[int, int] | int | str:
    """``"all"``, ``"8"`` -> 8 (a centred block), ``"40:48"`` -> (40, 48)."""
    if text == "all":
        return text
    if ":" in text:
        start, stop = (int(v) for v in text.split(":", 1))
        if not 0 <= start < stop:
            raise argparse.ArgumentTypeError(f"--slices {text}: need 0 <= start < stop.")
        return start, stop
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"--slices {text}: need a positive count.")
    return count


def build_parser(defaults: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=None, help="NIfTI volume (default: a generated 1 mm demo subject).")
    parser.add_argument(
        "--cache-dir",
        default=str(BUNDLE_ROOT / "demo_data" / "benchmark"),
        help="where the demo subject is generated once.",
    )
    parser.add_argument(
        "--demo-resolution-mm", type=int, default=1, choices=(1, 2, 3, 4), help="voxel size of the demo subject."
    )
    parser.add_argument(
        "--preprocessing-domain",
        default=defaults["preprocessing_domain"],
        choices=sorted(PREPROCESSING_DOMAINS),
        help="volume preprocessing (bundle.transforms.volume_preprocessing), as the inference config.",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
    parser.add_argument(
        "--amp", default=None, choices=sorted(AMP_CHOICES), help="autocast (default: bf16 on CUDA, none on CPU)."
    )
    parser.add_argument(
        "--channels-last",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="channels-last networks (default: on CUDA).",
    )
    parser.add_argument(
        "--preprocess-on-device",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="move the image to the device right after loading, so that the volume preprocessing runs there "
        "(default: on CUDA; checked against the host's result, which is used when they differ).",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks and the MAE reconstruction.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    parser.add_argument("--seg-preset", default=defaults["network_preset"], choices=sorted(GRCSF_PRESETS))
    parser.add_argument("--mae-preset", default=defaults["mae_preset"], choices=sorted(MAE_PRESETS))
    parser.add_argument("--mae", default=None, help="MAE checkpoint (save_mae format) instead of random weights.")
    parser.add_argument("--num-passes", type=int, default=defaults["num_passes"], help="K of the shipped setting.")
    parser.add_argument("--masking", default=defaults["masking"], choices=MASKINGS)
    parser.add_argument("--ratios", type=float, nargs="+", default=defaults["mask_ratios"], help="mask ratios.")
    parser.add_argument("--residual-map-skip-threshold", type=float, default=defaults["residual_map_skip_threshold"])
    parser.add_argument(
        "--no-paper-setting", action="store_true", help="skip the second GRCSF measurement with K = 5 random masks."
    )
    parser.add_argument("--input-size", type=int, default=defaults["input_size"][0], help="slice window side.")
    parser.add_argument("--sw-batch-size", type=int, default=defaults["sw_batch_size"], help="windows per forward.")
    parser.add_argument("--mae-batch-size", type=int, default=256, help="(pass, slice) pairs per MAE forward.")
    parser.add_argument(
        "--slices",
        type=_parse_slices,
        default=None,
        help="N (centred block), start:stop, or all (default: 8 on CPU, all on CUDA).",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported).")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement.")
    parser.add_argument("--reference-repeats", type=int, default=1, help="timed runs of the naive reference maps.")
    parser.add_argument(
        "--train-batch-size", type=int, default=None, help="slices per training step (default: 2 on CPU, 16 on CUDA)."
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training-step measurement.")
    parser.add_argument(
        "--only-train", action="store_true", help="only the training-step measurement (no maps, no end to end)."
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=None,
        choices=PRECISIONS,
        help="only the CPU precision measurement: the shipped GRCSF's slice inference in these variants "
        "(the first is the reference; docs/speed.md, 'CPU inference').",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON.")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file.")
    parser.add_argument("--quiet", action="store_true", help="no progress lines.")
    return parser


# ------------------------------------------------------------------------------ measurement
class Clock:
    """Wall and process CPU time of a block, synchronising the device at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> "Clock":
        self.sync()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


class PeakMemory:
    """Peak memory of a phase: GPU ``max_memory_allocated`` or the CPU resident set size (MiB)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @staticmethod
    def _rss_hwm_kib() -> int | None:
        try:
            with open("/proc/self/status") as f:
                match = re.search(r"VmHWM:\s+(\d+)\s+kB", f.read())
            return int(match.group(1)) if match else None
        except OSError:
            return None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.scope = "phase"
        except OSError:
            self.scope = "process"

    def peak_mib(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            return {"kind": "cuda_max_memory_allocated", "mib": torch.cuda.max_memory_allocated(self.device) / 2**20}
        hwm = self._rss_hwm_kib()
        kib = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scope = getattr(self, "scope", "process") if hwm is not None else "process"
        return {"kind": f"cpu_peak_rss_{scope}", "mib": kib / 1024}


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Median of every timed field over the runs, plus the raw runs."""
    keys = runs[0].keys() if runs else []
    return {**{k: _median([r[k] for r in runs]) for k in keys}, "runs": runs}


def _log(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"model name\s*:\s*(.+)", f.read())
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------ volume
def demo_record(cache_dir: str | os.PathLike, resolution_mm: int = 1) -> dict[str, Any]:
    """The record (``subject``, ``image``, ``label``) of a demo subject in ``cache_dir``, generated on
    the first call (:mod:`bundle.data.synthetic.atlas`; needs nilearn)."""
    from bundle.data.synthetic.atlas import generate_atlas_like_dataset, load_atlas_like_records

    root = Path(cache_dir) / f"atlas_{resolution_mm}mm"
    try:
        return dict(load_atlas_like_records(root)[0])
    except (FileNotFoundError, ValueError, IndexError, KeyError):
        pass
    records = generate_atlas_like_dataset(
        root,
        num_subjects=1,
        num_cohorts=1,
        lesion_free_fraction=0.0,
        resolution_mm=resolution_mm,
        seed=0,
        overwrite=root.exists(),
        progress=False,
    )
    return dict(records[0])


def demo_volume(cache_dir: str | os.PathLike, resolution_mm: int = 1) -> str:
    """The image of a demo subject in ``cache_dir`` (:func:`demo_record`)."""
    return str(demo_record(cache_dir, resolution_mm)["image"])


def _slice_block(spec: tuple[int, int] | int | str, num_slices: int) -> tuple[int, int]:
    if spec == "all":
        return 0, num_slices
    if isinstance(spec, tuple):
        start, stop = spec
        if stop > num_slices:
            raise ValueError(f"--slices {start}:{stop} exceeds the volume's {num_slices} slices.")
        return start, stop
    count = min(spec, num_slices)
    start = (num_slices - count) // 2
    return start, start + count


def _foreground_slices(volume: torch.Tensor, axis: int, threshold: float | None) -> int:
    """How many slices along spatial ``axis`` of a ``(C, X, Y, Z)`` volume the residual maps reconstruct."""
    return int(foreground_slice_indices(torch.as_tensor(volume).movedim(1 + axis, 0), threshold).numel())


# ---------------------------------------------------------------------------------- pipeline
class Pipeline:
    """Preprocessing, optional residual maps, slice inference and postprocessing of one network."""

    def __init__(
        self,
        network: nn.Module,
        inferer: Callable,
        preprocessing: Compose,
        residual: ResidualMapd | None,
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ) -> None:
        self.network = network
        self.inferer = inferer
        self.preprocessing = preprocessing
        self.residual = residual
        self.maps_transforms = (
            Compose([residual, ConcatResidualMapsd(keys="image"), EnsureTyped(keys="image", dtype=torch.float32)])
            if residual is not None
            else None
        )
        forward = [preprocessing] + ([self.maps_transforms] if self.maps_transforms is not None else [])
        self.postprocessing = Compose(
            [
                Activationsd(keys="pred", sigmoid=True),
                Invertd(
                    keys="pred", transform=Compose(forward), orig_keys="image", nearest_interp=False, to_tensor=True
                ),
                AsDiscreted(keys="pred", threshold=0.5),
            ]
        )
        self.device = device
        self.amp_dtype = amp_dtype

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``(1, X, Y, Z)`` (float32) of a network input ``(C, X, Y, Z)``."""
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else nullcontext()
        )
        with torch.no_grad(), autocast:
            return self.inferer(image.unsqueeze(0), self.network)[0].float()

    def run(self, path: str, clock: Clock) -> tuple[dict[str, Any], dict[str, float]]:
        """One end-to-end run: the final item (``"pred"``: uint8 mask on the CPU) and the part times."""
        parts: dict[str, float] = {}
        cpu: dict[str, float] = {}
        with clock as c:
            item = self.preprocessing({"image": path})
        parts["load_preprocess_s"], cpu["load_preprocess"] = c.wall, c.cpu
        if self.maps_transforms is not None:
            with clock as c:
                item = self.maps_transforms(item)
            parts["residual_maps_s"], cpu["residual_maps"] = c.wall, c.cpu
        with clock as c:
            item["pred"] = self.segment(item["image"])
        parts["segmentation_s"], cpu["segmentation"] = c.wall, c.cpu
        with clock as c:
            item = self.postprocessing(item)
            item["pred"] = item["pred"].to(torch.uint8).cpu()
        parts["postprocess_s"], cpu["postprocess"] = c.wall, c.cpu
        parts["total_s"] = sum(v for k, v in parts.items() if k.endswith("_s"))
        parts["total_cpu_s"] = sum(cpu.values())
        return item, parts


def _count_flops(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def _maybe_compile(
    module: nn.Module, enabled: bool, example: Callable[[nn.Module], Any], notes: list[str]
) -> nn.Module:
    """``torch.compile(module)`` if it compiles and runs ``example``, else ``module``."""
    if not enabled:
        return module
    try:
        compiled = torch.compile(module, dynamic=True)
        example(compiled)
        return compiled  # type: ignore[return-value]
    except Exception as e:  # noqa: BLE001 - compile is optional; eager still works
        notes.append(f"torch.compile of {type(module).__name__} failed, eager used: {type(e).__name__}: {e}")
        return module


def _compile_reconstruct(mae: nn.Module, enabled: bool, notes: list[str]) -> None:
    """Compile the MAE's ``reconstruct`` (what the residual maps call) if it compiles and runs."""
    if not enabled:
        return
    eager = mae.reconstruct
    try:
        mae.reconstruct = torch.compile(eager, dynamic=True)  # type: ignore[method-assign]
        device = next(mae.parameters()).device
        x = torch.rand(2, mae.in_channels, mae.img_size, mae.img_size, device=device)
        with torch.no_grad():
            mae.reconstruct(x, mask=mae.random_masks(2, 0.5, device=device), paste_visible=False)
    except Exception as e:  # noqa: BLE001
        mae.reconstruct = eager  # type: ignore[method-assign]
        notes.append(f"torch.compile of the MAE reconstruction failed, eager used: {type(e).__name__}: {e}")


# ------------------------------------------------------------------------------------ checks
def _check_maps(
    settings_name: str,
    residual: ResidualMapd,
    image: torch.Tensor,
    pipeline_maps: torch.Tensor | None,
    amp: bool,
    batch_size: int,
    clock: Clock,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, dict[str, float]]:
    """
    The masks, batched-vs-reference and pipeline-vs-batched checks of one setting.

    Returns:
        the check results, the float32 batched maps, the reference maps and the time of the
        reference run (the first timed run of the naive path).
    """
    masks = residual.draw_masks(image)
    if not torch.equal(masks, residual.draw_masks(image)):
        raise BenchmarkCheckError(f"{settings_name}: the residual-map masks of one seed differ between two draws.")
    common = {
        "slice_axis": residual.slice_axis,
        "mae_input_size": residual.mae_input_size,
        "paste_visible": residual.paste_visible,
        "clip_range": residual.clip_range,
        "foreground_threshold": residual.foreground_threshold,
        "device": residual.device,
        "pad_to_square": residual.pad_to_square,
        "output_device": None,
    }
    mae = residual.mae
    fast = compute_residual_maps(mae, image, masks, batch_size=batch_size, **common)
    with clock as c:
        reference = residual_maps_reference(mae, image, masks, **common)
    reference_time = {"wall_s": c.wall, "cpu_s": c.cpu}
    difference = float((fast - reference).abs().max()) if fast.numel() else 0.0
    if not torch.allclose(fast, reference, atol=MAPS_ATOL, rtol=MAPS_RTOL):
        raise BenchmarkCheckError(
            f"{settings_name}: batched residual maps differ from the reference with the same masks "
            f"(max |difference| {difference:.3g} > atol {MAPS_ATOL} + rtol {MAPS_RTOL})."
        )
    result: dict[str, Any] = {
        "masks_reproducible": True,
        "batched_equals_reference": True,
        "max_abs_difference": difference,
        "mean_map_value": float(reference.mean()),
    }
    if pipeline_maps is not None:
        pipeline_maps = pipeline_maps.to(fast.device)
        pipe_difference = float((pipeline_maps - fast).abs().max())
        result["pipeline_max_abs_difference_to_reference"] = float((pipeline_maps - reference).abs().max())
        if amp:
            # autocast maps are approximate by design: reported, not required to match
            result["pipeline_uses_amp"] = True
        elif not torch.allclose(pipeline_maps, fast, atol=MAPS_ATOL, rtol=MAPS_RTOL):
            raise BenchmarkCheckError(
                f"{settings_name}: the pipeline's ResidualMapd maps differ from compute_residual_maps with "
                f"its "
                f"masks (max |difference| {pipe_difference:.3g})."
            )
        else:
            result["pipeline_equals_batched"] = True
    return result, fast, reference, reference_time


def _check_segmentation(
    settings_name: str, pipeline: Pipeline, image: torch.Tensor, fast: torch.Tensor, reference: torch.Tensor, amp: bool
) -> dict[str, Any]:
    """
    The segmentation from the batched maps against the one from the reference maps, in float32.

    Without autocast and TF32: in low precision, map differences of 1e-6 can flip an input's
    rounding and move probabilities of a random-weight network by 0.1 (measured with bf16).
    """
    tolerance = 1e-4
    inputs = [torch.cat([image, maps.to(image.device)], dim=0) for maps in (fast, reference)]
    amp_dtype, pipeline.amp_dtype = pipeline.amp_dtype, None
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        probabilities = [torch.sigmoid(pipeline.segment(x)) for x in inputs]
    finally:
        pipeline.amp_dtype = amp_dtype
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    difference = float((probabilities[0] - probabilities[1]).abs().max())
    masks = [p > 0.5 for p in probabilities]
    differing = masks[0] != masks[1]
    near_threshold = torch.minimum((probabilities[0] - 0.5).abs(), (probabilities[1] - 0.5).abs()) <= tolerance
    ok = difference <= tolerance and bool((~differing | near_threshold).all())
    result = {
        "max_probability_difference": difference,
        "tolerance": tolerance,
        "differing_mask_voxels": int(differing.sum()),
        "differing_voxels_all_within_tolerance_of_threshold": bool((~differing | near_threshold).all()),
        "segmentation_equal": ok,
    }
    if not ok:
        raise BenchmarkCheckError(
            f"{settings_name}: the segmentation from the batched maps differs from the one from the "
            "reference maps "
            f"({result})."
        )
    return result


# -------------------------------------------------------------------------------------- main
def _train_step_runner(
    network: nn.Module,
    in_channels: int,
    batch: int,
    size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    seed: int,
) -> Callable[[], float]:
    """A closure running one training step on fixed random data (slices + cached maps); returns the loss."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, in_channels, size, size, generator=generator).to(device)
    y = (torch.rand(batch, 1, size, size, generator=generator) > 0.95).float().to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    loss_fn = build_loss("dice_focal")
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    network.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with autocast:
            loss = loss_fn(network(x).float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    return step


# ---------------------------------------------------------------------------------- phases
def _out_of_time(deadline: float | None, next_run_s: float) -> bool:
    """Whether a run expected to take ``next_run_s`` seconds would end after ``deadline`` (a
    ``time.perf_counter()`` value; None: no deadline)."""
    return deadline is not None and time.perf_counter() + next_run_s > deadline


def _with_device_transfer(pipeline: Compose, device: torch.device) -> Compose:
    """``pipeline`` with the image moved to ``device`` right after it is loaded and made channel-first,
    so that the rest of the volume preprocessing runs there."""
    transforms = list(pipeline.flatten().transforms)
    index = next((i for i, t in enumerate(transforms) if isinstance(t, EnsureChannelFirstd)), 0)
    transforms.insert(index + 1, EnsureTyped(keys="image", device=device, track_meta=True))
    return Compose(transforms)


@dataclass
class BenchmarkContext:
    """What the phases of a benchmark share, built once by :func:`prepare`: device and precision,
    the volume, the networks, the MAE, the end-to-end pipelines, the clock and the notes."""

    args: argparse.Namespace
    device: torch.device
    amp_name: str
    amp_dtype: torch.dtype | None
    channels_last: bool
    preprocess_on_device: bool
    train_batch: int
    image_path: str
    volume: torch.Tensor  # the whole preprocessed volume (C, X, Y, Z), on the CPU
    slice_axis: int
    block_range: tuple[int, int]  # the slices the end-to-end pipelines keep
    size: int
    ratios: list[float]
    settings: dict[str, dict[str, Any]]
    mae: nn.Module
    networks: dict[str, nn.Module]
    train_networks: dict[str, nn.Module]
    pipelines: dict[str, Pipeline]
    clock: Clock
    memory: PeakMemory
    params: dict[str, float]
    gflops: dict[str, float]
    notes: list[str]
    load_before: list[float] | None
    #: max |difference| of the volume preprocessed on the device to the host's (None: not run there)
    device_preprocessing_difference: float | None = None

    @property
    def axis(self) -> int:
        return self.slice_axis % 3

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.volume.shape[1:])

    @property
    def quiet(self) -> bool:
        return bool(self.args.quiet)

    def volume_steps(self, on_device: bool | None = None) -> Compose:
        """The inference config's volume preprocessing (fresh transforms on every call)."""
        defaults = config_defaults()
        domain = self.args.preprocessing_domain
        options = defaults["preprocessing_options"] if domain == defaults["preprocessing_domain"] else {}
        steps = volume_preprocessing(domain, keys=["image"], label_key=None, **options)
        on_device = self.preprocess_on_device if on_device is None else on_device
        return _with_device_transfer(steps, self.device) if on_device else steps

    def preprocessing(self, start: int, stop: int, on_device: bool | None = None) -> Compose:
        """Load and preprocess the volume, keep slices ``start:stop`` and move the image to the device."""
        steps: list = [self.volume_steps(on_device)]
        if (start, stop) != (0, self.spatial[self.axis]):
            roi_start, roi_end = [0, 0, 0], list(self.spatial)
            roi_start[self.axis], roi_end[self.axis] = start, stop
            steps.append(SpatialCropd(keys="image", roi_start=roi_start, roi_end=roi_end))
        steps.append(EnsureTyped(keys="image", device=self.device, track_meta=True))
        return Compose(steps)

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Slices ``start:stop`` of the preprocessed volume, a MetaTensor ``(C, ...)`` on the device."""
        return self.preprocessing(start, stop)({"image": self.image_path})["image"]

    def foreground_slices(self, image: torch.Tensor) -> int:
        """How many slices of ``image`` ``(C, X, Y, Z)`` the residual maps reconstruct."""
        return _foreground_slices(image, self.axis, self.args.residual_map_skip_threshold)

    def log(self, text: str) -> None:
        _log(self.quiet, text)


def _device_of(args: argparse.Namespace) -> torch.device:
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build or machine.")
    return device


def prepare(args: argparse.Namespace) -> BenchmarkContext:
    """Resolve the options, load the volume, build the networks, the MAE and the pipelines."""
    device = _device_of(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    amp_name = args.amp or ("bf16" if device.type == "cuda" else "none")
    amp_dtype = AMP_CHOICES[amp_name]
    channels_last = args.channels_last if args.channels_last is not None else device.type == "cuda"
    on_device = getattr(args, "preprocess_on_device", None)
    on_device = bool(on_device if on_device is not None else device.type == "cuda")
    slices_spec = args.slices if args.slices is not None else ("all" if device.type == "cuda" else 8)
    train_batch = args.train_batch_size or (16 if device.type == "cuda" else 2)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    notes: list[str] = []
    load_before = _load_average()
    torch.manual_seed(args.seed)

    image_path = args.image or demo_volume(args.cache_dir, args.demo_resolution_mm)
    if not os.path.isfile(image_path):
        raise SystemExit(f"--image {image_path} does not exist.")
    defaults = config_defaults()
    slice_axis = defaults["slice_axis"]
    size = int(args.input_size)

    # the shipped inferer, from the config
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    parser["input_size"] = [size, size]
    parser["sw_batch_size"] = int(args.sw_batch_size)
    inferer = parser.get_parsed_content("inferer")

    # networks and MAE (random weights; speed does not depend on them)
    ratios = [float(r) for r in args.ratios]
    patch_sizes = defaults["rcu_patch_sizes"]
    torch.manual_seed(args.seed)
    grcsf = grcsf_preset(args.seg_preset, in_channels=1 + len(ratios), rcu_patch_sizes=patch_sizes)
    torch.manual_seed(args.seed)
    unetpp = grcsf_preset(args.seg_preset, in_channels=1, gcu_levels=False, rcu_layers=False)
    mae = load_mae(args.mae, map_location="cpu") if args.mae else mae_preset(args.mae_preset)
    params = {
        "grcsf_m": sum(p.numel() for p in grcsf.parameters()) / 1e6,
        "unetpp_m": sum(p.numel() for p in unetpp.parameters()) / 1e6,
        "mae_m": sum(p.numel() for p in mae.parameters()) / 1e6,
    }
    with torch.device("meta"):
        meta_nets = {
            "grcsf": grcsf_preset(args.seg_preset, in_channels=1 + len(ratios), rcu_patch_sizes=patch_sizes),
            "unetpp": grcsf_preset(args.seg_preset, in_channels=1, gcu_levels=False, rcu_layers=False),
        }
    gflops = {
        f"{name}_per_window": _count_flops(lambda n=net: n(torch.empty(1, n.in_channels, size, size, device="meta")))
        for name, net in meta_nets.items()
    }
    mae = mae.to(device).eval()
    for ratio in ratios:
        with torch.no_grad():
            mask = mae.random_masks(1, ratio, generator=torch.Generator().manual_seed(0), device=device)
            x = torch.rand(1, mae.in_channels, mae.img_size, mae.img_size, device=device)
            gflops[f"mae_per_pass_ratio_{ratio:g}"] = _count_flops(lambda x=x, mask=mask: mae.reconstruct(x, mask=mask))
    del meta_nets

    train_networks = {} if args.no_train else {"grcsf": copy.deepcopy(grcsf), "unetpp": copy.deepcopy(unetpp)}
    networks = {}
    for name, net in (("grcsf", grcsf), ("unetpp", unetpp)):
        net = net.to(device).eval()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        channels = net.in_channels

        def example(compiled: nn.Module, c: int = channels) -> None:
            autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
            with torch.no_grad(), autocast:
                compiled(torch.rand(2, c, size, size, device=device))

        networks[name] = _maybe_compile(net, args.compile, example, notes)
    _compile_reconstruct(mae, args.compile, notes)

    settings = {"default": {"num_passes": int(args.num_passes), "masking": args.masking}}
    if not args.no_paper_setting and settings["default"] != PAPER_SETTING:
        settings["paper"] = dict(PAPER_SETTING)

    ctx = BenchmarkContext(
        args=args,
        device=device,
        amp_name=amp_name,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        preprocess_on_device=False,
        train_batch=train_batch,
        image_path=image_path,
        volume=torch.empty(0),
        slice_axis=slice_axis,
        block_range=(0, 0),
        size=size,
        ratios=ratios,
        settings=settings,
        mae=mae,
        networks=networks,
        train_networks=train_networks,
        pipelines={},
        clock=Clock(device),
        memory=PeakMemory(device),
        params=params,
        gflops=gflops,
        notes=notes,
        load_before=load_before,
    )
    # volume geometry: the block of slices that stands in for the volume
    ctx.volume = ctx.volume_steps(on_device=False)({"image": image_path})["image"]
    ctx.block_range = _slice_block(slices_spec, ctx.spatial[ctx.axis])
    if on_device:
        ctx.preprocess_on_device = _check_device_preprocessing(ctx)

    def residual_transform(setting: dict[str, Any]) -> ResidualMapd:
        return ResidualMapd(
            keys="image",
            mae=mae,
            mask_ratios=ratios,
            num_passes=setting["num_passes"],
            masking=setting["masking"],
            slice_axis=slice_axis,
            batch_size=int(args.mae_batch_size),
            device=device,
            seed=args.seed,
            foreground_threshold=args.residual_map_skip_threshold,
            amp=amp_dtype is not None,
            amp_dtype=amp_dtype,
        )

    start, stop = ctx.block_range
    ctx.pipelines = {
        "unetpp": Pipeline(networks["unetpp"], inferer, ctx.preprocessing(start, stop), None, device, amp_dtype)
    }
    for name, setting in settings.items():
        ctx.pipelines[f"grcsf_{name}"] = Pipeline(
            networks["grcsf"], inferer, ctx.preprocessing(start, stop), residual_transform(setting), device, amp_dtype
        )
    ctx.log(
        f"device {device}, amp {amp_name}, channels-last {channels_last}, preprocessing on the device "
        f"{ctx.preprocess_on_device}, threads {torch.get_num_threads()}, slices {start}:{stop} of "
        f"{ctx.spatial[ctx.axis]} along axis {ctx.axis}, image {image_path}"
    )
    return ctx


def _check_device_preprocessing(ctx: BenchmarkContext) -> bool:
    """Whether the volume preprocessing runs on the device and gives the host's result; a failure
    or a difference is noted and the host path is used."""
    try:
        on_device = ctx.volume_steps(on_device=True)({"image": ctx.image_path})["image"]
        difference = float((on_device.as_tensor().to("cpu") - ctx.volume.as_tensor()).abs().max())
    except Exception as e:  # noqa: BLE001 - the switch is optional; the host path still works
        ctx.notes.append(f"preprocessing on the device failed, host used: {type(e).__name__}: {e}")
        return False
    ctx.device_preprocessing_difference = difference
    if difference > MAPS_ATOL:
        ctx.notes.append(f"preprocessing on the device differs from the host's by {difference:.3g}, host used")
        return False
    return True


def check_residual_maps(
    ctx: BenchmarkContext, block: torch.Tensor
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """
    The equality checks of every setting on ``block`` (raises :class:`BenchmarkCheckError`): masks
    reproducible, batched float32 maps equal to the reference, the pipeline's ``ResidualMapd``
    equal to them (float32 runs), the segmentation from both equal.

    Returns:
        the checks per setting and the time of the reference run of each (cold: the first
        oneDNN/cuBLAS calls per shape).
    """
    checks: dict[str, Any] = {}
    first_reference_runs: dict[str, dict[str, float]] = {}
    for name, setting in ctx.settings.items():
        ctx.log(
            f"checking {name} (K={setting['num_passes']} {setting['masking']}): "
            "batched vs reference maps, segmentation from both"
        )
        pipe = ctx.pipelines[f"grcsf_{name}"]
        item = pipe.maps_transforms.transforms[0]({"image": block})  # ResidualMapd alone
        check, fast, reference, first_reference_runs[name] = _check_maps(
            name,
            pipe.residual,
            block,
            item["residual_maps"],
            ctx.amp_dtype is not None,
            int(ctx.args.mae_batch_size),
            ctx.clock,
        )
        check.update(_check_segmentation(name, pipe, block, fast, reference, ctx.amp_dtype is not None))
        checks[name] = check
        ctx.log(f"checks {name}: {check}")
    return checks, first_reference_runs


def time_residual_maps(
    ctx: BenchmarkContext,
    block: torch.Tensor,
    first_reference_runs: Mapping[str, dict[str, float]] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Batched maps (as configured, and float32 under autocast) against the naive reference on
    ``block``, every setting: medians of ``--repeats`` after ``--warmup`` runs."""
    args = ctx.args
    kept = ctx.foreground_slices(block)
    maps: dict[str, Any] = {}
    for name, setting in ctx.settings.items():
        residual = ctx.pipelines[f"grcsf_{name}"].residual
        masks = residual.draw_masks(block)
        common = {
            "slice_axis": ctx.slice_axis,
            "foreground_threshold": args.residual_map_skip_threshold,
            "device": ctx.device,
            "output_device": None,
        }
        batched_runs, batched_fp32_runs, reference_runs = [], [], []
        run_s = 0.0
        for i in range(args.warmup + args.repeats):
            if i > args.warmup and _out_of_time(deadline, run_s):
                ctx.notes.append(f"maps {name}: {i - args.warmup} of {args.repeats} timed runs (time guard)")
                break
            started = time.perf_counter()
            with ctx.clock as c:
                compute_residual_maps(
                    residual.mae,
                    block,
                    masks,
                    batch_size=int(args.mae_batch_size),
                    amp=ctx.amp_dtype is not None,
                    amp_dtype=ctx.amp_dtype,
                    **common,
                )
            if i >= args.warmup:
                batched_runs.append({"wall_s": c.wall, "cpu_s": c.cpu})
            if ctx.amp_dtype is not None:
                with ctx.clock as c:
                    compute_residual_maps(residual.mae, block, masks, batch_size=int(args.mae_batch_size), **common)
                if i >= args.warmup:
                    batched_fp32_runs.append({"wall_s": c.wall, "cpu_s": c.cpu})
            run_s = time.perf_counter() - started
        # the check's run of the naive path was its warm-up (first oneDNN/cuBLAS calls per shape)
        for r in range(args.reference_repeats):
            if r > 0 and _out_of_time(deadline, reference_runs[-1]["wall_s"]):
                break
            with ctx.clock as c:
                residual_maps_reference(residual.mae, block, masks, **common)
            reference_runs.append({"wall_s": c.wall, "cpu_s": c.cpu})
        entry: dict[str, Any] = {
            "num_passes": setting["num_passes"],
            "masking": setting["masking"],
            "slices": int(block.shape[1 + ctx.axis]),
            "foreground_slices": kept,
            "mae_forwards_batched": math.ceil(setting["num_passes"] * kept / int(args.mae_batch_size))
            * len(ctx.ratios),
            "mae_forwards_reference": setting["num_passes"] * kept * len(ctx.ratios),
            "batched": _summary(batched_runs),
            "reference": _summary(reference_runs),
        }
        if first_reference_runs and name in first_reference_runs:
            entry["reference_first_run"] = first_reference_runs[name]  # cold, during the check; not in the median
        if batched_fp32_runs:
            entry["batched_fp32"] = _summary(batched_fp32_runs)
            entry["speedup_fp32"] = entry["reference"]["wall_s"] / entry["batched_fp32"]["wall_s"]
        entry["speedup"] = entry["reference"]["wall_s"] / entry["batched"]["wall_s"]
        entry["speedup_cpu_time"] = entry["reference"]["cpu_s"] / entry["batched"]["cpu_s"]
        maps[name] = entry
        ctx.log(
            f"maps {name}: batched {entry['batched']['wall_s']:.3f} s, "
            f"reference {entry['reference']['wall_s']:.3f} s, speed-up x{entry['speedup']:.2f}"
        )
    return maps


def time_end_to_end(ctx: BenchmarkContext, deadline: float | None = None) -> dict[str, Any]:
    """Every pipeline from the NIfTI path to the mask, runs interleaved (load drifts hit all alike):
    parts, medians, peak memory, GRCSF / UNet++ ratios and (for a block) the whole-volume estimate."""
    args = ctx.args
    e2e_runs: dict[str, list[dict[str, float]]] = {name: [] for name in ctx.pipelines}
    peaks: dict[str, dict[str, Any]] = {}
    round_s = 0.0
    for i in range(args.warmup + args.repeats):
        if i > args.warmup and _out_of_time(deadline, round_s):
            ctx.notes.append(f"end to end: {i - args.warmup} of {args.repeats} timed runs (time guard)")
            break
        started = time.perf_counter()
        for name, pipe in ctx.pipelines.items():
            ctx.memory.reset()
            _, parts = pipe.run(ctx.image_path, ctx.clock)
            peak = ctx.memory.peak_mib()
            if name not in peaks or peak["mib"] > peaks[name]["mib"]:
                peaks[name] = peak
            if i >= args.warmup:
                e2e_runs[name].append(parts)
            ctx.log(
                f"e2e {name} run {i}{' (warm-up)' if i < args.warmup else ''}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
            )
        round_s = time.perf_counter() - started
    e2e: dict[str, Any] = {name: {**_summary(runs), "peak_memory": peaks[name]} for name, runs in e2e_runs.items()}
    for name in ctx.settings:
        g, u = e2e[f"grcsf_{name}"], e2e["unetpp"]
        e2e[f"ratio_{name}"] = g["total_s"] / u["total_s"]
        e2e[f"ratio_{name}_cpu_time"] = g["total_cpu_s"] / u["total_cpu_s"]
    # the block's share scaled to the whole volume: segmentation by slices, maps by foreground slices
    start, stop = ctx.block_range
    num_slices = ctx.spatial[ctx.axis]
    if (start, stop) != (0, num_slices):
        index = [slice(None)] * 4
        index[1 + ctx.axis] = slice(start, stop)
        seg_scale = num_slices / (stop - start)
        maps_scale = ctx.foreground_slices(ctx.volume) / max(ctx.foreground_slices(ctx.volume[tuple(index)]), 1)
        for entry in e2e.values():
            if isinstance(entry, dict):
                entry["extrapolated_full_volume_s"] = (
                    entry["load_preprocess_s"]
                    + entry["postprocess_s"]
                    + entry.get("residual_maps_s", 0.0) * maps_scale
                    + entry["segmentation_s"] * seg_scale
                )
    return e2e


def time_train_step(ctx: BenchmarkContext, deadline: float | None = None) -> dict[str, Any]:
    """One training step (Dice + focal loss, Adam) of GRCSF on cached maps and of UNet++ on fixed
    random data: medians, peak memory and the ratio."""
    args, device = ctx.args, ctx.device
    runners = {}
    for name, net in ctx.train_networks.items():
        channels = net.in_channels
        net = net.to(device)
        if ctx.channels_last:
            net = net.to(memory_format=torch.channels_last)
        step = None
        if args.compile:  # compilation is lazy: keep it only if a first step runs
            try:
                step = _train_step_runner(
                    torch.compile(net, dynamic=True),
                    channels,
                    ctx.train_batch,
                    ctx.size,
                    device,
                    ctx.amp_dtype,
                    ctx.channels_last,
                    args.seed,
                )
                step()
            except Exception as e:  # noqa: BLE001 - compile is optional; eager still works
                ctx.notes.append(
                    f"torch.compile of the {name} training step failed, eager used: {type(e).__name__}: {e}"
                )
                step = None
        runners[name] = step or _train_step_runner(
            net, channels, ctx.train_batch, ctx.size, device, ctx.amp_dtype, ctx.channels_last, args.seed
        )
    train_runs: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    train_peaks: dict[str, dict[str, Any]] = {}
    round_s = 0.0
    for i in range(args.warmup + args.repeats):
        if i > args.warmup and _out_of_time(deadline, round_s):
            ctx.notes.append(f"training step: {i - args.warmup} of {args.repeats} timed runs (time guard)")
            break
        started = time.perf_counter()
        for name, step in runners.items():
            ctx.memory.reset()
            with ctx.clock as c:
                step()
            peak = ctx.memory.peak_mib()
            if name not in train_peaks or peak["mib"] > train_peaks[name]["mib"]:
                train_peaks[name] = peak
            if i >= args.warmup:
                train_runs[name].append({"wall_s": c.wall, "cpu_s": c.cpu})
        round_s = time.perf_counter() - started
    train: dict[str, Any] = {
        name: {**_summary(runs), "peak_memory": train_peaks[name]} for name, runs in train_runs.items()
    }
    train["batch_size"] = ctx.train_batch
    train["ratio"] = train["grcsf"]["wall_s"] / train["unetpp"]["wall_s"]
    train["ratio_cpu_time"] = train["grcsf"]["cpu_s"] / train["unetpp"]["cpu_s"]
    ctx.log(
        f"train step: GRCSF {train['grcsf']['wall_s']:.3f} s, UNet++ {train['unetpp']['wall_s']:.3f} s, "
        f"ratio {train['ratio']:.3f}"
    )
    return train


def describe(ctx: BenchmarkContext, foreground_slices_in_block: int | None = None) -> dict[str, Any]:
    """The machine (load average now) and the settings of a benchmark, its parameters, GFLOPs and notes."""
    args, device = ctx.args, ctx.device
    start, stop = ctx.block_range
    num_slices = ctx.spatial[ctx.axis]
    return {
        "benchmark": "GRCSF vs UNet++ end to end (scripts/benchmark.py)",
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "threads": torch.get_num_threads(),
            "load_average_before": ctx.load_before,
            "load_average_after": _load_average(),
        },
        "settings": {
            "image": ctx.image_path,
            "volume_shape": list(ctx.spatial),
            "slice_axis": ctx.axis,
            "slices": [start, stop],
            "slices_note": (
                "all slices"
                if (start, stop) == (0, num_slices)
                else f"a block of {stop - start} of {num_slices} slices stands in for the volume "
                "(load, preprocessing and postprocessing cover the whole volume)"
            ),
            "foreground_slices_in_block": foreground_slices_in_block,
            "preprocessing_domain": args.preprocessing_domain,
            "preprocess_on_device": ctx.preprocess_on_device,
            "preprocess_on_device_max_abs_difference": ctx.device_preprocessing_difference,
            "seg_preset": args.seg_preset,
            "mae_preset": args.mae_preset if not args.mae else f"checkpoint {args.mae}",
            "mask_ratios": ctx.ratios,
            "settings": ctx.settings,
            "foreground_threshold": args.residual_map_skip_threshold,
            "input_size": ctx.size,
            "sw_batch_size": int(args.sw_batch_size),
            "mae_batch_size": int(args.mae_batch_size),
            "amp": ctx.amp_name,
            "channels_last": ctx.channels_last,
            "compile": bool(args.compile),
            "repeats": args.repeats,
            "warmup": args.warmup,
            "seed": args.seed,
        },
        "params": ctx.params,
        "gflops": ctx.gflops,
        "notes": ctx.notes,
    }


def time_training_loop(
    record: Mapping[str, Any],
    mae: nn.Module,
    device: torch.device,
    config_files: Sequence[str | os.PathLike] = (TRAIN_CONFIG,),
    overrides: Mapping[str, Any] | None = None,
    iterations: int = 8,
    epochs: int = 2,
    deadline: float | None = None,
) -> dict[str, Any]:
    """
    Training throughput of the training config's own loop on one labelled volume, and the share
    of each iteration spent waiting for data.

    The config's slice data set (memory cache; the residual maps of ``mae`` built before the loop,
    in batched passes; the config's slice transforms), sampler, DataLoader (its workers), network,
    loss, optimizer and ``SupervisedTrainer`` (its AMP setting), with
    :class:`~bundle.handlers.IterationTimingHandler` as the only handler: one warm-up epoch then
    ``epochs`` epochs of ``iterations`` iterations (fewer when the next one would pass ``deadline``).

    Args:
        record: ``{"image": path, "label": path}``.
        mae: the MAE of the residual maps (any weights: speed does not depend on them).
        device: where the network trains.
        config_files: the training config, with overlays (e.g. ``configs/demo.json``).
        overrides: config ids to override (e.g. ``{"batch_size": 16}``).
        iterations: iterations per epoch.
        epochs: timed epochs after the warm-up epoch.
        deadline: ``time.perf_counter()`` value after which no further epoch starts.

    Returns:
        the batch size, the time to build the slice data set (preprocessing and maps), the
        summed timings of the timed epochs (``samples_per_s``, ``data_wait_percent``, ...) and every
        epoch's record.
    """
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    for key, value in (overrides or {}).items():
        parser[key] = value
    batch_size = int(parser.get_parsed_content("batch_size"))
    parser["device"] = device
    parser["progress"] = False
    parser["residual_map_transform#mae"] = mae
    parser["train#dataset#data"] = [dict(record)]
    parser["train#dataset#volume_transform"] = "@volume_transform"  # no disk cache: built in memory
    parser["max_slices_per_epoch"] = batch_size * int(iterations)
    parser["max_epochs"] = 1 + int(epochs)
    parser["train#handlers"] = []
    started = time.perf_counter()
    dataset = parser.get_parsed_content("train#dataset")
    build_s = time.perf_counter() - started
    trainer = parser.get_parsed_content("train#trainer")
    timing = IterationTimingHandler(log_dir=None)
    timing.attach(trainer)

    def stop_in_time(engine: Any) -> None:
        if _out_of_time(deadline, timing.history[-1]["epoch_s"]):
            engine.terminate()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, stop_in_time)
    trainer.run()
    loader = parser.get_parsed_content("train#dataloader")
    return {
        "config_files": [os.path.relpath(str(f), BUNDLE_ROOT) for f in config_files],
        "overrides": {k: v for k, v in (overrides or {}).items() if isinstance(v, (str, int, float, bool, list))},
        "batch_size": batch_size,
        "num_workers": int(loader.num_workers),
        "slices_in_dataset": len(dataset),
        "dataset_build_s": build_s,
        "warmup_epochs": 1,
        **timing.summary(skip_first=1),
        "history": timing.history,
    }


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    a, b = a.bool(), b.bool()
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def onnxruntime_network(
    network: nn.Module, in_channels: int, size: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[str]]:
    """``network`` exported to ONNX (float32, batches of ``ONNX_BATCH`` windows: the traced graph
    fixes its shapes) and run by ONNX Runtime's CPU provider with torch's thread count: a callable
    ``(B, C, size, size) -> (B, 1, size, size)`` for the sliding-window inferer (it runs ``B`` in
    chunks, the last one zero-padded), and notes (the export's time). Raises ImportError without
    onnxruntime / onnx (``pip install onnxruntime onnx``)."""
    import tempfile

    import onnxruntime

    started = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="grcsf_onnx_")
    path = os.path.join(folder, "grcsf.onnx")
    example = torch.rand(ONNX_BATCH, in_channels, size, size)
    with torch.no_grad():
        torch.onnx.export(
            network.to(memory_format=torch.contiguous_format).eval(),
            (example,),
            path,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        x = (x.as_tensor() if hasattr(x, "as_tensor") else x).detach().float()
        outputs = []
        for chunk in x.split(ONNX_BATCH):
            padded = F.pad(chunk, (0, 0, 0, 0, 0, 0, 0, ONNX_BATCH - chunk.shape[0]))
            outputs.append(torch.from_numpy(session.run(None, {"x": padded.contiguous().numpy()})[0])[: chunk.shape[0]])
        return torch.cat(outputs)

    return run, [f"onnxruntime {onnxruntime.__version__}: exported in {time.perf_counter() - started:.1f} s (untimed)"]


def time_precision(ctx: BenchmarkContext, variants: Sequence[str], deadline: float | None = None) -> dict[str, Any]:
    """
    The shipped GRCSF's slice inference (the config's ``SliceInferer`` over the block, after the
    default residual maps, computed once in float32) in each of ``variants`` (:data:`PRECISIONS`):
    ``float32``, ``channels_last`` (network and input), ``bf16`` (CPU autocast), both. Runs are
    interleaved (load drifts hit all alike); the first variant is the reference of the ratios and
    of the masks' agreement (Dice of the masks at probability 0.5, and max |probability
    difference|).

    Returns:
        per variant the summary of its runs (``wall_s``, ``cpu_s``), ``ratio`` to the reference,
        ``dice`` and ``max_probability_difference``; and whether this CPU has native bf16
        (oneDNN's AVX-512 BF16 / AMX check).
    """
    pipe = ctx.pipelines["grcsf_default"]
    item = pipe.maps_transforms(pipe.preprocessing({"image": ctx.image_path}))
    image = item["image"].as_tensor() if hasattr(item["image"], "as_tensor") else item["image"]
    network = ctx.networks["grcsf"]
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    masks: dict[str, torch.Tensor] = {}
    probabilities: dict[str, torch.Tensor] = {}

    runtimes: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    if "onnxruntime" in variants:
        runtimes["onnxruntime"], results_notes = onnxruntime_network(network, image.shape[0], ctx.size)
        ctx.notes.extend(results_notes)

    def infer(variant: str) -> torch.Tensor:
        if variant in runtimes:
            with torch.no_grad():
                return torch.sigmoid(pipe.inferer(image.unsqueeze(0), runtimes[variant])[0].float())
        channels_last = variant.endswith("channels_last")
        net = network.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        x = image.unsqueeze(0)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if variant.startswith("bf16") else nullcontext()
        with torch.no_grad(), autocast:
            return torch.sigmoid(pipe.inferer(x, net)[0].float())

    round_s = 0.0
    for i in range(ctx.args.warmup + ctx.args.repeats):
        if i > ctx.args.warmup and _out_of_time(deadline, round_s):
            ctx.notes.append(f"precision: {i - ctx.args.warmup} of {ctx.args.repeats} timed runs (time guard)")
            break
        started = time.perf_counter()
        for variant in variants:
            with ctx.clock as c:
                probability = infer(variant)
            if i >= ctx.args.warmup:
                runs[variant].append({"wall_s": c.wall, "cpu_s": c.cpu})
            probabilities[variant] = probability
            masks[variant] = probability > 0.5
            ctx.log(f"precision {variant} run {i}{' (warm-up)' if i < ctx.args.warmup else ''}: {c.wall:.3f} s")
        round_s = time.perf_counter() - started
    network.to(memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format)
    reference = variants[0]
    results: dict[str, Any] = {
        "reference": reference,
        "cpu_native_bf16": bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "slices_per_run": ctx.block_range[1] - ctx.block_range[0],
    }
    for variant in variants:
        entry = _summary(runs[variant]) if runs[variant] else {}
        if entry and runs[reference]:
            entry["ratio"] = entry["wall_s"] / _summary(runs[reference])["wall_s"]
        entry["dice"] = dice(masks[variant], masks[reference])
        entry["max_probability_difference"] = float((probabilities[variant] - probabilities[reference]).abs().max())
        results[variant] = entry
    return results


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement of ``args`` (see the module docstring); returns the results."""
    ctx = prepare(args)
    if args.precision:
        precision = time_precision(ctx, args.precision)
        described = describe(ctx)
        notes = described.pop("notes")
        return {**described, "precision": precision, "notes": notes}
    checks: dict[str, Any] = {}
    maps: dict[str, Any] = {}
    e2e: dict[str, Any] = {}
    kept: int | None = None
    if not args.only_train:
        block = ctx.block(*ctx.block_range)
        kept = ctx.foreground_slices(block)
        checks, first_reference_runs = check_residual_maps(ctx, block)  # before any speed-up is reported
        maps = time_residual_maps(ctx, block, first_reference_runs)
        e2e = time_end_to_end(ctx)
    train = time_train_step(ctx) if not args.no_train else {}
    described = describe(ctx, kept)
    notes = described.pop("notes")
    return {
        **described,
        "checks": checks,
        "residual_maps": maps,
        "end_to_end": e2e,
        "train_step": train,
        "notes": notes,
    }


def format_precision_table(results: dict[str, Any]) -> str:
    """A plain-text summary of :func:`time_precision`'s results (``--precision``)."""
    m, s, p = results["machine"], results["settings"], results["precision"]
    lines = [
        f"device {m['device']} ({m['device_name']}), torch {m['torch']}, threads {m['threads']}, "
        f"load average {m['load_average_before']} -> {m['load_average_after']}; CPU capability "
        f"{p['cpu_capability']}, native bf16 {p['cpu_native_bf16']}",
        f"GRCSF {s['seg_preset']}, volume {s['volume_shape']}, slices {s['slices'][0]}:{s['slices'][1]} "
        f"({p['slices_per_run']} slices per run, windows of {s['input_size']} px), reference {p['reference']}",
        "",
        f"{'slice inference':<20} {'wall s':>9} {'CPU s':>9} {'ratio':>7} {'Dice':>8} {'max |dp|':>9}",
    ]
    for variant in PRECISIONS:
        entry = p.get(variant)
        if entry and "wall_s" in entry:
            lines.append(
                f"{variant:<20} {entry['wall_s']:>9.3f} {entry['cpu_s']:>9.3f} {entry['ratio']:>7.3f} "
                f"{entry['dice']:>8.4f} {entry['max_probability_difference']:>9.2e}"
            )
    lines += [f"note: {note}" for note in results["notes"]]
    return "\n".join(lines)


def format_table(results: dict[str, Any]) -> str:
    """A plain-text summary of :func:`run_benchmark`'s results."""
    if "precision" in results:
        return format_precision_table(results)
    s, m, e2e = results["settings"], results["machine"], results["end_to_end"]
    params, checks = results["params"], results["checks"]
    lines = [
        (
            f"device {m['device']} ({m['device_name']}), torch {m['torch']}, threads {m['threads']}, "
            f"load average {m['load_average_before']} -> {m['load_average_after']}"
        ),
        (
            f"volume {s['volume_shape']}, slices {s['slices'][0]}:{s['slices'][1]} ({s['slices_note']}), "
            f"foreground slices {s['foreground_slices_in_block']}"
        ),
        (
            f"presets: segmentation {s['seg_preset']}, MAE {s['mae_preset']}; ratios {s['mask_ratios']}; "
            f"amp {s['amp']}; channels-last {s['channels_last']}; compile {s['compile']}"
        ),
        (f"params (M): GRCSF {params['grcsf_m']:.2f}, UNet++ {params['unetpp_m']:.2f}, MAE {params['mae_m']:.2f}"),
        "GFLOPs: " + ", ".join(f"{k} {v:.2f}" for k, v in results["gflops"].items()),
    ]
    if results["residual_maps"]:
        lines += [
            "",
            (f"{'residual maps':<12} {'K':>3} {'masking':<11} {'batched s':>10} {'reference s':>12} {'speed-up':>9}"),
        ]
    for name, entry in results["residual_maps"].items():
        ok = checks[name]["batched_equals_reference"] and checks[name]["segmentation_equal"]
        lines.append(
            f"{name:<12} {entry['num_passes']:>3} {entry['masking']:<11} {entry['batched']['wall_s']:>10.3f} "
            f"{entry['reference']['wall_s']:>12.3f} {entry['speedup']:>8.2f}x  "
            f"{'equal' if ok else 'DIFFERENT'}"
        )
    parts = ("load_preprocess_s", "residual_maps_s", "segmentation_s", "postprocess_s", "total_s", "total_cpu_s")
    header = " ".join(f"{p.removesuffix('_s'):>15}" for p in parts)
    if e2e:
        lines += ["", f"{'end to end (median s)':<22} {header} {'peak MiB':>9}"]
    for name, entry in e2e.items():
        if isinstance(entry, dict):
            cells = " ".join(f"{entry[p]:>15.3f}" if p in entry else f"{'-':>15}" for p in parts)
            lines.append(f"{name:<22} {cells} {entry['peak_memory']['mib']:>9.0f}")
    for name, setting in s["settings"].items() if e2e else ():
        lines.append(
            f"GRCSF ({name}: K={setting['num_passes']} {setting['masking']}) / UNet++ end to end: "
            f"{e2e[f'ratio_{name}']:.3f} (wall), {e2e[f'ratio_{name}_cpu_time']:.3f} (CPU time)"
        )
    train = results["train_step"]
    if train:
        lines += [
            "",
            (
                f"training step (batch {train['batch_size']}, cached maps): "
                f"GRCSF {train['grcsf']['wall_s']:.3f} s, UNet++ {train['unetpp']['wall_s']:.3f} s"
            ),
            (f"GRCSF / UNet++ training step: {train['ratio']:.3f} (wall), {train['ratio_cpu_time']:.3f} (CPU time)"),
        ]
    lines += [f"note: {note}" for note in results["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser(config_defaults())
    args = parser.parse_args(argv)
    if args.json and os.path.exists(args.json) and not args.overwrite:
        parser.error(f"--json {args.json} exists; pass --overwrite to replace it.")
    for name in ("repeats", "num_passes", "mae_batch_size", "sw_batch_size", "input_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive.")
    if args.only_train and args.no_train:
        parser.error("--only-train and --no-train exclude each other.")
    if args.warmup < 0 or args.reference_repeats < 1:
        parser.error("--warmup must be >= 0 and --reference-repeats >= 1.")
    try:
        results = run_benchmark(args)
    except BenchmarkCheckError as e:
        print(f"benchmark check FAILED, no speed-up reported: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    print(format_table(results))
    if args.json:
        write_json(results, args.json, overwrite=args.overwrite)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
