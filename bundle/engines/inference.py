"""Inference helpers the GRCSF configs wire together (``configs/inference.json``).

MONAI provides the transforms, the slice-wise inferer and the evaluator; this module adds what a
command-line tool over real folders needs and MONAI lacks:

- :func:`list_inputs` -- one NIfTI file, a folder of them, a glob pattern or a list of paths, as a list.
- :func:`prediction_path` / :class:`PredictionLayout` -- where the prediction of an input goes,
  refusing to replace an existing file unless asked.
- :class:`AtomicNibabelWriter` / :class:`SavePredictiond` -- MONAI's ``SaveImaged`` writing through a
  temporary file and ``os.replace``, so an interrupted run never leaves a truncated mask.
- :func:`load_network_weights` / :class:`NetworkCheckpointLoader` -- checkpoint loading whose error
  for a checkpoint of another architecture names the file and the mismatching keys.
- :class:`SegmentationRunner` -- runs the config's ``preprocessing`` / ``inferer`` /
  ``postprocessing`` on every input with a progress bar and a per-file report: one bad file does
  not stop a folder, and existing outputs are skipped unless ``overwrite`` is set.
- :func:`atomic_output`, :func:`write_json`, :func:`describe_error` -- small shared utilities, also
  used by :mod:`bundle.engines.evaluation` and :mod:`bundle.engines.visualization`.

The same ``preprocessing`` / ``inferer`` / ``postprocessing`` objects serve the CLI (through the
runner), MONAI Label (which reads those ids itself and drops ``SaveImaged`` instances, hence
:class:`SavePredictiond` subclasses it) and the MONAI ``SupervisedEvaluator`` of the config.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data import FolderLayoutBase, NibabelWriter
from monai.handlers import CheckpointLoader
from monai.transforms import Compose, SaveImaged
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "NIFTI_EXTENSIONS",
    "AtomicNibabelWriter",
    "InferenceError",
    "NetworkCheckpointLoader",
    "PredictionLayout",
    "SavePredictiond",
    "SegmentationRunner",
    "atomic_output",
    "describe_error",
    "is_dicom_file",
    "is_dicom_series_dir",
    "list_inputs",
    "load_network_weights",
    "prediction_path",
    "write_json",
]

NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- small utilities


@contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` with ``os.replace``.

    The temporary name ends with the final file name, so writers that pick the format from the
    extension (nibabel: ``.nii.gz``) see the right one. On error the temporary file is removed and
    ``path`` is untouched.

    Args:
        path: the final file.
        overwrite: replace an existing ``path``; when False an existing file raises FileExistsError
            before anything is written.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; set overwrite=true to replace it.")
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{name}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates the file 0600; outputs get the permissions any new file would get
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> str:
    """Write ``obj`` as indented JSON atomically (NaN becomes ``null``); returns the path."""
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "w") as f:
        json.dump(_json_safe(obj), f, indent=2)
        f.write("\n")
    return os.fspath(path)


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats by None (strict JSON has no NaN) and numpy scalars by Python ones."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    return obj


#: message starts of the RuntimeErrors MONAI wraps errors in (transform chains, config expressions)
_MONAI_WRAPPERS = ("applying transform", "Failed to evaluate")


def describe_error(exc: BaseException) -> str:
    """``"Type: message"`` of the first exception in the chain of ``exc`` that is not a MONAI wrapper.

    MONAI re-raises every error inside a transform chain as ``RuntimeError("applying transform
    ...")`` (once per nesting level) and every error of a config expression as
    ``RuntimeError("Failed to evaluate ...")``; the useful message (e.g. naming the unreadable file)
    is that of the exception they wrap.
    """
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if not (isinstance(current, RuntimeError) and str(current).startswith(_MONAI_WRAPPERS)):
            return f"{type(current).__name__}: {current}"
        current = current.__cause__ or current.__context__
    return f"{type(exc).__name__}: {exc}"


class InferenceError(RuntimeError):
    """Inference on one input failed; the message starts with the input path."""


def _naming(path: str, exc: BaseException) -> str:
    """The message of ``exc`` prefixed with ``path`` unless it already names it."""
    message = describe_error(exc)
    return message if path in message else f"{path}: {message}"


# ----------------------------------------------------------------------------------- inputs


def _is_nifti(path: str, extensions: Sequence[str]) -> bool:
    return any(path.lower().endswith(ext) for ext in extensions)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (the ``DICM`` marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def is_dicom_series_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding DICOM files (one input series, read as one volume)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file() and not entry.name.startswith(".") and is_dicom_file(entry.path):
            return True
    return False


def list_inputs(
    inputs: str | os.PathLike | Sequence[str | os.PathLike], extensions: Sequence[str] = NIFTI_EXTENSIONS
) -> list[str]:
    """The input images: one file, the images of a folder, a glob pattern, or a list of paths.

    A folder is not searched recursively and its hidden files (e.g. temporary files of an
    interrupted write) are ignored. A folder holding DICOM files is one input (a DICOM series),
    and so are the DICOM series folders inside a folder or matched by a pattern; a pattern (``*``, ``?``, ``[``; ``**`` recurses) matches files,
    e.g. ``demo_data/atlas/Training/**/*_T1w.nii.gz``. A list is returned as given, missing entries
    included: the runner reports them per file.

    Args:
        inputs: a file, a folder, a glob pattern, or a list of paths.
        extensions: file name endings that count as images in a folder (lower case).

    Raises:
        FileNotFoundError: ``inputs`` is a path that does not exist, or a pattern matching nothing.
        ValueError: a folder holding no image.
    """
    if not isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(p) for p in inputs]
    path = os.fspath(inputs)
    if os.path.isfile(path):
        return [path]
    if is_dicom_series_dir(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if not name.startswith(".")
            and (
                (_is_nifti(name, extensions) and os.path.isfile(os.path.join(path, name)))
                or is_dicom_series_dir(os.path.join(path, name))
            )
        )
        if not files:
            raise ValueError(
                f"input folder {path} holds no image with an extension in {tuple(extensions)} "
                "and no DICOM series folder."
            )
        return files
    if glob.has_magic(path):
        files = sorted(
            p for p in glob.glob(path, recursive=True) if os.path.isfile(p) or is_dicom_series_dir(p)
        )
        if not files:
            raise FileNotFoundError(f"no input file matches {path}.")
        return files
    raise FileNotFoundError(f"input {path} does not exist.")


def prediction_path(
    image_path: str | os.PathLike, output_dir: str | os.PathLike, postfix: str, ext: str
) -> str:
    """``output_dir/<image name without extension>_<postfix><ext>``.

    ``sub-01_T1w.nii.gz`` with postfix ``seg`` and ext ``.nii.gz`` gives ``sub-01_T1w_seg.nii.gz``;
    a folder input (a DICOM series) contributes its folder name.
    """
    name = os.path.basename(os.path.normpath(os.fspath(image_path)))
    for known in (*NIFTI_EXTENSIONS, ".dcm", ".mha", ".mhd", ".nrrd"):
        if name.lower().endswith(known):
            name = name[: -len(known)]
            break
    ext = ext if not ext or ext.startswith(".") else f".{ext}"
    return os.path.join(os.fspath(output_dir), f"{name}_{postfix}{ext}" if postfix else f"{name}{ext}")


class PredictionLayout(FolderLayoutBase):
    """MONAI folder layout naming outputs with :func:`prediction_path`, refusing to replace files.

    Args:
        output_dir: the output folder (created on the first write).
        postfix: appended to the input name, e.g. ``"seg"`` or ``"prob"``.
        extension: output extension, e.g. ``".nii.gz"``.
        overwrite: whether an existing output may be replaced.
    """

    def __init__(
        self, output_dir: str | os.PathLike, postfix: str, extension: str, overwrite: bool = False
    ) -> None:
        self.output_dir = os.fspath(output_dir)
        self.postfix = postfix
        self.extension = extension
        self.overwrite = overwrite

    def filename(self, subject: str | os.PathLike = "subject", idx: Any = None, **kwargs: Any) -> str:
        """The output path of the input ``subject`` (MONAI passes the input file name here)."""
        path = prediction_path(subject, self.output_dir, self.postfix, self.extension)
        if os.path.exists(path) and not self.overwrite:
            raise FileExistsError(f"output {path} exists; set overwrite=true to replace it.")
        os.makedirs(self.output_dir, exist_ok=True)
        return path


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's NIfTI writer saving to a temporary file in the target folder, then ``os.replace``."""

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        # the layout has already refused an existing file when overwriting is not allowed
        with atomic_output(filename, overwrite=True) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


class SavePredictiond(SaveImaged):
    """``SaveImaged`` for predictions in the input's geometry: atomic, no silent overwrite.

    The item must already be in the input's space (``Invertd`` first): no resampling happens here,
    the data is written with the affine of its metadata. Being a ``SaveImaged``, it is dropped by
    MONAI Label, which writes its own result.

    Args:
        keys: item keys to save, e.g. ``"pred"``.
        output_dir: output folder.
        output_postfix: appended to the input file name, see :func:`prediction_path`.
        output_ext: file extension, ``".nii.gz"`` or ``".nii"``.
        output_dtype: data type on disk, e.g. ``numpy.uint8`` for masks, ``numpy.float32`` for
            probabilities.
        overwrite: replace existing outputs; otherwise an existing output raises FileExistsError.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        output_dir: str | os.PathLike,
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        output_dtype: Any = np.uint8,
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        self.layout = PredictionLayout(output_dir, output_postfix, output_ext, overwrite=overwrite)
        super().__init__(
            keys=keys,
            output_dir=output_dir,
            output_postfix=output_postfix,
            output_ext=output_ext,
            output_dtype=output_dtype,
            resample=False,
            squeeze_end_dims=True,
            separate_folder=False,
            print_log=False,
            writer=AtomicNibabelWriter,
            folder_layout=self.layout,
            savepath_in_metadict=True,
            allow_missing_keys=allow_missing_keys,
        )

    def output_path(self, image_path: str | os.PathLike) -> str:
        """Where the prediction of ``image_path`` is written."""
        return prediction_path(image_path, self.layout.output_dir, self.layout.postfix, self.layout.extension)


# ------------------------------------------------------------------------------ checkpoints


def read_state_dict(path: str | os.PathLike, key: str = "model", map_location: Any = "cpu") -> dict[str, Any]:
    """The network state dict stored in ``path``.

    Accepts a bare state dict (what MONAI's ``CheckpointSaver`` writes for a single object) or a
    dict holding it under ``key`` (e.g. ``{"model": ..., "optimizer": ...}``); a ``module.`` prefix
    left by DistributedDataParallel is removed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first or pass --ckpt_path.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read ({describe_error(e)}).") from e
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        raise ValueError(
            f"checkpoint {path} holds no network state dict (expected tensors, or a dict with {key!r})."
        )
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module.") :]: v for k, v in checkpoint.items()}
    return dict(checkpoint)


def _short_list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"


def check_state_dict(network: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise a ValueError naming ``source`` when ``state_dict`` does not fit ``network`` exactly."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {source} was saved for a different network: missing keys {_short_list(missing)}, "
            f"unexpected keys {_short_list(unexpected)}, shape mismatches (checkpoint vs network) "
            f"{_short_list(shapes)}; check network_preset / rcu settings (rcu_patch_sizes, mask_ratios)."
        )


def load_network_weights(
    network: nn.Module, path: str | os.PathLike, key: str = "model", map_location: Any = "cpu"
) -> nn.Module:
    """Load the weights in ``path`` into ``network`` (strict) and return it.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: unreadable file, or a checkpoint of another architecture; the message names the
            file, the missing / unexpected keys and the shape mismatches.
    """
    state_dict = read_state_dict(path, key=key, map_location=map_location)
    check_state_dict(network, state_dict, os.fspath(path))
    network.load_state_dict(state_dict, strict=True)
    return network


class NetworkCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` for network weights with clear errors, usable without an engine.

    ``initialize`` of the configs calls it directly (``$@checkpointloader()``), so loading does not
    depend on building an evaluator; it can still be attached to an engine like MONAI's loader.

    Args:
        load_path: the checkpoint, e.g. ``models/model.pt``.
        load_dict: ``{"model": network}``; every value must be a ``torch.nn.Module``.
        map_location: where to map the tensors.
        name: logger name.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict[str, nn.Module],
        map_location: Any = "cpu",
        name: str | None = None,
    ) -> None:
        super().__init__(load_path=load_path, load_dict=load_dict, name=name, map_location=map_location)
        wrong = [k for k, v in load_dict.items() if not isinstance(v, nn.Module)]
        if wrong:
            raise TypeError(f"NetworkCheckpointLoader loads networks only; {wrong} are not torch modules.")

    def __call__(self, engine: Engine | None = None) -> None:
        for key, network in self.load_dict.items():
            load_network_weights(network, self.load_path, key=key, map_location=self.map_location)
        self.logger.info(f"loaded {list(self.load_dict)} from {self.load_path}.")


# ----------------------------------------------------------------------------------- runner


def _to_device(x: Any, device: torch.device) -> Any:
    return x.to(device) if isinstance(x, torch.Tensor) else x


class SegmentationRunner:
    """Run the inference pipeline of the configs on files, one at a time, with a per-file report.

    For each input ``path`` the item ``{image_key: path}`` goes through ``preprocessing``, the
    image (C, H, W, D) through ``inferer`` with ``network`` (giving logits (1, H, W, D)) into
    ``pred_key``, and the item through ``postprocessing`` (activation, inversion to the input's
    space, saving). These are the config's ``preprocessing`` / ``inferer`` / ``postprocessing``
    ids, so the runner, the MONAI evaluator and MONAI Label compute the same thing.

    Outputs are those of the :class:`SavePredictiond` transforms in ``postprocessing``: before an
    input is processed, its planned outputs are checked, and existing ones make it ``skipped``
    unless ``overwrite``.

    Args:
        network: the segmentation network, weights loaded (it is switched to eval mode).
        preprocessing: dict transform producing the network input under ``image_key``.
        inferer: MONAI inferer, e.g. ``SliceInferer``.
        postprocessing: dict transform consuming ``pred_key``.
        device: where the network runs.
        amp: autocast the forward pass (CUDA only).
        overwrite: process inputs whose outputs exist (the savers must allow it too).
        report_dir: folder of the JSON report of folder / list runs (None: no report file).
        progress: show a tqdm progress bar for more than one input.
        extensions: image file endings when the input is a folder.
        image_key: item key of the image.
        pred_key: item key of the prediction.
    """

    def __init__(
        self,
        network: nn.Module,
        preprocessing: Callable[[dict], dict],
        inferer: Callable[..., torch.Tensor],
        postprocessing: Callable[[dict], dict],
        device: str | torch.device = "cpu",
        amp: bool = False,
        overwrite: bool = False,
        report_dir: str | os.PathLike | None = None,
        progress: bool = True,
        extensions: Sequence[str] = NIFTI_EXTENSIONS,
        image_key: str = "image",
        pred_key: str = "pred",
    ) -> None:
        self.network = network
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.overwrite = overwrite
        self.report_dir = None if report_dir is None else os.fspath(report_dir)
        self.progress = progress
        self.extensions = tuple(extensions)
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
        """Run ``preprocessing`` on one item ``{image_key: path, ...}``; returns the network-ready item."""
        item = self.preprocessing(dict(data))
        if not isinstance(item, Mapping):
            raise TypeError(f"preprocessing must return one dict item, got {type(item).__name__}.")
        return dict(item)

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

    def run(self, inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, Any]:
        """Process a file, a folder or a list of files.

        A single file is strict: an error raises :class:`InferenceError` (message starting with the
        path) and an existing output raises FileExistsError. A folder or list is lenient: every
        file gets a report entry ``{"image", "status": "ok" | "error" | "skipped", "outputs",
        "error", "time_s"}`` and the run goes on; the report is written to ``report_dir``.

        Returns:
            the report: ``{"inputs", "n_ok", "n_error", "n_skipped", "files": [...], "report_path"}``.
        """
        single = isinstance(inputs, (str, os.PathLike)) and (os.path.isfile(inputs) or is_dicom_series_dir(inputs))
        files = list_inputs(inputs, self.extensions)
        entries = []
        if not single and self.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(files, desc="inference", unit="file")
        else:
            iterator = files
        for path in iterator:
            entries.append(self._run_one(path, strict=single))
        report = {
            "inputs": os.fspath(inputs)
            if isinstance(inputs, (str, os.PathLike))
            else [os.fspath(p) for p in inputs],
            "n_ok": sum(e["status"] == "ok" for e in entries),
            "n_error": sum(e["status"] == "error" for e in entries),
            "n_skipped": sum(e["status"] == "skipped" for e in entries),
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
        where = (
            f"report {report['report_path']}" if report["report_path"] else f"outputs {entries[0]['outputs']}"
        )
        logger.info(
            f"inference: {report['n_ok']} ok, {report['n_error']} failed, "
            f"{report['n_skipped']} skipped; {where}"
        )
        return report

    def _run_one(self, path: str, strict: bool) -> dict[str, Any]:
        outputs = self.output_paths(path)
        entry: dict[str, Any] = {
            "image": path,
            "status": "ok",
            "outputs": outputs,
            "error": None,
            "time_s": None,
        }
        existing = [p for p in outputs if os.path.exists(p)]
        if existing and not self.overwrite:
            message = f"{path}: output {', '.join(existing)} exists; set overwrite=true to replace it."
            if strict:
                raise FileExistsError(message)
            entry.update(status="skipped", error=message)
            return entry
        start = time.perf_counter()
        try:
            self.predict({self.image_key: path})
        except Exception as e:
            if strict:
                raise InferenceError(_naming(path, e)) from e
            entry.update(status="error", error=_naming(path, e))
            return entry
        entry["time_s"] = time.perf_counter() - start
        return entry
