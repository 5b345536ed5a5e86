"""MAE pre-training: engine steps (bundle.engines.mae_training) and configs/train_mae.json + demo.json."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle.data.slices import VolumeSliceDataset
from bundle.data.synthetic.atlas import generate_atlas_like_dataset
from bundle.engines.mae_training import MAETrainingStep, MAEValidationStep, mae_mask_ratios, mae_run_name
from bundle.handlers.mae_samples import MAESamplesHandler
from bundle.handlers.metrics import MeanOutput, mae_validation_metrics
from bundle.networks.mae import MAEArchitecture, MaskedAutoencoderViT, load_mae, mae_preset
from bundle.utils.flags import as_flag
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle import run as bundle_run
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.networks.nets import PatchDiscriminator

from tests.helpers import tensorboard_scalars

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [str(ROOT / "configs" / "train_mae.json"), str(ROOT / "configs" / "demo.json")]
RUN_IDS = ("initialize", "run", "training", "finalize")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread; on a shared CPU, torch's spinning worker threads can
    make them 10x slower. Restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Four synthetic 4 mm subjects in two cohorts (the split puts one cohort into validation)."""
    root = tmp_path_factory.mktemp("atlas4mm")
    generate_atlas_like_dataset(root, num_subjects=4, num_cohorts=2, resolution_mm=4, seed=0, progress=False)
    return str(root)


def _overrides(bundle_root: Path, atlas_dir: str, **extra) -> dict:
    """The smallest run of the demo config, writing only under ``bundle_root``."""
    return {
        "bundle_root": str(bundle_root),
        "dataset_dir": atlas_dir,
        "mae_img_size": 32,
        "mae_max_epochs": 1,
        "mae_batch_size": 16,
        "mae_val_slice_stride": 3,
        "num_workers": 0,
        "progress": False,
        "mae_log_interval": 1000,
        **extra,
    }


def _images(batch: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth blobs in [0, 1]: learnable structure for a few optimisation steps."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _trainer(mae: torch.nn.Module, data: list, step: MAETrainingStep, lr: float = 2e-3) -> SupervisedTrainer:
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=mae,
        optimizer=torch.optim.Adam(mae.parameters(), lr=lr),
        loss_function=None,
        iteration_update=step,
        decollate=False,
    )


def test_training_step_decreases_loss_on_one_batch() -> None:
    torch.manual_seed(0)
    mae = mae_preset("tiny", img_size=32)
    batch = {"image": _images()}
    step = MAETrainingStep(mask_ratios=[0.5, 0.75], seed=3)
    trainer = _trainer(mae, [batch] * 40, step)
    losses: list[float] = []
    ratios: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: ratios.append(e.state.output["mask_ratio"]))
    trainer.run()
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert set(ratios) == {0.5, 0.75}  # one ratio per batch, both drawn
    assert ratios == [step.mask_ratio_for(i) for i in range(1, 41)]  # reproducible from the seed

    out = trainer.state.output
    assert tuple(out["pred"].shape) == (8, 1, 32, 32) and tuple(out["mask"].shape) == (8, 16)
    assert torch.allclose(out["mask"].sum(dim=1), torch.full((8,), 16 * out["mask_ratio"]))
    # visible patches of the reconstruction are the input's pixels
    keep = 1.0 - out["mask"][0].reshape(4, 4).repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.allclose(out["pred"][0, 0] * keep, out["image"][0, 0] * keep)
    assert float(out["loss"]) == pytest.approx(float(out["mse_loss"]))
    assert MAETrainingStep([0.75]).mask_ratio_for(7) == 0.75


def test_gan_variant_updates_the_discriminator() -> None:
    torch.manual_seed(0)
    mae = mae_preset("tiny", img_size=32)
    disc = PatchDiscriminator(spatial_dims=2, in_channels=1, channels=8, num_layers_d=2)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    step = MAETrainingStep(mask_ratios=[0.75], discriminator=disc, discriminator_optimizer=d_opt, adv_weight=0.5)
    before_d = [p.detach().clone() for p in disc.parameters()]
    before_g = [p.detach().clone() for p in mae.parameters()]
    trainer = _trainer(mae, [{"image": _images(4)}], step)
    trainer.run()
    out = trainer.state.output
    for key in ("loss", "mse_loss", "adv_loss", "d_loss"):
        assert math.isfinite(float(out[key])), key
    assert float(out["loss"]) == pytest.approx(float(out["mse_loss"]) + 0.5 * float(out["adv_loss"]), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before_d, disc.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, mae.parameters()))
    with pytest.raises(ValueError, match="discriminator_optimizer"):
        MAETrainingStep(discriminator=disc)


def test_validation_is_deterministic_and_sample_weighted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mae = mae_preset("tiny", img_size=32)
    images = _images(6)
    data = [{"image": images[:4]}, {"image": images[4:]}]  # a smaller last batch
    step = MAEValidationStep(mask_ratios=[0.5, 0.75], seed=1)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=mae,
        iteration_update=step,
        key_val_metric={"val_loss": MeanOutput("loss")},
        additional_metrics=mae_validation_metrics([0.5, 0.75]),
        decollate=False,
    )
    evaluator.run()
    first = dict(evaluator.state.metrics)
    evaluator.run()
    assert evaluator.state.metrics == first  # same masks every validation run
    assert set(first) == {"val_loss", "val_loss_r050", "val_loss_r075"}

    # the metric is the per-sample mean: recompute it sample by sample with the same masks
    per_ratio = []
    with torch.no_grad():
        for i, _ratio in enumerate((0.5, 0.75)):
            losses = []
            for t, batch in enumerate(data, start=1):
                mask = step.masks(mae, batch["image"].shape[0], t, torch.device("cpu"))[i]
                for b in range(batch["image"].shape[0]):
                    loss, _, _ = mae(batch["image"][b : b + 1], mask=mask[b : b + 1])
                    losses.append(float(loss))
            per_ratio.append(np.mean(losses))
    assert first["val_loss_r050"] == pytest.approx(per_ratio[0], rel=1e-5)
    assert first["val_loss_r075"] == pytest.approx(per_ratio[1], rel=1e-5)
    assert first["val_loss"] == pytest.approx(np.mean(per_ratio), rel=1e-5)

    items = [{"image": images[i], "subject": "s", "slice_index": i} for i in range(6)]
    handler = MAESamplesHandler(mae, items, tmp_path / "samples", mask_ratios=[0.5, 0.75], num_samples=2, interval=5)
    rows = handler.panels()
    assert len(rows) == 4 and all(len(arrays) == 4 for _, _, arrays in rows)  # 2 slices x 2 ratios
    path = handler.write(3)
    assert Path(path).name == "epoch_003.png" and Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "samples").iterdir() if p.name != "epoch_003.png"]  # no temp left


def test_run_names_and_flags() -> None:
    assert mae_run_name("joint", 0.75) == "mae" and mae_run_name("single", 0.5) == "mae_r050"
    assert mae_mask_ratios("joint", [0.5, 0.75], 0.3) == [0.5, 0.75]
    assert mae_mask_ratios("single", [0.5, 0.75], 0.5) == [0.5]
    with pytest.raises(ValueError, match="mask_ratio_mode"):
        mae_mask_ratios("both", [0.5], 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        mae_mask_ratios("single", [0.5], 1.0)
    assert as_flag("False") is False and as_flag("true") is True and as_flag(0) is False
    with pytest.raises(ValueError, match="switch"):
        as_flag("maybe")
    mae = mae_preset("tiny")
    with pytest.raises(ValueError, match="architecture"):
        MAEArchitecture(mae).load_state_dict({**mae.config, "depth": 3})


def test_config_ids_instantiate(tmp_path: Path, atlas_dir: str) -> None:
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update(_overrides(tmp_path, atlas_dir, mae_adversarial=True))
    ids = [k for k in parser.get() if k not in RUN_IDS]
    for key in ids:
        parser.get_parsed_content(key)  # every id resolves and instantiates
    assert isinstance(parser.get_parsed_content("network"), MaskedAutoencoderViT)
    assert isinstance(parser.get_parsed_content("discriminator"), PatchDiscriminator)
    assert isinstance(parser.get_parsed_content("train#dataset"), VolumeSliceDataset)
    train_ds = parser.get_parsed_content("train#dataset")
    assert len(train_ds) > 0 and not bool(train_ds.has_lesion.any())  # lesion-free slices only
    assert tuple(train_ds[0]["image"].shape) == (1, 32, 32)  # padded to square, resized to the MAE
    subjects_train = set(train_ds.subjects)
    subjects_val = set(parser.get_parsed_content("validate#dataset").subjects)
    assert subjects_train and subjects_val and not subjects_train & subjects_val
    assert set(parser.get_parsed_content("checkpoint_objects")) >= {"model", "optimizer", "lr_scheduler", "trainer"}
    assert {"discriminator", "discriminator_optimizer"} <= set(parser.get_parsed_content("checkpoint_objects"))
    assert parser.get_parsed_content("best_model_filename") == "mae.pt"
    # `monai.bundle run training` (run_id "training") and the zoo's default `run` do the same
    assert parser.get("training") == parser.get("run") and parser.get("run")[-1].endswith("trainer.run()")

    # warm start from weights with the official MAE key names
    source = mae_preset("tiny", img_size=32)
    torch.save({"model": source.state_dict()}, tmp_path / "official_like.pth")
    warm = ConfigParser()
    warm.read_config(CONFIGS)
    warm.update(_overrides(tmp_path, atlas_dir, mae_pretrained=str(tmp_path / "official_like.pth")))
    loaded = warm.get_parsed_content("network").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())

    single = ConfigParser()
    single.read_config(CONFIGS)
    single.update(_overrides(tmp_path, atlas_dir, mask_ratio_mode="single", mask_ratio=0.5))
    assert single.get_parsed_content("best_model_filename") == "mae_r050.pt"
    assert single.get_parsed_content("last_checkpoint_filename") == "mae_r050_checkpoint_last.pt"
    assert single.get_parsed_content("train#iteration").mask_ratios == (0.5,)


def test_demo_run_and_resume(tmp_path: Path, atlas_dir: str) -> None:
    overrides = _overrides(tmp_path, atlas_dir, mae_lr_step_epochs=1, mae_lr_gamma=0.5)
    bundle_run(run_id="training", config_file=CONFIGS, **overrides)

    best = tmp_path / "models" / "mae.pt"
    last = tmp_path / "models" / "mae_checkpoint_last.pt"
    assert best.is_file() and last.is_file()
    model = load_mae(best)  # self-describing: no architecture needed
    assert isinstance(model, MaskedAutoencoderViT) and model.img_size == 32
    panel = tmp_path / "outputs" / "mae" / "mae_samples" / "epoch_001.png"
    assert panel.is_file() and panel.read_bytes()[:4] == b"\x89PNG"
    assert any((tmp_path / "outputs" / "mae" / "mae_tb").iterdir())
    timing = tensorboard_scalars(tmp_path / "outputs" / "mae" / "mae_tb")  # IterationTimingHandler, epoch 1
    assert len(timing["timing/samples_per_s"]) == 1 and timing["timing/samples_per_s"][0] > 0
    state = torch.load(last, weights_only=True)
    assert state["trainer"]["epoch_length"] * 1 == state["trainer"]["iteration"]

    # resume to 2 epochs: only epoch 2 runs, the counters and the lr schedule continue
    workflow = ConfigWorkflow(
        config_file=CONFIGS, run_id="training", **{**overrides, "mae_max_epochs": 2, "resume": True}
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    epochs_run: list[int] = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
    workflow.run()
    workflow.finalize()
    assert epochs_run == [2]
    assert trainer.state.epoch == 2
    assert trainer.state.iteration == 2 * state["trainer"]["epoch_length"]
    optimizer = workflow.parser.get_parsed_content("mae_optimizer")
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**2)
    assert (tmp_path / "outputs" / "mae" / "mae_samples" / "epoch_002.png").is_file()
    assert torch.load(last, weights_only=True)["trainer"]["iteration"] == trainer.state.iteration
