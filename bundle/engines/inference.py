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
"""The inference loop over files and folders (``configs/inference.json``).

:class:`SegmentationRunner` runs the config's ``preprocessing`` / ``inferer`` / ``postprocessing``
on every input with a progress bar and a per-file report: one bad file does not stop a folder,
existing outputs are skipped unless ``overwrite`` is set, and the run ends with an error (exit
status 1 on the command line) when any input failed, after the report is written.

Before the network runs, each input is checked against the model: a volume smaller in-plane than
a quarter of the network's input window is refused, and a volume whose residual maps are far
above those of the training volumes (the MAE does not recognise it as the anatomy it learnt) is
processed with a warning in the report and the log, naming the measure.

The same ``preprocessing`` / ``inferer`` / ``postprocessing`` objects serve the command line
(through the runner), MONAI Label (which reads those ids itself and drops ``SaveImaged``
instances, hence :class:`~bundle.transforms.io.SavePredictiond` subclasses it) and the MONAI
``SupervisedEvaluator`` of the config.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import torch
from bundle.data.checks import residual_map_statistic
from bundle.data.inputs import NIFTI_EXTENSIONS, is_dicom_series_dir, list_inputs
from bundle.transforms.io import SavePredictiond
from bundle.utils.errors import (
    DatasetError,
    FolderRunError,
    InferenceError,
    InvalidVolumeError,
    message_naming,
    source_of,
    user_error,
)
from bundle.utils.flags import as_device, as_flag
from bundle.utils.io import write_json
from monai.transforms import Compose
from torch import nn

__all__ = ["OUT_OF_DISTRIBUTION_FACTOR", "SegmentationRunner", "input_warnings"]

logger = logging.getLogger(__name__)

#: a scan whose residual-map statistic exceeds this many times the largest of the training volumes
#: gets a warning: the MAE does not reconstruct it like the anatomy it was trained on
OUT_OF_DISTRIBUTION_FACTOR = 1.5
#: the smallest in-plane size a volume may have, as a fraction of the network's input window
MIN_INPLANE_FRACTION = 0.25


def _to_device(x: Any, device: torch.device) -> Any:
    return x.to(device) if isinstance(x, torch.Tensor) else x


def check_input_size(image: Any, input_size: Sequence[int], slice_axis: int, source: str) -> None:
    """Refuse a volume whose slices are far smaller than the network's input window.

    Raises:
        InvalidVolumeError: an in-plane side below :data:`MIN_INPLANE_FRACTION` of ``input_size``
            (and below 16 voxels, the network's downsampling factor).
    """
    spatial = tuple(int(s) for s in image.shape[1:])
    axis = slice_axis % len(spatial)
    inplane = [s for a, s in enumerate(spatial) if a != axis]
    needed = [max(16, round(MIN_INPLANE_FRACTION * int(w))) for w in input_size]
    if any(side < need for side, need in zip(inplane, needed)):
        raise InvalidVolumeError(
            f"{source}: the image is {' x '.join(map(str, inplane))} voxels in-plane after preprocessing "
            f"({' x '.join(map(str, spatial))} in all); the network needs at least "
            f"{' x '.join(map(str, needed))} (a quarter of its {' x '.join(map(str, input_size))} input): "
            "is this the right file?"
        )


def input_warnings(image: Any, model_settings: Mapping[str, Any] | None, num_maps: int) -> list[str]:
    """Warnings about a preprocessed network input ``(1 + num_maps, *spatial)`` that is plainly not
    like the training data, each naming the measure that triggered it."""
    reference = (model_settings or {}).get("residual_map_reference")
    if not reference or num_maps < 1:
        return []
    statistic = residual_map_statistic(image[:1], image[1 : 1 + num_maps])
    if statistic is None:
        return ["the image has no foreground (no voxel above 0.1 after intensity scaling)"]
    limit = OUT_OF_DISTRIBUTION_FACTOR * float(reference["max"])
    if statistic > limit:
        return [
            f"its residual maps average {statistic:.3g} over the foreground, {statistic / float(reference['max']):.1f}x "
            f"the largest of the {reference['n_volumes']} training volumes ({float(reference['max']):.3g}): the MAE "
            "does not recognise it as the kind of scan the model was trained on"
        ]
    return []


class SegmentationRunner:
    """Run the inference pipeline of the configs on files, one at a time, with a per-file report.

    For each input ``path`` the item ``{image_key: path}`` goes through ``preprocessing``, the
    image (C, H, W, D) through ``inferer`` with ``network`` (giving logits (1, H, W, D)) into
    ``pred_key``, and the item through ``postprocessing`` (activation, inversion to the input's
    space, saving). These are the config's ``preprocessing`` / ``inferer`` / ``postprocessing``
    ids, so the runner, the MONAI evaluator and MONAI Label compute the same thing.

    Outputs are those of the :class:`~bundle.transforms.io.SavePredictiond` transforms in
    ``postprocessing``: before an input is processed, its planned outputs are checked, and existing
    ones make it ``skipped`` unless ``overwrite``.

    Args:
        network: the segmentation network, weights loaded (it is switched to eval mode).
        preprocessing: dict transform producing the network input under ``image_key``.
        inferer: MONAI inferer, e.g. ``SliceInferer``.
        postprocessing: dict transform consuming ``pred_key``.
        device: where the network runs (a ``torch.device`` or a string such as ``"cuda"``).
        amp: autocast the forward pass (CUDA only); a bool or a command-line string.
        overwrite: process inputs whose outputs exist (the savers must allow it too).
        report_dir: folder of the JSON report of folder / list runs (None: no report file).
        progress: show a tqdm progress bar for more than one input.
        extensions: image file endings when the input is a folder.
        model_settings: the settings of the weights (``input_size``, ``slice_axis``, ``mask_ratios``,
            ``residual_map_reference``) for the checks of each input; None skips them.
        image_key: item key of the image.
        pred_key: item key of the prediction.
    """

    def __init__(
        self,
        network: nn.Module,
        preprocessing: Callable[[dict], dict],
        inferer: Callable[..., torch.Tensor],
        postprocessing: Callable[[dict], dict],
        device: Any = "cpu",
        amp: Any = False,
        overwrite: Any = False,
        report_dir: str | os.PathLike | None = None,
        progress: Any = True,
        extensions: Sequence[str] = NIFTI_EXTENSIONS,
        model_settings: Mapping[str, Any] | None = None,
        image_key: str = "image",
        pred_key: str = "pred",
    ) -> None:
        self.network = network
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = as_device(device)
        self.amp = as_flag(amp, "amp") and self.device.type == "cuda"
        self.overwrite = as_flag(overwrite, "overwrite")
        self.report_dir = None if report_dir is None else os.fspath(report_dir)
        self.progress = as_flag(progress, "progress")
        self.extensions = tuple(extensions)
        self.model_settings = dict(model_settings) if model_settings is not None else None
        self.image_key = image_key
        self.pred_key = pred_key

    def savers(self) -> list[SavePredictiond]:
        """The :class:`SavePredictiond` transforms of ``postprocessing`` (nested ``Compose`` included)."""
        post = self.postprocessing
        transforms = post.flatten().transforms if isinstance(post, Compose) else [post]
        return [t for t in transforms if isinstance(t, SavePredictiond)]

    def output_paths(self, image_path: str) -> list[str]:
        """The files the pipeline writes for ``image_path``."""
        return [saver.output_path(image_path) for saver in self.savers()]

    def preprocess(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Run ``preprocessing`` on one item ``{image_key: path, ...}`` and check the result against
        the model; returns the network-ready item, with ``"warnings"`` (a list of strings)."""
        item = self.preprocessing(dict(data))
        if not isinstance(item, Mapping):
            raise TypeError(f"preprocessing must return one dict item, got {type(item).__name__}.")
        item = dict(item)
        item["warnings"] = []
        if self.model_settings is not None:
            image = item[self.image_key]
            source = source_of(image, self.image_key)
            if source.startswith("<in-memory"):
                source = os.fspath(data.get(self.image_key, source))
            check_input_size(image, self.model_settings["input_size"], self.model_settings["slice_axis"], source)
            item["warnings"] = input_warnings(image, self.model_settings, len(self.model_settings["mask_ratios"]))
            for warning in item["warnings"]:
                logger.warning(f"{source}: {warning}")
        return item

    def infer(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Infer the logits of a pre-processed item and run ``postprocessing``; returns the final item.

        ``item[image_key]`` is the network input (C, H, W, D); the logits (1, H, W, D) go to
        ``pred_key`` before ``postprocessing``.
        """
        self.network.eval()
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=self.amp):
            logits = self.inferer(_to_device(item[self.image_key].unsqueeze(0), self.device), self.network)
        item = dict(item)
        # (1, 1, H, W, D) -> (1, H, W, D), in float32 whatever autocast produced
        item[self.pred_key] = logits[0].float().cpu()
        return self.postprocessing(item)

    def predict(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`preprocess` then :meth:`infer` one item; raises the pipeline's errors unchanged."""
        return self.infer(self.preprocess(data))

    def run(self, inputs: str | os.PathLike | Sequence[str | os.PathLike] | None) -> dict[str, Any]:
        """Process a file, a folder or a list of files.

        A single file is strict: an error raises :class:`~bundle.utils.errors.InferenceError`
        (message starting with the path) and an existing output raises FileExistsError. A folder
        or list is lenient while it runs: every file gets a report entry ``{"image", "status": "ok" |
        "error" | "skipped", "outputs", "error", "warnings", "time_s"}``, the report is written to
        ``report_dir``, and then, if any file failed, a :class:`~bundle.utils.errors.FolderRunError`
        says how many and where the report is.

        Returns:
            the report: ``{"inputs", "n_ok", "n_error", "n_skipped", "n_warned", "files": [...],
            "report_path"}``.
        """
        single = isinstance(inputs, (str, os.PathLike)) and (os.path.isfile(inputs) or is_dicom_series_dir(inputs))
        files = list_inputs(inputs, self.extensions)
        self._check_distinct_outputs(files)
        iterator: Any = files
        if not single and self.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(files, desc="inference", unit="file")
        entries = [self._run_one(path, strict=single) for path in iterator]
        report = {
            "inputs": os.fspath(inputs) if isinstance(inputs, (str, os.PathLike)) else list(files),
            "n_ok": sum(e["status"] == "ok" for e in entries),
            "n_error": sum(e["status"] == "error" for e in entries),
            "n_skipped": sum(e["status"] == "skipped" for e in entries),
            "n_warned": sum(bool(e["warnings"]) for e in entries),
            "files": entries,
            "report_path": None,
        }
        for entry in entries:
            if entry["status"] != "ok":
                logger.warning(f"{entry['status']}: {entry['error']}")
        if self.report_dir is not None and not single:
            # one report per run, named by its start time: earlier reports are never replaced
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            report["report_path"] = os.path.join(self.report_dir, f"inference_report_{stamp}.json")
            write_json(report, report["report_path"], overwrite=False)
        where = f"report {report['report_path']}" if report["report_path"] else f"outputs {entries[0]['outputs']}"
        logger.info(
            f"inference: {report['n_ok']} ok, {report['n_error']} failed, {report['n_skipped']} skipped, "
            f"{report['n_warned']} with warnings; {where}"
        )
        if report["n_error"]:
            first = next(e["error"] for e in entries if e["status"] == "error")
            raise FolderRunError(
                f"inference: {report['n_error']} of {len(entries)} inputs failed (first: {first}); "
                f"{report['report_path'] or 'no report written'}"
            )
        return report

    def _check_distinct_outputs(self, files: Sequence[str]) -> None:
        """Two inputs whose outputs would have the same name (``a/image.nii.gz``, ``b/image.nii.gz``)
        stop the run before any work: the second would replace the first's mask."""
        writer: dict[str, str] = {}
        for path in files:
            for output in self.output_paths(path):
                if output in writer and writer[output] != path:
                    raise DatasetError(
                        f"{writer[output]} and {path} would both be written to {output}: run them into "
                        "different --output_dir folders, or rename one."
                    )
                writer[output] = path

    def _run_one(self, path: str, strict: bool) -> dict[str, Any]:
        outputs = self.output_paths(path)
        entry: dict[str, Any] = {
            "image": path,
            "status": "ok",
            "outputs": outputs,
            "error": None,
            "warnings": [],
            "time_s": None,
        }
        existing = [p for p in outputs if os.path.exists(p)]
        if existing and not self.overwrite:
            message = f"{path}: output {', '.join(existing)} exists; set --overwrite true to replace it."
            if strict:
                raise FileExistsError(message)
            entry.update(status="skipped", error=message)
            return entry
        start = time.perf_counter()
        try:
            item = self.predict({self.image_key: path})
        except Exception as e:
            if strict:
                if user_error(e) is None:
                    raise  # a bug: keep its traceback
                raise InferenceError(message_naming(path, e)) from e
            entry.update(status="error", error=message_naming(path, e))
            return entry
        entry["warnings"] = list(item.get("warnings", []))
        entry["time_s"] = time.perf_counter() - start
        return entry
