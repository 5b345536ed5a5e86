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
"""What MONAI's engines need to pre-train the masked autoencoder (docs/method.md, the MAE).

``configs/train_mae.json`` wires these into a :class:`~monai.engines.SupervisedTrainer` and a
:class:`~monai.engines.SupervisedEvaluator` through their ``iteration_update`` argument:

- :class:`MAETrainingStep` -- one optimisation step: a mask ratio drawn for the batch from
  ``mask_ratios``, the MAE forward under autocast, its MSE loss on the masked patches, and
  optionally the paper's GAN-loss variant: a MONAI :class:`~monai.networks.nets.PatchDiscriminator`
  judging reconstructions against the real slices, with its own optimizer, weighted by
  ``adv_weight`` in the MAE's loss.
- :class:`MAEValidationStep` -- the reconstruction loss per mask ratio under fixed masks
  (seeded by ratio and batch position), so that the validation loss of two epochs is comparable.
- :func:`build_discriminator`, :func:`discriminator_optimizer`, :func:`warm_start_mae`,
  :func:`mae_checkpoint_objects` -- the optional parts of the config (GAN loss, official weights),
  each None or a no-op when switched off, so that the config holds no branches.

Its metrics (:class:`~bundle.handlers.metrics.MeanOutput`) and sample panels
(:class:`~bundle.handlers.mae_samples.MAESamplesHandler`) are handlers.

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
the ranks. Attach the sample panels and the checkpoint savers on rank 0 only.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from bundle.networks.mae import reconstruction_from_prediction, unwrap_parallel
from bundle.networks.mae_checkpoint import load_official_mae_checkpoint
from bundle.networks.masking import check_mask_ratios, ratio_tag
from bundle.utils.errors import ConfigError
from bundle.utils.flags import as_device, as_flag
from monai.engines import IterationEvents
from monai.networks.utils import eval_mode
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn
from torch.optim import Optimizer

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "MAETrainingStep",
    "MAEValidationStep",
    "build_discriminator",
    "discriminator_optimizer",
    "mae_checkpoint_objects",
    "mae_loss_terms",
    "mae_mask_ratios",
    "mae_run_name",
    "warm_start_mae",
]

logger = logging.getLogger(__name__)


def mae_run_name(mask_ratio_mode: str, mask_ratio: float, base: str = "mae") -> str:
    """Name of a pre-training run: ``base`` for ``"joint"``, ``base_rXXX`` for ``"single"``.

    Checkpoints (``<ckpt_dir>/<name>.pt``), TensorBoard logs and sample panels are named after it,
    so the two single-ratio runs of the paper do not overwrite each other.
    """
    if mask_ratio_mode == "joint":
        return base
    if mask_ratio_mode == "single":
        return f"{base}_{ratio_tag(mask_ratio)}"
    raise ConfigError(f"mask_ratio_mode must be 'joint' or 'single', got {mask_ratio_mode!r}.")


def mae_mask_ratios(mask_ratio_mode: str, mask_ratios: Sequence[float], mask_ratio: float) -> list[float]:
    """The ratios a run trains on: all of ``mask_ratios`` (``"joint"``) or ``[mask_ratio]`` (``"single"``)."""
    mae_run_name(mask_ratio_mode, mask_ratio)  # validates the mode
    return list(check_mask_ratios(mask_ratios if mask_ratio_mode == "joint" else [mask_ratio]))


def _autocast(device: torch.device, cuda_amp: bool, cpu_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
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
        self.mask_ratios = check_mask_ratios(mask_ratios)
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
        if scaler is not None and not (getattr(engine, "amp", False) and device.type == "cuda" and scaler.is_enabled()):
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
                fake = self._adv(self.discriminator(recon.detach().contiguous()), real=False, for_discriminator=True)
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
        self.mask_ratios = check_mask_ratios(mask_ratios)
        self.image_key = image_key
        self.seed = int(seed)
        self.cpu_amp_dtype = cpu_amp_dtype

    def masks(self, mae: nn.Module, batch_size: int, iteration: int, device: torch.device) -> list[torch.Tensor]:
        """The fixed (B, L) masks of every ratio for the ``iteration``-th batch of a validation run."""
        model = unwrap_parallel(mae)
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


def mae_loss_terms(output: Any) -> dict[str, float]:
    """The loss entries of a :class:`MAETrainingStep` output for StatsHandler/TensorBoardStatsHandler."""
    if isinstance(output, (list, tuple)):
        output = output[0]
    names = ("loss", "mse_loss", "adv_loss", "d_loss", "mask_ratio")
    return {name: float(torch.as_tensor(output[name]).float().mean()) for name in names if name in output}


def build_discriminator(
    enabled: Any = False, in_channels: int = 1, channels: int = 64, num_layers: int = 3, device: Any = None
) -> nn.Module | None:
    """The paper's GAN-loss discriminator (MONAI ``PatchDiscriminator``, 2D) on ``device``; None when
    ``enabled`` (the ``mae_adversarial`` switch) is off."""
    if not as_flag(enabled, "mae_adversarial"):
        return None
    from monai.networks.nets import PatchDiscriminator

    network = PatchDiscriminator(spatial_dims=2, in_channels=in_channels, channels=channels, num_layers_d=num_layers)
    return network.to(as_device(device))


def discriminator_optimizer(discriminator: nn.Module | None, lr: float = 1e-4) -> Optimizer | None:
    """Adam (betas 0.5, 0.999, the usual GAN setting) over the discriminator; None without one."""
    if discriminator is None:
        return None
    return torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))


def warm_start_mae(network: nn.Module, path: str | None = None, strict: Any = True) -> nn.Module:
    """Load official MAE weights (``mae_pretrained``) into ``network`` when a path is given; returns it."""
    if path:
        load_official_mae_checkpoint(unwrap_parallel(network), path, strict=as_flag(strict, "mae_pretrained_strict"))
    return network


def mae_checkpoint_objects(**objects: Any) -> dict[str, Any]:
    """The objects of the resume checkpoint (``model``, ``optimizer``, ...), without the absent ones
    (the discriminator and its optimizer exist only with the GAN loss)."""
    return {name: value for name, value in objects.items() if value is not None}
