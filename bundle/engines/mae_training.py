"""What MONAI's engines need to pre-train the masked autoencoder (SPEC section 5, paper Sec. 3.3.1, 4.3).

``configs/train_mae.json`` wires these into a :class:`~monai.engines.SupervisedTrainer` and a
:class:`~monai.engines.SupervisedEvaluator` through their ``iteration_update`` argument:

- :class:`MAETrainingStep` -- one optimisation step: a mask ratio drawn for the batch from
  ``mask_ratios``, the MAE forward under autocast, its MSE loss on the masked patches, and
  optionally the paper's GAN-loss variant: a MONAI :class:`~monai.networks.nets.PatchDiscriminator`
  judging reconstructions against the real slices, with its own optimizer, weighted by
  ``adv_weight`` in the MAE's loss.
- :class:`MAEValidationStep` -- the reconstruction loss per mask ratio under fixed masks
  (seeded by ratio and batch position), so that the validation loss of two epochs is comparable.
- :class:`MeanOutput` -- an ignite metric averaging a scalar output over the samples (the key
  metric ``val_loss`` and one ``val_loss_rXXX`` per ratio, see :func:`mae_validation_metrics`).
- :class:`MAESamplesHandler` -- PNG panels (input / masked input / reconstruction / residual,
  one row per fixed validation slice and mask ratio) every ``interval`` epochs.
- :class:`ProgressBarHandler` -- ignite's progress bar as a MONAI-style handler.

Mask ratio modes (config id ``mask_ratio_mode``): ``"joint"`` trains one MAE on all ratios of
``mask_ratios``, one ratio drawn per batch; ``"single"`` trains on ``mask_ratio`` alone. The
paper's "one model per ratio" is two runs of the config, e.g. ``--mask_ratio_mode single
--mask_ratio 0.5`` and ``... 0.75``; the run name (and so the checkpoint ``models/mae_r050.pt``,
``models/mae_r075.pt``) follows from the ratio.

Checkpoints written by the config: ``<ckpt_dir>/<run name>.pt`` is the best model by validation
loss, ``{"state_dict": ..., "mae_config": ...}`` (:class:`MAEArchitecture`), the format of
:func:`bundle.networks.mae.save_mae` that :func:`bundle.networks.mae.load_mae` and the
residual-map transform read without being told the architecture;
``<ckpt_dir>/<run name>_checkpoint_last.pt`` holds model, optimizer, lr scheduler, trainer
(epoch/iteration), the best-model saver's memory and, with the GAN loss, the discriminator and its
optimizer; ``resume=true`` continues from it. The AMP GradScaler is not saved: its scale adapts
again within a few iterations.

Distributed training: the steps work on a DistributedDataParallel-wrapped MAE (the model's
helpers are reached through ``.module``); every rank draws the same mask ratio per iteration
(seeded by the iteration), so the ranks' batches cost the same. :class:`MeanOutput` reduces over
the ranks. Attach :class:`MAESamplesHandler` and the checkpoint savers on rank 0 only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.engines import IterationEvents
from monai.networks.utils import eval_mode
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn
from torch.optim import Optimizer

from .inference import atomic_output

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric")
reinit__is_reduced, _ = optional_import(
    "ignite.metrics.metric", IgniteInfo.OPT_IMPORT_VERSION, min_version, "reinit__is_reduced"
)
sync_all_reduce, _ = optional_import(
    "ignite.metrics.metric", IgniteInfo.OPT_IMPORT_VERSION, min_version, "sync_all_reduce"
)
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "MAEArchitecture",
    "MAESamplesHandler",
    "MAETrainingStep",
    "MAEValidationStep",
    "MeanOutput",
    "ProgressBarHandler",
    "as_flag",
    "mae_loss_terms",
    "mae_mask_ratios",
    "mae_run_name",
    "mae_validation_metrics",
    "pixel_mask",
    "ratio_tag",
    "reconstruction_from_prediction",
]

logger = logging.getLogger(__name__)


def as_flag(value: Any) -> bool:
    """A config switch as a bool, also from command-line strings.

    ``python -m monai.bundle run ... --resume false`` passes the *string* ``"false"`` (the CLI
    parses only Python literals such as ``False``), which would be truthy; this accepts
    true/false/yes/no/on/off/1/0 in any case and refuses anything else.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0", "none", ""):
            return False
        raise ValueError(f"expected a true/false switch, got {value!r}.")
    return bool(value)


def ratio_tag(mask_ratio: float) -> str:
    """``0.5 -> "r050"``: the mask ratio in whole percent, for metric and file names."""
    return f"r{round(float(mask_ratio) * 100):03d}"


def mae_run_name(mask_ratio_mode: str, mask_ratio: float, base: str = "mae") -> str:
    """Name of a pre-training run: ``base`` for ``"joint"``, ``base_rXXX`` for ``"single"``.

    Checkpoints (``<ckpt_dir>/<name>.pt``), TensorBoard logs and sample panels are named after it,
    so the two single-ratio runs of the paper do not overwrite each other.
    """
    if mask_ratio_mode == "joint":
        return base
    if mask_ratio_mode == "single":
        return f"{base}_{ratio_tag(mask_ratio)}"
    raise ValueError(f"mask_ratio_mode must be 'joint' or 'single', got {mask_ratio_mode!r}.")


def mae_mask_ratios(mask_ratio_mode: str, mask_ratios: Sequence[float], mask_ratio: float) -> list[float]:
    """The ratios a run trains on: all of ``mask_ratios`` (``"joint"``) or ``[mask_ratio]`` (``"single"``)."""
    mae_run_name(mask_ratio_mode, mask_ratio)  # validates the mode
    return list(_check_ratios(mask_ratios if mask_ratio_mode == "joint" else [mask_ratio]))


def _check_ratios(mask_ratios: Sequence[float]) -> tuple[float, ...]:
    ratios = tuple(float(r) for r in mask_ratios)
    if not ratios:
        raise ValueError("mask_ratios is empty: give at least one mask ratio.")
    for r in ratios:
        if not 0.0 < r < 1.0:
            raise ValueError(f"mask ratios must be in (0, 1), got {r}.")
    return ratios


def _unwrap(network: nn.Module) -> nn.Module:
    """The MAE inside DistributedDataParallel/DataParallel (for ``patchify``, ``random_masks``...)."""
    return (
        network.module
        if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else network
    )


def _autocast(
    device: torch.device, cuda_amp: bool, cpu_dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA when the engine has ``amp``; on CPU only with an explicit ``cpu_dtype``
    (bf16 autocast is slower than float32 on CPUs without bf16 instructions)."""
    if device.type == "cuda" and cuda_amp:
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cpu_dtype is not None:
        return torch.autocast("cpu", dtype=cpu_dtype)
    return contextlib.nullcontext()


def _images(batchdata: Any, key: str, device: torch.device, non_blocking: bool = False) -> torch.Tensor:
    """The (B, C, H, W) image batch as a plain tensor on ``device`` (MetaTensor tracking is not needed)."""
    if isinstance(batchdata, Mapping):
        if key not in batchdata:
            raise KeyError(f"the batch has no {key!r} entry (keys: {list(batchdata)}).")
        images = batchdata[key]
    elif isinstance(batchdata, torch.Tensor):
        images = batchdata
    else:
        raise TypeError(f"expected a dict or tensor batch, got {type(batchdata).__name__}.")
    images = torch.as_tensor(images)
    if hasattr(images, "as_tensor"):
        images = images.as_tensor()
    if images.ndim != 4:
        raise ValueError(f"the MAE expects (B, C, H, W) images, got shape {tuple(images.shape)}.")
    return images.to(device=device, dtype=torch.float32, non_blocking=non_blocking)


def pixel_mask(
    mae: nn.Module, mask: torch.Tensor, pred: torch.Tensor, image_size: Sequence[int]
) -> torch.Tensor:
    """The patch mask (B, L), 1 = masked, as a pixel mask (B, C, H, W) like the MAE's images.

    Args:
        mae: the MAE (``unpatchify`` maps (B, L, p*p*C) patches to (B, C, H, W) images).
        mask: (B, L) patch mask.
        pred: (B, L, p*p*C) prediction, for the patch layout.
        image_size: (H, W) of the images.
    """
    model = _unwrap(mae)
    grid = (int(image_size[0]) // model.patch_size, int(image_size[1]) // model.patch_size)
    return model.unpatchify(mask.to(pred.dtype).unsqueeze(-1).expand_as(pred).contiguous(), grid)


def reconstruction_from_prediction(
    mae: nn.Module, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, paste_visible: bool = True
) -> torch.Tensor:
    """Differentiable reconstruction (B, C, H, W) from one MAE forward's ``pred`` and ``mask``.

    With ``norm_pix_loss`` the MAE predicts per-patch normalised pixels; they are brought back to
    intensities with the mean and variance of the input's patches (MAE's visualisation
    convention). ``paste_visible`` keeps the input's pixels at visible patches (SPEC section 5).

    Args:
        mae: the MAE.
        images: (B, C, H, W) input.
        pred: (B, L, p*p*C) prediction.
        mask: (B, L) patch mask, 1 = masked.
        paste_visible: take visible patches from ``images``.
    """
    model = _unwrap(mae)
    patches = pred.float()
    if getattr(model, "norm_pix_loss", False):
        target = model.patchify(images)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        patches = patches * (var + 1.0e-6).sqrt() + mean
    grid = (images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size)
    recon = model.unpatchify(patches, grid)
    if paste_visible:
        masked = pixel_mask(model, mask, patches, images.shape[-2:])
        recon = recon * masked + images * (1.0 - masked)
    return recon


class MAEArchitecture:
    """The MAE's constructor arguments as a checkpointable object (``state_dict``/``load_state_dict``).

    Saved next to the weights, ``CheckpointSaver(save_dict={"state_dict": network, "mae_config":
    MAEArchitecture(network)})`` writes ``{"state_dict": ..., "mae_config": ...}``: the
    self-describing format of :func:`bundle.networks.mae.save_mae`, which
    :func:`bundle.networks.mae.load_mae` and the residual-map transform rebuild without being told
    the architecture. Loading checks that the checkpoint's architecture is this network's.

    Args:
        network: the MAE (its ``config`` dict), possibly wrapped in DistributedDataParallel.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def state_dict(self) -> dict[str, Any]:
        return dict(_unwrap(self.network).config)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        current = self.state_dict()
        if dict(state_dict) != current:
            changed = {k: (state_dict.get(k), current.get(k)) for k in set(state_dict) | set(current)}
            changed = {k: v for k, v in changed.items() if v[0] != v[1]}
            raise ValueError(f"the checkpoint's MAE architecture differs from the configured one: {changed}.")


class MAETrainingStep:
    """``iteration_update`` of a :class:`~monai.engines.SupervisedTrainer` pre-training the MAE.

    Per batch: the mask ratio is drawn from ``mask_ratios`` (uniformly, by a generator seeded
    with ``seed`` and the global iteration, so a resumed run draws the same sequence), the
    network ``forward(images, mask_ratio=r) -> (loss, pred, mask)`` runs under autocast (fp16 +
    the trainer's GradScaler on CUDA when the trainer has ``amp=True``; on CPU only when
    ``cpu_amp_dtype`` is given), and the MSE loss on the masked patches is minimised.

    With a ``discriminator`` (the GAN-loss variant) the MAE loss becomes
    ``mse + adv_weight * adversarial(D(reconstruction), real)`` and the discriminator is then
    updated on real slices vs the (detached) reconstructions with ``discriminator_optimizer``.
    The reconstruction keeps visible patches from the input, so the discriminator has to spot
    the predicted patches.

    The engine output is a dict: ``image`` (B, C, H, W), ``pred`` (B, C, H, W) reconstruction,
    ``mask`` (B, L) patch mask, ``mask_ratio`` (float), ``loss`` (the MAE's total loss),
    ``mse_loss`` and, with a discriminator, ``adv_loss`` and ``d_loss``; all detached.

    Args:
        mask_ratios: ratios to draw from; one value trains a single-ratio model.
        image_key: batch key of the (B, C, H, W) slices.
        seed: seed of the mask ratio draws.
        discriminator: e.g. ``PatchDiscriminator(spatial_dims=2, in_channels=C, ...)``; None: no GAN loss.
        discriminator_optimizer: optimizer of the discriminator's parameters (required with one).
        adv_weight: weight of the generator's adversarial loss in the MAE's loss.
        adversarial_loss: ``(logits, target_is_real, for_discriminator) -> loss``; default MONAI's
            least-squares :class:`~monai.losses.PatchAdversarialLoss`.
        cpu_amp_dtype: autocast dtype on CPU (e.g. ``torch.bfloat16``); None keeps float32 on CPU.
    """

    def __init__(
        self,
        mask_ratios: Sequence[float] = (0.5, 0.75),
        image_key: str = "image",
        seed: int = 0,
        discriminator: nn.Module | None = None,
        discriminator_optimizer: Optimizer | None = None,
        adv_weight: float = 0.1,
        adversarial_loss: Callable | None = None,
        cpu_amp_dtype: torch.dtype | None = None,
    ) -> None:
        self.mask_ratios = _check_ratios(mask_ratios)
        self.image_key = image_key
        self.seed = int(seed)
        if discriminator is not None and discriminator_optimizer is None:
            raise ValueError("a discriminator needs a discriminator_optimizer.")
        if adv_weight < 0:
            raise ValueError(f"adv_weight must be >= 0, got {adv_weight}.")
        self.discriminator = discriminator
        self.discriminator_optimizer = discriminator_optimizer
        self.adv_weight = float(adv_weight)
        if adversarial_loss is None and discriminator is not None:
            from monai.losses import PatchAdversarialLoss

            adversarial_loss = PatchAdversarialLoss(criterion="least_squares")
        self.adversarial_loss = adversarial_loss
        self.cpu_amp_dtype = cpu_amp_dtype

    def mask_ratio_for(self, iteration: int) -> float:
        """The mask ratio of global iteration ``iteration`` (1-based, as ignite counts)."""
        if len(self.mask_ratios) == 1:
            return self.mask_ratios[0]
        return random.Random(self.seed * 1_000_003 + int(iteration)).choice(self.mask_ratios)

    def _adv(self, logits: Any, real: bool, for_discriminator: bool) -> torch.Tensor:
        # PatchDiscriminator returns its intermediate features too; the last entry is the logit map
        if isinstance(logits, (list, tuple)):
            logits = logits[-1]
        return self.adversarial_loss(logits.float(), target_is_real=real, for_discriminator=for_discriminator)

    @staticmethod
    def _backward_step(engine: Engine, loss: torch.Tensor, optimizer: Optimizer, scaler: Any) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            scaler.step(optimizer)
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            optimizer.step()

    def __call__(self, engine: Engine, batchdata: Any) -> dict[str, Any]:
        device = torch.device(engine.state.device)
        images = _images(batchdata, self.image_key, device, getattr(engine, "non_blocking", False))
        ratio = self.mask_ratio_for(engine.state.iteration)
        network = engine.network
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and not (
            getattr(engine, "amp", False) and device.type == "cuda" and scaler.is_enabled()
        ):
            scaler = None
        amp = bool(getattr(engine, "amp", False))

        network.train()
        engine.optimizer.zero_grad(set_to_none=getattr(engine, "optim_set_to_none", False))
        with _autocast(device, amp, self.cpu_amp_dtype):
            mse, pred, mask = network(images, mask_ratio=ratio)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            output: dict[str, Any] = {"mse_loss": mse.detach().float()}
            loss = mse
            recon: torch.Tensor | None = None
            if self.discriminator is not None:
                recon = reconstruction_from_prediction(network, images, pred, mask)
                self.discriminator.train()
                adv = self._adv(self.discriminator(recon.contiguous()), real=True, for_discriminator=False)
                loss = mse + self.adv_weight * adv
                output["adv_loss"] = adv.detach().float()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self._backward_step(engine, loss, engine.optimizer, scaler)

        if self.discriminator is not None and recon is not None:
            d_opt = self.discriminator_optimizer
            d_opt.zero_grad(set_to_none=True)  # also drops the grads the generator loss left on D
            with _autocast(device, amp, self.cpu_amp_dtype):
                fake = self._adv(
                    self.discriminator(recon.detach().contiguous()), real=False, for_discriminator=True
                )
                real = self._adv(self.discriminator(images.contiguous()), real=True, for_discriminator=True)
                d_loss = 0.5 * (fake + real)
            if scaler is not None:
                scaler.scale(d_loss).backward()
                scaler.step(d_opt)
            else:
                d_loss.backward()
                d_opt.step()
            output["d_loss"] = d_loss.detach().float()
        if scaler is not None:
            scaler.update()  # once per iteration, after every optimizer stepped (GradScaler contract)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        with torch.no_grad():
            if recon is None:
                recon = reconstruction_from_prediction(network, images, pred.detach(), mask)
        output.update(
            {
                "image": images,
                "pred": recon.detach().float(),
                "mask": mask.detach(),
                "mask_ratio": ratio,
                "loss": loss.detach().float(),
            }
        )
        return output


class MAEValidationStep:
    """``iteration_update`` of a :class:`~monai.engines.SupervisedEvaluator`: reconstruction loss per ratio.

    Masks are fixed: for ratio ``i`` and the evaluator's iteration ``t`` (restarting at 1 every
    validation run) they come from ``random_masks`` with a generator seeded by
    ``(seed, i, t)``; with an unshuffled loader every validation sees the same masks, so the
    validation loss changes only with the weights.

    The engine output holds ``image``, ``loss`` (mean over the ratios) and ``loss_rXXX`` per
    ratio (see :func:`ratio_tag`), each the batch's mean MSE on masked patches.

    Args:
        mask_ratios: ratios to evaluate.
        image_key: batch key of the (B, C, H, W) slices.
        seed: seed of the masks.
        cpu_amp_dtype: as :class:`MAETrainingStep`.
    """

    def __init__(
        self,
        mask_ratios: Sequence[float] = (0.5, 0.75),
        image_key: str = "image",
        seed: int = 0,
        cpu_amp_dtype: torch.dtype | None = None,
    ) -> None:
        self.mask_ratios = _check_ratios(mask_ratios)
        self.image_key = image_key
        self.seed = int(seed)
        self.cpu_amp_dtype = cpu_amp_dtype

    def masks(
        self, mae: nn.Module, batch_size: int, iteration: int, device: torch.device
    ) -> list[torch.Tensor]:
        """The fixed (B, L) masks of every ratio for the ``iteration``-th batch of a validation run."""
        model = _unwrap(mae)
        out = []
        for i, ratio in enumerate(self.mask_ratios):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i * 100_003 + int(iteration))
            out.append(model.random_masks(batch_size, ratio, generator=generator, device=device))
        return out

    def __call__(self, engine: Engine, batchdata: Any) -> dict[str, Any]:
        device = torch.device(engine.state.device)
        images = _images(batchdata, self.image_key, device, getattr(engine, "non_blocking", False))
        network = engine.network
        output: dict[str, Any] = {"image": images}
        losses = []
        with eval_mode(network), _autocast(device, bool(getattr(engine, "amp", False)), self.cpu_amp_dtype):
            masks = self.masks(network, images.shape[0], engine.state.iteration, device)
            for ratio, mask in zip(self.mask_ratios, masks):
                loss, _, _ = network(images, mask_ratio=ratio, mask=mask)
                output[f"loss_{ratio_tag(ratio)}"] = loss.detach().float()
                losses.append(loss.detach().float())
        output["loss"] = torch.stack(losses).mean()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        return output


class MeanOutput(Metric):
    """Mean of a scalar engine output over the samples (batches weighted by their size).

    The MAE's loss of a batch is the mean over its samples (every sample has the same number of
    masked patches), so weighting it by the batch size gives the exact mean over the data set
    even when the last batch is smaller. Reduced over the processes in distributed runs.

    Args:
        key: output entry holding the scalar (e.g. ``"loss"`` or ``"loss_r075"``).
        batch_key: output entry whose first dimension is the batch size (``"image"``).
        device: where the running sums live.
    """

    def __init__(
        self, key: str = "loss", batch_key: str = "image", device: str | torch.device = "cpu"
    ) -> None:
        self.key = key
        self.batch_key = batch_key
        super().__init__(output_transform=self._value_and_batch_size, device=device, skip_unrolling=True)

    def _value_and_batch_size(self, output: Any) -> tuple[torch.Tensor, int]:
        if isinstance(output, (list, tuple)):  # a decollated output repeats the batch values per item
            raise TypeError("MeanOutput needs the engine's output dict: set decollate=False on the engine.")
        return torch.as_tensor(output[self.key]), int(output[self.batch_key].shape[0])

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._count = torch.tensor(0, dtype=torch.long, device=self._device)

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, int]) -> None:
        value, batch = output
        self._sum += value.detach().double().mean().to(self._device) * batch
        self._count += batch

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if int(self._count) == 0:
            raise RuntimeError(f"MeanOutput({self.key!r}) has seen no samples.")
        return float(self._sum / self._count)


def mae_validation_metrics(mask_ratios: Sequence[float], prefix: str = "val_loss") -> dict[str, MeanOutput]:
    """One :class:`MeanOutput` per mask ratio: ``{"val_loss_r050": ..., "val_loss_r075": ...}``."""
    return {
        f"{prefix}_{ratio_tag(r)}": MeanOutput(key=f"loss_{ratio_tag(r)}") for r in _check_ratios(mask_ratios)
    }


def mae_loss_terms(output: Any) -> dict[str, float]:
    """The loss entries of a :class:`MAETrainingStep` output for StatsHandler/TensorBoardStatsHandler."""
    if isinstance(output, (list, tuple)):
        output = output[0]
    names = ("loss", "mse_loss", "adv_loss", "d_loss", "mask_ratio")
    return {name: float(torch.as_tensor(output[name]).float().mean()) for name in names if name in output}


class ProgressBarHandler:
    """ignite's tqdm progress bar (with the running loss) as a handler for MONAI engines' handler lists.

    Args:
        enabled: attach at all (the ``progress_bar`` config id).
        output_transform: engine output -> value(s) shown next to the bar.
        persist: keep the finished bar of each epoch.
    """

    def __init__(
        self, enabled: bool = True, output_transform: Callable | None = None, persist: bool = False
    ) -> None:
        self.enabled = as_flag(enabled)
        self.output_transform = output_transform
        self.persist = persist

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        from ignite.handlers import ProgressBar

        ProgressBar(persist=self.persist).attach(engine, output_transform=self.output_transform)


class MAESamplesHandler:
    """Write MAE reconstruction panels of a few fixed validation slices every ``interval`` epochs.

    ``<output_dir>/epoch_XXX.png``: one row per (slice, mask ratio), columns input / masked
    input / reconstruction (decoder at masked patches, input at visible ones) / residual
    ``|input - reconstruction|``. Masks are seeded per (slice, ratio), so consecutive panels
    differ only by the weights. Written atomically; also after the last epoch.

    Args:
        network: the MAE.
        dataset: validation slice data set; items are dicts with ``image_key`` (C, H, W).
        output_dir: folder of the PNGs, e.g. ``<output_dir>/mae_samples``.
        mask_ratios: one row per ratio.
        num_samples: slices shown, evenly spaced over ``dataset`` (ignored with ``indices``).
        indices: data set indices of the slices to show.
        interval: epochs between panels.
        seed: seed of the masks.
        image_key: item key of the slice.
        device: where to run the MAE, None: where its parameters are.
    """

    def __init__(
        self,
        network: nn.Module,
        dataset: Sequence,
        output_dir: str | os.PathLike,
        mask_ratios: Sequence[float] = (0.5, 0.75),
        num_samples: int = 4,
        indices: Sequence[int] | None = None,
        interval: int = 10,
        seed: int = 0,
        image_key: str = "image",
        device: str | torch.device | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        self.network = network
        self.dataset = dataset
        self.output_dir = os.fspath(output_dir)
        self.mask_ratios = _check_ratios(mask_ratios)
        self.num_samples = int(num_samples)
        self.indices = None if indices is None else [int(i) for i in indices]
        self.interval = int(interval)
        self.seed = int(seed)
        self.image_key = image_key
        self.device = None if device is None else torch.device(device)
        self._samples: tuple[torch.Tensor, list[str]] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _fixed_samples(self) -> tuple[torch.Tensor, list[str]]:
        if self._samples is None:
            if len(self.dataset) == 0:
                raise ValueError("MAESamplesHandler: the validation data set is empty.")
            indices = self.indices
            if indices is None:
                count = max(1, min(self.num_samples, len(self.dataset)))
                indices = [round(float(i)) for i in np.linspace(0, len(self.dataset) - 1, count)]
            items = [self.dataset[i] for i in indices]
            images = torch.stack([torch.as_tensor(item[self.image_key]).float() for item in items])
            names = [
                f"{item.get('subject', i)} slice {item.get('slice_index', '?')}"
                for i, item in zip(indices, items)
            ]
            self._samples = (images.as_tensor() if hasattr(images, "as_tensor") else images, names)
        return self._samples

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        last = engine.state.max_epochs is not None and epoch >= int(engine.state.max_epochs)
        if epoch % self.interval != 0 and not last:
            return
        self.write(epoch)

    def panels(self) -> list[tuple[str, float, list[np.ndarray]]]:
        """Rows of (name, ratio, [input, masked input, reconstruction, residual]) as (H, W) arrays."""
        images, names = self._fixed_samples()
        mae = _unwrap(self.network)
        device = self.device or next(mae.parameters()).device
        images = images.to(device)
        rows = []
        with eval_mode(mae):
            for i, ratio in enumerate(self.mask_ratios):
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
                mask = mae.random_masks(images.shape[0], ratio, generator=generator, device=device)
                _, pred, mask = mae(images, mask_ratio=ratio, mask=mask)
                recon = reconstruction_from_prediction(mae, images, pred, mask).clamp(0.0, 1.0)
                masked = pixel_mask(mae, mask, pred, images.shape[-2:])
                for b in range(images.shape[0]):
                    x = images[b, 0].float().cpu().numpy()
                    m = masked[b, 0].float().cpu().numpy()
                    r = recon[b, 0].float().cpu().numpy()
                    rows.append((names[b], ratio, [x, np.where(m > 0.5, np.nan, x), r, np.abs(x - r)]))
        rows.sort(key=lambda row: names.index(row[0]))  # one block of ratios per slice
        return rows

    def write(self, epoch: int) -> str:
        """Draw the panel of ``epoch`` and replace ``<output_dir>/epoch_XXX.png``; returns its path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = self.panels()
        titles = ("input", "masked input", "reconstruction", "|residual|")
        fig = Figure(figsize=(4 * 2.2, len(rows) * 2.2 + 0.4), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(rows), 4, squeeze=False)
        residual_max = max(max(float(np.nanmax(row[2][3])), 1e-6) for row in rows)
        for r, (name, ratio, arrays) in enumerate(rows):
            for c, array in enumerate(arrays):
                ax = axes[r, c]
                # (H, W) are the first and second in-plane volume axes; transposed with origin "lower"
                # an axial RAS slice shows right-left horizontally and anterior up
                cmap, vmax = ("magma", residual_max) if c == 3 else ("gray", 1.0)
                ax.imshow(array.T, origin="lower", cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(titles[c], fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"{name}\nmask {ratio:.2f}", fontsize=7)
        fig.suptitle(f"MAE reconstructions, epoch {epoch}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(self.output_dir, f"epoch_{epoch:03d}.png")
        with atomic_output(path, overwrite=True) as tmp:
            fig.savefig(tmp, format="png")
            os.chmod(tmp, 0o644)  # the temporary file is created private (0600); the panel is not
        logger.info(f"MAE sample panel written to {path}")
        return path
