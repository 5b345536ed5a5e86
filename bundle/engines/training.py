"""Training helpers the GRCSF configs wire into MONAI's engines (``configs/train.json``).

MONAI and ignite provide the trainer, evaluator, metrics and most handlers; this module adds
what they lack for the paper's recipe (SPEC section 6) and for resumable training:

- :class:`WarmupCosineLR` -- warm-up with the lr rising from the base lr to ``factor`` x base lr,
  then cosine decay; stepped per iteration; refuses to resume a different schedule.
- :func:`build_loss` -- Dice + focal (ATLAS, MSD Lung) or focal only (orCaScore).
- :func:`split_records` -- deterministic train/validation split by subject, cohort-disjoint when
  the records carry cohorts; :func:`check_records` -- clear errors for records naming missing files.
- :func:`num_slices_per_epoch` -- the number of slices one (rank's) epoch draws.
- :class:`DiskCachedTransform` -- a deterministic volume transform (preprocessing + residual maps)
  whose results persist on disk across epochs and runs, keyed by the record, the transform's
  settings and the content of files it depends on (the MAE checkpoint).
- :class:`AtomicCheckpointSaver` -- MONAI's CheckpointSaver, but writing atomically, with a fixed
  name for the per-epoch checkpoint and a state dict (its best-score memory) for resuming.
- :class:`ResumeCheckpointLoader` -- MONAI's CheckpointLoader that starts fresh when the
  checkpoint does not exist yet.
- :class:`ResumableEarlyStopHandler` -- early stopping on a validation metric, resumable.
- :class:`TrainingCurvesHandler` -- writes a PNG of train loss / validation metrics per epoch.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data import PersistentDataset
from monai.handlers import CheckpointLoader, CheckpointSaver, EarlyStopHandler, from_engine
from monai.losses import DiceFocalLoss, FocalLoss
from monai.optimizers import WarmupCosineSchedule
from monai.transforms import Compose, Transform
from monai.utils import IgniteInfo, min_version, optional_import
from torch.nn.modules.loss import _Loss
from torch.optim import Optimizer

from bundle.data.slices import PackMetaTensors, transform_fingerprint, unpack_meta_tensors
from bundle.engines.inference import atomic_output

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
DiskSaver, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "DiskSaver")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "LOSS_TYPES",
    "AtomicCheckpointSaver",
    "DiskCachedTransform",
    "ResumableEarlyStopHandler",
    "ResumeCheckpointLoader",
    "TrainingCurvesHandler",
    "WarmupCosineLR",
    "build_loss",
    "check_records",
    "num_slices_per_epoch",
    "split_records",
]

LOSS_TYPES = ("dice_focal", "focal")


class WarmupCosineLR(WarmupCosineSchedule):
    """Linear warm-up from the optimizer's lr to ``warmup_lr_factor`` times it, then cosine decay.

    The paper (Sec. 4.3) starts at lr 1e-4 and lets it rise x10 during the first five epochs
    before a cosine decay. MONAI's :class:`~monai.optimizers.WarmupCosineSchedule` implements the
    shape but scales *down* from the optimizer's lr, so this class writes the peak lr
    (base x factor) into the optimizer's parameter groups and starts the warm-up at
    ``1 / warmup_lr_factor`` of it: the optimizer is configured with the paper's base lr.

    Step it once per iteration (``LrScheduleHandler(epoch_level=False)``). Its state dict is the
    torch LRScheduler one (step counter and schedule), so a resumed run continues on the same
    curve; resuming with a different schedule (``max_epochs``, batch size or the number of
    slices per epoch changed) is refused with a clear message, because the restored cosine
    would silently run past its end and rise again.

    Args:
        optimizer: optimizer whose every parameter group's ``lr`` is the base (start) lr.
        iterations_per_epoch: optimizer steps per epoch (``len(train_dataloader)``).
        max_epochs: epochs of the whole schedule; the cosine reaches ``end_lr`` at its end.
        warmup_epochs: epochs of the linear warm-up.
        warmup_lr_factor: peak lr / base lr (10 in the paper), >= 1.
        end_lr: lower bound of the lr after the warm-up.
        last_epoch: index of the last step, -1 to start a new schedule.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        iterations_per_epoch: int,
        max_epochs: int,
        warmup_epochs: int = 5,
        warmup_lr_factor: float = 10.0,
        end_lr: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if iterations_per_epoch < 1 or max_epochs < 1:
            raise ValueError(
                f"WarmupCosineLR needs iterations_per_epoch >= 1 and max_epochs >= 1, "
                f"got {iterations_per_epoch} and {max_epochs} (is the training data set empty?)."
            )
        if warmup_lr_factor < 1.0:
            raise ValueError(f"warmup_lr_factor must be >= 1, got {warmup_lr_factor}.")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        if last_epoch == -1:
            # WarmupCosineSchedule multiplies the groups' lr by a factor in [1/factor, 1] during the
            # warm-up, so the groups must hold the peak; 'initial_lr' is what torch records from it.
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * warmup_lr_factor
        self.iterations_per_epoch = int(iterations_per_epoch)
        self.max_epochs = int(max_epochs)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_lr_factor = float(warmup_lr_factor)
        super().__init__(
            optimizer=optimizer,
            warmup_steps=self.warmup_epochs * self.iterations_per_epoch,
            t_total=self.max_epochs * self.iterations_per_epoch,
            end_lr=end_lr,
            cycles=0.5,
            last_epoch=last_epoch,
            warmup_multiplier=1.0 / self.warmup_lr_factor,
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step counter; refuse a checkpoint written for a different schedule."""
        fields = ("iterations_per_epoch", "max_epochs", "warmup_epochs", "warmup_lr_factor", "end_lr")
        changed = {k: (state_dict[k], getattr(self, k)) for k in fields if k in state_dict}
        changed = {k: (old, new) for k, (old, new) in changed.items() if old != new}
        if changed:
            details = ", ".join(f"{k}: checkpoint {old} vs now {new}" for k, (old, new) in changed.items())
            raise ValueError(
                "cannot resume the lr schedule: the checkpoint was written for a different schedule "
                f"({details}). "
                "Resume with the settings of the interrupted run, or start a new run (resume=false)."
            )
        super().load_state_dict(state_dict)


def build_loss(
    loss_type: str = "dice_focal",
    alpha: float = 0.25,
    gamma: float = 2.0,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    batch_dice: bool = True,
) -> _Loss:
    """The segmentation loss on one-channel lesion logits (B, 1, H, W[, D]) against binary labels.

    Args:
        loss_type: ``"dice_focal"`` (Dice + focal, ATLAS and MSD Lung) or ``"focal"`` (orCaScore).
        alpha: focal loss balance of the lesion class.
        gamma: focal loss focusing exponent.
        lambda_dice: weight of the Dice term (``"dice_focal"`` only).
        lambda_focal: weight of the focal term (``"dice_focal"`` only).
        batch_dice: sum the Dice overlap over the batch before dividing [choice]: most slices hold
            no lesion, and a per-slice Dice of an empty slice is either 0 or 1 and drowns the signal.

    Returns:
        a loss module mapping (logits, label) to a scalar; sigmoid is applied inside.
    """
    if loss_type == "dice_focal":
        return DiceFocalLoss(
            include_background=True,
            sigmoid=True,
            batch=batch_dice,
            gamma=gamma,
            alpha=alpha,
            lambda_dice=lambda_dice,
            lambda_focal=lambda_focal,
        )
    if loss_type == "focal":
        return FocalLoss(include_background=True, use_softmax=False, gamma=gamma, alpha=alpha)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}.")


def check_records(
    records: Sequence[Mapping[str, Any]],
    keys: Sequence[str] = ("image", "label"),
    keep_keys: Sequence[str] = ("subject", "cohort"),
    source: str = "datalist",
) -> list[dict[str, Any]]:
    """Check that every record names existing files under ``keys``; return the records trimmed.

    Args:
        records: data records, e.g. ``{"subject": ..., "cohort": ..., "image": path, "label": path}``.
        keys: keys whose values must be paths of existing files (or directories, for DICOM series).
        keep_keys: other entries kept when present. The rest (e.g. the per-lesion lists of the
            synthetic data index) is dropped: a DataLoader cannot collate ragged lists, and the
            records key the persistent cache, which must not depend on bookkeeping entries.
        source: where the records come from, for the error messages.

    Returns:
        new dicts holding ``keys`` and the present ``keep_keys``, in the input order.

    Raises:
        ValueError: when there are no records or a record lacks one of ``keys``.
        FileNotFoundError: naming the record and the missing file.
    """
    records = [dict(r) for r in records]
    if not records:
        raise ValueError(f"{source}: no records (no image/label pairs found).")
    for index, record in enumerate(records):
        for key in keys:
            if key not in record:
                raise ValueError(f"{source}: record {index} ({record}) has no {key!r} entry.")
            path = record[key]
            if not isinstance(path, (str, os.PathLike)) or not os.path.exists(path):
                name = record.get("subject", f"record {index}")
                raise FileNotFoundError(f"{source}: {key} file of {name} does not exist: {path}")
    wanted = tuple(keys) + tuple(k for k in keep_keys if k not in keys)
    return [{k: r[k] for k in wanted if k in r} for r in records]


def split_records(
    records: Sequence[Mapping[str, Any]],
    val_fraction: float = 0.2,
    seed: int = 0,
    subject_key: str = "subject",
    cohort_key: str | None = "cohort",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split records into training and validation sets by subject, deterministically.

    All records of one subject land on the same side. When the records carry ``cohort_key`` and
    there are at least two cohorts, whole cohorts are moved to validation (the paper tests on
    cohorts unseen in training), the smallest number of cohorts that reaches ``val_fraction`` of
    the subjects, always leaving one cohort for training. Records without ``subject_key`` count as
    one subject each (identified by their image path).

    Args:
        records: data records (dicts).
        val_fraction: wanted fraction of subjects in the validation set, in (0, 1).
        seed: seed of the shuffle of subjects (or cohorts); the same seed gives the same split.
        subject_key: record key of the subject identifier.
        cohort_key: record key of the cohort identifier, None to ignore cohorts.

    Returns:
        (train_records, val_records), each in the input order; both non-empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    records = [dict(r) for r in records]

    def subject_of(index: int) -> str:
        record = records[index]
        return str(record.get(subject_key, record.get("image", index)))

    subjects = sorted({subject_of(i) for i in range(len(records))})
    if len(subjects) < 2:
        raise ValueError(f"split_records needs records of at least 2 subjects, got {len(subjects)}.")
    rng = random.Random(seed)
    cohort_of: dict[str, str] = {}
    if cohort_key is not None and all(cohort_key in r for r in records):
        for i, record in enumerate(records):
            cohort_of.setdefault(subject_of(i), str(record[cohort_key]))
    cohorts = sorted(set(cohort_of.values()))
    num_val = max(1, round(val_fraction * len(subjects)))
    if len(cohorts) >= 2:
        rng.shuffle(cohorts)
        val_subjects: set[str] = set()
        for cohort in cohorts[:-1]:  # the last cohort always stays in training
            if len(val_subjects) >= num_val:
                break
            val_subjects |= {s for s, c in cohort_of.items() if c == cohort}
    else:
        rng.shuffle(subjects)
        val_subjects = set(subjects[: min(num_val, len(subjects) - 1)])
    train = [r for i, r in enumerate(records) if subject_of(i) not in val_subjects]
    val = [r for i, r in enumerate(records) if subject_of(i) in val_subjects]
    return train, val


def num_slices_per_epoch(
    num_slices: int, max_slices_per_epoch: int | None = None, world_size: int = 1
) -> int:
    """Slices drawn per epoch and per rank: all of them, or at most ``max_slices_per_epoch``.

    Args:
        num_slices: slices in the training set.
        max_slices_per_epoch: cap for the whole epoch (all ranks together), None for no cap.
        world_size: number of distributed ranks sharing the epoch.
    """
    if num_slices < 1:
        raise ValueError("the training set holds no slices: check the datalist and the slice selection.")
    total = num_slices if max_slices_per_epoch is None else min(num_slices, int(max_slices_per_epoch))
    return max(1, math.ceil(total / world_size))


def _file_digest(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DiskCachedTransform(Transform):
    """A deterministic dict transform whose results are kept on disk, across epochs and runs.

    Residual maps cost ``2 x num_passes`` MAE forward passes per slice, far more than a training
    epoch on the resulting slices; this transform computes them once per volume. Results live in
    ``cache_dir`` in the format of :class:`bundle.data.slices.VolumeSliceDataset`'s disk cache
    (:class:`~bundle.data.slices.PackMetaTensors`), keyed by the record (its file paths), the
    transform's settings (:func:`~bundle.data.slices.transform_fingerprint`) and the sha256 of
    ``depends_on`` files: a retrained MAE checkpoint at the same path must not hit stale maps,
    and the fingerprint only sees the transforms' public settings, not network weights.

    Wrap it in a memory cache (``VolumeSliceDataset(cache="memory")``, ``CacheDataset``) for fast
    slice access; use it alone (``monai.data.Dataset``) to read each volume from disk when needed.

    Args:
        transform: deterministic transform, record -> dict of channel-first tensors/MetaTensors.
        cache_dir: cache folder (created when missing); None computes without caching.
        depends_on: files whose content the results depend on (missing files are ignored:
            the transform itself reports them when it needs them).

    Returns (when called on a record): the transform's output; MetaTensors keep their affine and
    ``filename_or_obj``/``space`` meta entries only.
    """

    def __init__(
        self,
        transform: Callable,
        cache_dir: str | os.PathLike | None,
        depends_on: Sequence[str | os.PathLike] = (),
    ) -> None:
        self.transform = transform
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.depends_on = [str(p) for p in depends_on]
        digests = [f"{p}:{_file_digest(p)}" for p in self.depends_on if os.path.isfile(p)]
        self._files_digest = hashlib.sha256("\n".join(digests).encode("utf-8")).hexdigest()
        # flatten: PersistentDataset caches up to the first random or nested Compose, so a nested
        # Compose would cache only the raw record and recompute everything on every call
        self._pipeline = Compose([transform, PackMetaTensors()]).flatten()

    def _hash_transform(self, transforms: Sequence[Any]) -> bytes:
        combined = transform_fingerprint(transforms) + self._files_digest.encode("utf-8")
        return hashlib.sha256(combined).hexdigest().encode("utf-8")

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        # the global RNG state must not depend on cache hits: computing the maps builds the MAE
        # (random init before its weights are loaded), which would otherwise change the
        # segmentation network's init and the slice sampling of a run with a cold cache
        devices = None if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            if self.cache_dir is None:
                return dict(self.transform(data))
            # a one-item PersistentDataset: MONAI's cache look-up, atomic write, corrupt-file recovery
            dataset = PersistentDataset(
                [data], self._pipeline, cache_dir=self.cache_dir, hash_transform=self._hash_transform
            )
            return unpack_meta_tensors(dataset[0])


class _AtomicDiskSaver(DiskSaver):
    """ignite DiskSaver writing to a temporary file then renaming it, under an optional fixed name.

    With a fixed name, ``remove`` of the previous file is a no-op: ``os.replace`` overwrites it,
    so the file never disappears (ignite removes the old checkpoint before writing the new one).
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI :class:`~monai.handlers.CheckpointSaver` whose files are written atomically.

    MONAI 1.6 creates its ignite ``DiskSaver`` with ``atomic=False`` (for group read permission,
    which ignite's atomic path also grants), so an interrupted save can leave a truncated
    ``model.pt``. Here every save goes to a temporary file in ``save_dir`` that is then renamed.
    Additions: ``interval_filename`` gives the interval checkpoint a fixed name (e.g.
    ``checkpoint_last.pt``, overwritten every ``save_interval`` epochs), and :meth:`state_dict`
    returns the key-metric memory (best score so far) so that a resumed run does not overwrite
    the best model with a worse one.

    Args: as :class:`~monai.handlers.CheckpointSaver`, plus

        interval_filename: fixed file name of the interval checkpoint, None for MONAI's
            ``checkpoint_epoch=N.pt`` names.
        enabled: attach to the engine at all; False on the non-main processes of a distributed
            run, which keep the object (its state is part of the resume checkpoint) but never save.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        name: str | None = None,
        file_prefix: str = "",
        save_final: bool = False,
        final_filename: str | None = None,
        save_key_metric: bool = False,
        key_metric_name: str | None = None,
        key_metric_n_saved: int = 1,
        key_metric_filename: str | None = None,
        key_metric_save_state: bool = False,
        key_metric_greater_or_equal: bool = False,
        key_metric_negative_sign: bool = False,
        epoch_level: bool = True,
        save_interval: int = 0,
        n_saved: int | None = None,
        interval_filename: str | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        if interval_filename is not None and n_saved != 1:
            raise ValueError("interval_filename keeps a single file: set n_saved=1.")
        super().__init__(
            save_dir=save_dir,
            save_dict=save_dict,
            name=name,
            file_prefix=file_prefix,
            save_final=save_final,
            final_filename=final_filename,
            save_key_metric=save_key_metric,
            key_metric_name=key_metric_name,
            key_metric_n_saved=key_metric_n_saved,
            key_metric_filename=key_metric_filename,
            key_metric_save_state=key_metric_save_state,
            key_metric_greater_or_equal=key_metric_greater_or_equal,
            key_metric_negative_sign=key_metric_negative_sign,
            epoch_level=epoch_level,
            save_interval=save_interval,
            n_saved=n_saved,
        )
        for checkpoint, filename in (
            (self._final_checkpoint, final_filename),
            (self._key_metric_checkpoint, key_metric_filename),
            (self._interval_checkpoint, interval_filename),
        ):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(dirname=save_dir, filename=filename)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            super().attach(engine)

    def state_dict(self) -> OrderedDict:
        """The key-metric checkpoint's memory of saved scores (empty without ``save_key_metric``)."""
        if self._key_metric_checkpoint is None:
            return OrderedDict()
        return self._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the memory of saved scores written by :meth:`state_dict`."""
        if self._key_metric_checkpoint is not None and state_dict:
            self._key_metric_checkpoint.load_state_dict(state_dict)


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI :class:`~monai.handlers.CheckpointLoader` for resuming, tolerant of a first run.

    Attached only when ``enabled``; at the start of the run it loads ``load_path`` when the file
    exists and otherwise logs that training starts from scratch.

    Args:
        load_path: the per-epoch checkpoint, e.g. ``models/checkpoint_last.pt``.
        load_dict: objects to restore, the same dict the checkpoint was saved from.
        enabled: whether to resume at all (the ``resume`` config id).
        map_location: where to map the tensors (the training device).
        name: logger name, None for the engine's logger.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict,
        enabled: bool = True,
        map_location: Any = None,
        name: str | None = None,
    ) -> None:
        super().__init__(load_path=load_path, load_dict=load_dict, name=name, map_location=map_location)
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        if not os.path.isfile(self.load_path):
            self.logger.info(f"resume: no checkpoint at {self.load_path}, training starts from scratch.")
            return
        super().__call__(engine)
        state = engine.state
        self.logger.info(f"resume: continuing after epoch {state.epoch} (iteration {state.iteration}).")


class ResumableEarlyStopHandler(EarlyStopHandler):
    """Early stopping on one validation metric, with a state dict for resuming.

    Attach it to the evaluator: after every validation the score is read from
    ``engine.state.metrics[metric_name]`` and the trainer stops after ``patience`` validations
    without improvement. In distributed training the metric must already be reduced over the
    ranks (MONAI cumulative metrics are), so that every rank stops at the same epoch.

    Args:
        patience: validations without improvement before stopping.
        metric_name: the evaluator metric to watch, e.g. ``"val_loss"``.
        trainer: the trainer to stop.
        greater_is_better: False for losses (lower is better), True for e.g. Dice.
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(
        self,
        patience: int,
        metric_name: str = "val_loss",
        trainer: Engine | None = None,
        greater_is_better: bool = False,
        min_delta: float = 0.0,
    ) -> None:
        self.metric_name = metric_name
        self.greater_is_better = greater_is_better
        super().__init__(
            patience=patience,
            score_function=self._score,
            trainer=trainer,
            min_delta=min_delta,
            epoch_level=True,
        )

    def _score(self, engine: Engine) -> float:
        if self.metric_name not in engine.state.metrics:
            raise KeyError(
                f"early stopping watches {self.metric_name!r}, "
                f"not among the metrics {list(engine.state.metrics)}."
            )
        value = float(engine.state.metrics[self.metric_name])
        return value if self.greater_is_better else -value

    def state_dict(self) -> OrderedDict:
        """``counter`` (validations without improvement) and ``best_score``."""
        if self._handler is None:
            raise RuntimeError("set the trainer of the early stop handler before saving its state.")
        return self._handler.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if self._handler is None:
            raise RuntimeError("set the trainer of the early stop handler before loading its state.")
        self._handler.load_state_dict(state_dict)


def _first_loss(output: Any) -> float:
    """The scalar loss of one iteration from ``from_engine(["loss"], first=True)``-like outputs."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    return float(output.item() if isinstance(output, torch.Tensor) else output)


class TrainingCurvesHandler:
    """Plot the mean training loss and validation metrics per epoch into a PNG.

    Attach it to the trainer *after* the ``ValidationHandler`` (ignite runs the handlers of an
    event in attach order), so the evaluator's metrics of the epoch are available. The PNG is
    rewritten atomically at the end of every epoch; the history is part of :meth:`state_dict`,
    so a resumed run draws the whole curve.

    Args:
        output_path: the PNG file, e.g. ``<output_dir>/training_curves.png``.
        evaluator: the validation engine whose ``state.metrics`` hold the validation values.
        metric_names: evaluator metrics to plot; names containing "loss" share the loss panel.
        output_transform: maps ``engine.state.output`` to the iteration loss, default
            ``from_engine(["loss"], first=True)``.
        enabled: attach to the engine at all; False on the non-main processes of a distributed
            run (they keep the object, whose history is part of the resume checkpoint).
    """

    def __init__(
        self,
        output_path: str,
        evaluator: Engine | None = None,
        metric_names: Sequence[str] = ("val_loss", "val_mean_dice"),
        output_transform: Callable[[Any], Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.output_path = Path(output_path)
        self.evaluator = evaluator
        self.metric_names = tuple(metric_names)
        self.output_transform = output_transform or from_engine(["loss"], first=True)
        self.enabled = enabled
        names = ("epoch", "train_loss", *self.metric_names)
        self.history: dict[str, list[float]] = {name: [] for name in names}
        self._loss_sum = 0.0
        self._loss_count = 0

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._loss_sum, self._loss_count = 0.0, 0

    def _accumulate(self, engine: Engine) -> None:
        self._loss_sum += _first_loss(self.output_transform(engine.state.output))
        self._loss_count += 1

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        self.history["epoch"].append(epoch)
        self.history["train_loss"].append(self._loss_sum / max(self._loss_count, 1))
        validated = self.evaluator is not None and getattr(self.evaluator.state, "epoch", None) == epoch
        for name in self.metric_names:
            value = self.evaluator.state.metrics.get(name) if validated else None  # type: ignore[union-attr]
            self.history[name].append(float(value) if value is not None else math.nan)
        self.write_png()

    def write_png(self) -> None:
        """Draw the history and replace ``output_path`` atomically."""
        # matplotlib's object API with the Agg canvas: no pyplot global state, no display needed
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        loss_names = ["train_loss"] + [m for m in self.metric_names if "loss" in m]
        other_names = [m for m in self.metric_names if "loss" not in m]
        fig = Figure(figsize=(10 if other_names else 5, 4), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2 if other_names else 1, squeeze=False)[0]
        for ax, names, ylabel in ((axes[0], loss_names, "loss"), (axes[-1], other_names, "metric")):
            if not names:
                continue
            for name in names:
                ax.plot(self.history["epoch"], self.history[name], marker="o", label=name)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        with atomic_output(self.output_path, overwrite=True) as tmp:
            fig.savefig(tmp, format="png")

    def state_dict(self) -> dict[str, list[float]]:
        """The per-epoch history (plain lists of floats)."""
        return {k: list(v) for k, v in self.history.items()}

    def load_state_dict(self, state_dict: Mapping[str, Sequence[float]]) -> None:
        for key in self.history:
            self.history[key] = list(state_dict.get(key, []))

