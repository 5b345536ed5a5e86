"""Segmentation training: configs/train.json (+ demo.json, multi_gpu_train.json) and bundle.engines.training.

The workflow tests run the real configs at toy scale: 4 mm synthetic ATLAS look-alike volumes
(50 x 59 x 48), a tiny random MAE (no pre-training: the workflow is under test, not the maps'
quality), a GRCSF with 4-16 channels at 64 x 64, one MAE pass, 1-2 short epochs. Residual maps
are cached on disk once for the whole module. Nothing is written to the repository.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle.data.cache import DiskCachedTransform
from bundle.data.records import check_records, split_records
from bundle.data.slices import num_slices_per_epoch
from bundle.data.synthetic.atlas import generate_atlas_like_dataset
from bundle.handlers.checkpoint import AtomicCheckpointSaver
from bundle.handlers.early_stop import ResumableEarlyStopHandler
from bundle.handlers.training_curves import TrainingCurvesHandler
from bundle.losses import build_loss
from bundle.networks.mae import mae_preset, save_mae
from bundle.optimizers import WarmupCosineLR
from bundle.utils.errors import InvalidVolumeError
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.losses import DiceFocalLoss, FocalLoss
from monai.transforms import Compose, Transform

from tests.helpers import tensorboard_scalars

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "demo.json")]
MULTI_GPU = str(ROOT / "configs" / "multi_gpu_train.json")
BATCH = 4


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """3 subjects in 3 cohorts at 4 mm (split: 2 train, 1 validation), a tiny MAE, a shared map cache."""
    root = tmp_path_factory.mktemp("training")
    data = root / "atlas_4mm"
    generate_atlas_like_dataset(
        data, num_subjects=3, num_cohorts=3, lesion_free_fraction=0.0, resolution_mm=4, seed=0, progress=False
    )
    torch.manual_seed(0)
    mae_path = root / "mae.pt"
    save_mae(mae_preset("tiny", img_size=32, patch_size=8), mae_path)
    return {"dataset_dir": str(data), "mae_path": str(mae_path), "cache_dir": str(root / "cache")}


def _overrides(shared: dict[str, str], bundle_root: Path, **extra: Any) -> dict[str, Any]:
    """Toy-scale overrides; bundle_root (models/, outputs/) in tmp, the MAE and map cache shared."""
    overrides: dict[str, Any] = {
        "bundle_root": str(bundle_root),
        "dataset_dir": shared["dataset_dir"],
        "mae_path": shared["mae_path"],
        "cache_dir": shared["cache_dir"],
        "input_size": [64, 64],
        "rcu_patch_sizes": [4, 4, 8],
        "network_options": {"features": [4, 8, 8, 8, 8, 4]},
        "num_passes": 1,
        "max_epochs": 2,
        "warmup_epochs": 1,
        "batch_size": BATCH,
        "max_slices_per_epoch": 2 * BATCH,
        "sw_batch_size": 48,
        "num_workers": 0,
        "val_interval": 1,  # the toy runs validate every epoch (demo.json validates every 4th)
        "learning_rate": 1e-4,  # the paper's base lr (demo.json starts at 3e-4 to learn in CPU minutes)
        "progress": False,
    }
    overrides.update(extra)
    return overrides


def _workflow(overrides: dict[str, Any], config_files: list[str] = CONFIGS) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=config_files, workflow_type="train", run_id="training", logging_file=False, **overrides
    )
    workflow.initialize()
    return workflow


def _root_cause(error: BaseException) -> BaseException:
    """The original error under MONAI's "Failed to evaluate/instantiate" wrappers."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _record_lr(trainer: Engine, optimizer: torch.optim.Optimizer, log: dict[int, float]) -> None:
    """Record the lr each iteration trains with (before the per-iteration scheduler step)."""

    def record(engine: Engine) -> None:
        log[engine.state.iteration] = optimizer.param_groups[0]["lr"]

    trainer.add_event_handler(Events.ITERATION_STARTED, record)


# ----------------------------------------------------------------------------- unit tests


def test_warmup_cosine_schedule_values() -> None:
    net = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    scheduler = WarmupCosineLR(
        optimizer, iterations_per_epoch=10, max_epochs=20, warmup_epochs=5, warmup_lr_factor=10.0
    )
    lrs = []
    for _ in range(200):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-4)  # the paper's initial lr
    assert lrs[25] == pytest.approx(1e-4 + 0.5 * 9e-4)  # linear warm-up, half way
    assert lrs[50] == pytest.approx(1e-3)  # x10 after 5 epochs
    assert all(b > a for a, b in zip(lrs[:50], lrs[1:51]))
    assert all(b < a for a, b in zip(lrs[50:199], lrs[51:200]))  # cosine decay
    assert lrs[125] == pytest.approx(0.5e-3)  # cosine half way
    assert lrs[199] < 1e-6
    # resumable: a new scheduler loaded from the state continues on the same curve
    state = {"opt": optimizer.state_dict(), "sched": scheduler.state_dict()}
    optimizer2 = torch.optim.Adam(net.parameters(), lr=1e-4)
    scheduler2 = WarmupCosineLR(optimizer2, iterations_per_epoch=10, max_epochs=20, warmup_epochs=5)
    optimizer2.load_state_dict(state["opt"])
    scheduler2.load_state_dict(state["sched"])
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    # a different schedule is refused rather than silently continued
    optimizer3 = torch.optim.Adam(net.parameters(), lr=1e-4)
    scheduler3 = WarmupCosineLR(optimizer3, iterations_per_epoch=10, max_epochs=30)
    with pytest.raises(ValueError, match="max_epochs: checkpoint 20 vs now 30"):
        scheduler3.load_state_dict(state["sched"])


def test_loss_switch() -> None:
    assert isinstance(build_loss("dice_focal"), DiceFocalLoss)
    focal = build_loss("focal", alpha=0.25, gamma=2.0)
    assert isinstance(focal, FocalLoss) and focal.alpha == 0.25 and focal.gamma == 2.0
    logits, label = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.8).float()
    dice_focal = build_loss("dice_focal")
    assert float(dice_focal(logits, label)) == pytest.approx(
        float(dice_focal.dice(logits, label) + dice_focal.focal(logits, label))
    )
    with pytest.raises(ValueError, match="unknown loss_type 'dice'"):
        build_loss("dice")
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    assert isinstance(parser.get_parsed_content("loss"), DiceFocalLoss)  # the paper's ATLAS loss by default
    parser["loss_type"] = "focal"
    assert isinstance(parser.get_parsed_content("loss", lazy=False), FocalLoss)


def test_split_records_by_subject_and_cohort() -> None:
    records = [
        {"subject": f"s{i}", "cohort": f"c{i % 4}", "image": f"{i}.nii", "label": f"{i}_l.nii"} for i in range(20)
    ]
    records.append(dict(records[0], image="0b.nii"))  # a second session of subject s0
    train, val = split_records(records, val_fraction=0.2, seed=0)
    assert split_records(records, val_fraction=0.2, seed=0) == (train, val)  # deterministic
    shuffled_val = split_records(list(reversed(records)), val_fraction=0.2, seed=0)[1]
    assert {r["subject"] for r in shuffled_val} == {r["subject"] for r in val}  # independent of the order
    assert len(train) + len(val) == len(records)
    train_cohorts, val_cohorts = {r["cohort"] for r in train}, {r["cohort"] for r in val}
    assert train_cohorts.isdisjoint(val_cohorts) and val_cohorts  # cohort-disjoint
    assert {r["subject"] for r in train}.isdisjoint({r["subject"] for r in val})
    # without cohorts: a subject split of about val_fraction, sessions of a subject together
    plain = [{k: v for k, v in r.items() if k != "cohort"} for r in records]
    train, val = split_records(plain, val_fraction=0.2, seed=1)
    assert len({r["subject"] for r in val}) == 4
    assert {r["subject"] for r in train}.isdisjoint({r["subject"] for r in val})
    with pytest.raises(ValueError, match="at least 2 subjects"):
        split_records(records[:1], val_fraction=0.2)


def test_slices_per_epoch() -> None:
    assert num_slices_per_epoch(100) == 100
    assert num_slices_per_epoch(100, 40) == 40
    assert num_slices_per_epoch(100, 41, world_size=2) == 21
    with pytest.raises(ValueError, match="no slices"):
        num_slices_per_epoch(0)


def test_checkpoint_saver_is_atomic(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"network": net}, save_interval=1, n_saved=1, interval_filename="last.pt"
    )
    saver.attach(engine)
    engine.run([0], max_epochs=2)
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # overwritten in place, no numbered files
    good = (tmp_path / "last.pt").read_bytes()

    class Unsaveable(torch.nn.Module):
        def state_dict(self, *args: Any, **kwargs: Any) -> dict:
            return {"bad": lambda: None}  # torch.save fails half way

    broken = AtomicCheckpointSaver(
        str(tmp_path), {"network": Unsaveable()}, save_interval=1, n_saved=1, interval_filename="last.pt"
    )
    engine2 = Engine(lambda e, b: None)
    broken.attach(engine2)
    with pytest.raises(Exception, match="."):  # whatever torch.save raises on the unpicklable object
        engine2.run([0], max_epochs=1)
    assert (tmp_path / "last.pt").read_bytes() == good  # the previous checkpoint survives intact
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # and no temporary file is left


def test_early_stop_handler_state() -> None:
    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: None)
    stopper = ResumableEarlyStopHandler(patience=2, metric_name="val_loss", trainer=trainer)
    for loss in (1.0, 0.5, 0.7):
        evaluator.state.metrics = {"val_loss": loss}
        stopper(evaluator)
    assert dict(stopper.state_dict()) == {"counter": 1, "best_score": -0.5, "threshold_mode": "abs"}
    restored = ResumableEarlyStopHandler(patience=2, metric_name="val_loss", trainer=trainer)
    restored.load_state_dict(stopper.state_dict())
    evaluator.state.metrics = {"val_loss": 0.6}
    restored(evaluator)
    assert trainer.should_terminate  # the restored counter reached the patience


def test_training_curves_png(tmp_path: Path) -> None:
    evaluator = Engine(lambda e, b: None)
    trainer = Engine(lambda e, b: {"loss": torch.tensor(float(b))})

    @trainer.on(Events.EPOCH_COMPLETED(every=2))
    def validate(engine: Engine) -> None:  # like ValidationHandler(interval=2), attached first
        evaluator.state.epoch = engine.state.epoch
        evaluator.state.metrics = {"val_loss": 0.5, "val_mean_dice": 0.25}

    curves = TrainingCurvesHandler(str(tmp_path / "curves.png"), evaluator=evaluator)
    curves.attach(trainer)
    trainer.run([1, 3], max_epochs=3)
    assert curves.history["epoch"] == [1, 2, 3]
    assert curves.history["train_loss"] == [2.0, 2.0, 2.0]  # mean of the iteration losses
    assert curves.history["val_mean_dice"][1] == 0.25 and curves.history["val_loss"][1] == 0.5
    assert math.isnan(curves.history["val_loss"][0]) and math.isnan(curves.history["val_loss"][2])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["curves.png"]  # written through a temporary file


def test_check_records_errors(tmp_path: Path) -> None:
    image = tmp_path / "img.nii.gz"
    image.write_bytes(b"")
    missing = str(tmp_path / "missing_label.nii.gz")
    records = [{"subject": "sub-1", "image": str(image), "label": missing, "lesions": [{"voxels": 3}]}]
    with pytest.raises(FileNotFoundError, match="label file of sub-1 does not exist: .*missing_label.nii.gz"):
        check_records(records, source="datalist.json")
    with pytest.raises(ValueError, match="has no 'label' entry"):
        check_records([{"image": str(image)}])
    kept = check_records([dict(records[0], label=str(image))])
    assert kept == [{"image": str(image), "label": str(image), "subject": "sub-1"}]


# ----------------------------------------------------------------------------- config tests


def test_config_parses_and_every_id_instantiates(shared: dict[str, str], tmp_path: Path) -> None:
    # command-line switches arrive as strings: "false" must disable resuming
    workflow = _workflow(_overrides(shared, tmp_path, resume="false"))
    assert workflow.check_properties() == []  # MONAI's training-bundle properties
    parser = workflow.parser
    assert parser["run"] == parser["training"]  # `run` (default id) and `run training` do the same
    skip = {"imports", "initialize", "training", "run", "finalize", "_meta_"}
    for name in parser.get():
        if name not in skip:
            parser.get_parsed_content(name)
    split = parser.get_parsed_content("dataset_split")
    train, val = split["training"], split["validation"]
    assert len({r["subject"] for r in train}) == 2 and len(val) == 1
    assert parser.get_parsed_content("network").in_channels == 3  # [image, RM_0.50, RM_0.75]
    item = parser.get_parsed_content("train#dataset")[0]
    assert tuple(item["image"].shape) == (3, 64, 64) and tuple(item["label"].shape) == (1, 64, 64)
    assert item["label"].dtype == torch.float32
    volume = parser.get_parsed_content("validate#dataset")[0]
    assert tuple(volume["image"].shape) == (3, 50, 59, 48)
    assert parser.get_parsed_content("validate#inferer").spatial_dim == 2  # axial slices: last axis
    assert len(parser.get_parsed_content("train#dataloader")) == 2
    assert parser.get_parsed_content("train#resume_loader").enabled is False
    assert parser.get_parsed_content("train#trainer").amp is False  # no CUDA autocast on CPU
    assert not list(Path(tmp_path).glob("models/*.pt"))  # building the workflow writes no checkpoint


def test_training_run_outputs_and_resume(shared: dict[str, str], tmp_path: Path) -> None:
    overrides = _overrides(shared, tmp_path)
    # run 1: a 2-epoch run that dies at the first iteration of epoch 2
    workflow = _workflow(overrides)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    optimizer = workflow.parser.get_parsed_content("optimizer")
    steps = len(workflow.parser.get_parsed_content("train#dataloader"))
    lrs_first: dict[int, float] = {}
    _record_lr(trainer, optimizer, lrs_first)

    @trainer.on(Events.ITERATION_STARTED(once=steps + 1))
    def crash(engine: Engine) -> None:
        raise RuntimeError("simulated interruption")

    with pytest.raises(RuntimeError) as error:
        workflow.run()
    assert str(_root_cause(error.value)) == "simulated interruption"
    models, outputs = tmp_path / "models", tmp_path / "outputs" / "train"
    assert (models / "model.pt").is_file() and (models / "checkpoint_last.pt").is_file()
    assert (outputs / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list(outputs.glob("events.out.tfevents.*"))
    # the iteration timing of epoch 1 (IterationTimingHandler): data wait and compute add up to at most the epoch
    timing = tensorboard_scalars(outputs)
    assert len(timing["timing/data_wait_s"]) == 1 and 0 <= timing["timing/data_wait_percent"][0] <= 100
    assert timing["timing/data_wait_s"][0] + timing["timing/compute_s"][0] <= timing["timing/epoch_s"][0] * (1 + 1e-6)
    # the weights under "model" (what MONAI Label and ckpt_export --key_in_ckpt model read), with the
    # settings inference rebuilds the network and its inputs from
    weights = torch.load(models / "model.pt", weights_only=True)
    assert set(weights) == {"model", "model_settings"}
    assert set(weights["model"]) == set(workflow.parser.get_parsed_content("network").state_dict())
    settings = weights["model_settings"]
    assert (
        settings["input_size"] == [64, 64] and settings["num_passes"] == 1 and settings["rcu_patch_sizes"] == [4, 4, 8]
    )
    assert settings["network_options"] == {"features": [4, 8, 8, 8, 8, 4]}
    assert settings["preprocessing_options"] == {} and settings["training_spacing_mm"] == [4.0, 4.0, 4.0]
    assert settings["mae_sha256"] and settings["residual_map_reference"]["n_volumes"] == 2
    state = torch.load(models / "checkpoint_last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == steps == state["trainer"]["epoch_length"]  # i.e. after epoch 1

    # run 2: resume; continues at epoch 1 with the schedule of the uninterrupted run
    resumed = _workflow(dict(overrides, resume=True))
    trainer2 = resumed.parser.get_parsed_content("train#trainer")
    lrs_second: dict[int, float] = {}
    _record_lr(trainer2, resumed.parser.get_parsed_content("optimizer"), lrs_second)
    started: list[int] = []
    trainer2.add_event_handler(Events.EPOCH_STARTED, lambda e: started.append(e.state.epoch))
    resumed.run()
    resumed.finalize()
    assert started == [2] and trainer2.state.epoch == 2 and trainer2.state.iteration == 2 * steps
    assert sorted(lrs_second) == list(range(steps + 1, 2 * steps + 1))

    reference_optimizer = torch.optim.Adam(torch.nn.Linear(1, 1).parameters(), lr=1e-4)
    reference = WarmupCosineLR(reference_optimizer, iterations_per_epoch=steps, max_epochs=2, warmup_epochs=1)
    expected = {}
    for iteration in range(1, 2 * steps + 1):
        expected[iteration] = reference_optimizer.param_groups[0]["lr"]
        reference_optimizer.step()
        reference.step()
    assert lrs_first == pytest.approx({i: expected[i] for i in lrs_first})
    assert lrs_second == pytest.approx({i: expected[i] for i in lrs_second})
    assert expected[steps + 1] == pytest.approx(1e-3)  # warm-up (1 epoch here) reached x10
    curves = resumed.parser.get_parsed_content("train#training_curves")
    assert curves.history["epoch"] == [1, 2]  # the curve history survived the interruption
    final = torch.load(models / "checkpoint_last.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 2 * steps


def test_early_stopping_on_flat_val_loss(shared: dict[str, str], tmp_path: Path) -> None:
    # lr 0: the weights never change, so the validation loss never improves after epoch 1
    overrides = _overrides(
        shared, tmp_path, learning_rate=0.0, early_stop_patience=1, max_epochs=5, max_slices_per_epoch=BATCH
    )
    workflow = _workflow(overrides)
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2  # epoch 1 sets the best loss, epoch 2 does not improve -> stop
    curves = workflow.parser.get_parsed_content("train#training_curves")
    assert curves.history["val_loss"][0] == curves.history["val_loss"][1]


def test_bad_records_give_clear_errors(shared: dict[str, str], tmp_path: Path) -> None:
    image = np.random.default_rng(0).uniform(0, 100, (12, 12, 8)).astype(np.float32)
    paths = {}
    for name, array in (("img", image), ("small_label", np.zeros((12, 10, 8), np.float32))):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(array, np.eye(4)), paths[name])
    datalist = tmp_path / "datalist.json"

    def parser_for(records: list[dict]) -> ConfigParser:
        datalist.write_text(json.dumps({"training": records}))
        parser = ConfigParser()
        parser.read_config(CONFIGS)
        parser.update(_overrides(shared, tmp_path, datalist=str(datalist)))
        return parser

    missing = [{"image": str(tmp_path / "nope.nii.gz"), "label": paths["small_label"]}] * 2
    with pytest.raises(Exception) as error:
        parser_for(missing).get_parsed_content("dataset_split")
    cause = _root_cause(error.value)
    assert isinstance(cause, FileNotFoundError)
    assert str(cause) == f"{datalist}: image file of record 0 does not exist: {tmp_path / 'nope.nii.gz'}"
    mismatch = [{"subject": f"sub-{i}", "image": paths["img"], "label": paths["small_label"]} for i in range(2)]
    with pytest.raises(Exception) as error:
        parser_for(mismatch).get_parsed_content("train#dataset")
    cause = _root_cause(error.value)
    assert isinstance(cause, InvalidVolumeError)
    assert f"image/label shape mismatch: image {paths['img']} has spatial shape (12, 12, 8)" in str(cause)
    assert f"label {paths['small_label']} has (12, 10, 8)" in str(cause)


def test_ddp_two_processes_gloo(shared: dict[str, str], tmp_path: Path) -> None:
    # per-rank ckpt/output folders: rank 1 must not create its own, i.e. writes nothing;
    # val_fraction 0.5: 2 validation volumes, one per rank
    overrides = _overrides(
        shared,
        tmp_path,
        max_epochs=1,
        val_fraction=0.5,
        ckpt_dir="$@bundle_root + '/models' + os.environ['RANK']",
        output_dir="$@bundle_root + '/eval' + os.environ['RANK']",
    )
    args = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training",
        "--config_file", json.dumps(CONFIGS + [MULTI_GPU]), "--logging_file", "False", *args,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "models0" / "model.pt").is_file()
    assert (tmp_path / "models0" / "checkpoint_last.pt").is_file()
    assert (tmp_path / "eval0" / "training_curves.png").is_file()
    assert list((tmp_path / "eval0").glob("events.out.tfevents.*"))
    assert not (tmp_path / "models1").exists() and not (tmp_path / "eval1").exists()
    weights = torch.load(tmp_path / "models0" / "model.pt", weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in weights)  # saved unwrapped from DDP


def _label_records(shared: dict[str, str]) -> list[dict[str, str]]:
    """``{"image", "label"}`` path records of the toy data set, as MONAI Label's datastore lists them."""
    images = sorted(Path(shared["dataset_dir"]).rglob("*_T1w.nii.gz"))
    return [
        {"image": str(p), "label": str(p).replace("_T1w.nii.gz", "_label-L_desc-T1lesion_mask.nii.gz")} for p in images
    ]


def _monai_label_overrides(shared: dict[str, str], bundle_root: Path, records: list[dict[str, str]]) -> dict[str, Any]:
    """What MONAI Label 0.8.5's BundleTrainTask passes to ``monai.bundle.run`` for a request
    ``{"max_epochs": 1, "val_split": 0, "device": "cpu", "model_filename": "model.pt"}``: the device as a
    string, the datastore's records, an empty validation list, the config's own train#handlers (with
    its CheckpointLoader of models/model.pt in front once that file exists) and the displayable_configs
    taken from the request."""
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    handlers = parser.get("train#handlers")
    model = bundle_root / "models" / "model.pt"
    if model.is_file():  # MONAI Label's _load_checkpoint: pretrained, strict=False
        handlers.insert(
            0,
            {
                "_target_": "CheckpointLoader",
                "load_path": str(model),
                "load_dict": {"model": "$@network"},
                "strict": False,
            },
        )
    toy = {
        k: v
        for k, v in _overrides(shared, bundle_root).items()
        if k not in ("max_epochs", "dataset_dir", "bundle_root")
    }
    return {
        **toy,
        "bundle_root": str(bundle_root),
        "train#trainer#max_epochs": 1,
        "train#dataset#data": records,
        "device": "cpu",
        "train#handlers": handlers,
        "displayable_configs": {"model_filename": "model.pt"},
        "validate#dataset#data": [],
    }


def test_monai_label_training_without_validation_writes_the_model(shared: dict[str, str], tmp_path: Path) -> None:
    """MONAI Label's /train with val_split 0: string device, no validation data -- models/model.pt is written
    (the validator's best-model saver never runs), and a second request starts from it."""
    from monai.bundle import run as bundle_run

    records = _label_records(shared)[:2]
    model = tmp_path / "models" / "model.pt"
    bundle_run(
        run_id="run",
        init_id=None,
        final_id=None,
        config_file=CONFIGS,
        **_monai_label_overrides(shared, tmp_path, records),
    )
    assert model.is_file(), "a run without validation data wrote no models/model.pt"
    first = torch.load(model, weights_only=True)
    assert set(first) == {"model", "model_settings"} and first["model_settings"]["mae_sha256"]
    # the next request loads it (MONAI Label's CheckpointLoader, which reads the "model" key) and replaces it
    overrides = _monai_label_overrides(shared, tmp_path, records)
    assert overrides["train#handlers"][0]["_target_"] == "CheckpointLoader"
    bundle_run(run_id="run", init_id=None, final_id=None, config_file=CONFIGS, **overrides)
    second = torch.load(model, weights_only=True)
    changed = [k for k in first["model"] if not torch.equal(first["model"][k], second["model"][k])]
    assert changed, "the second run did not replace models/model.pt"


def test_retraining_sees_a_label_edited_in_place(shared: dict[str, str], tmp_path: Path) -> None:
    """A label corrected in place (MONAI Label saves labels/final/<id>.nii.gz again) reaches the next
    training run's slices, though the residual-map cache of the first run holds the record's old label."""
    record = dict(_label_records(shared)[0])
    label = tmp_path / "label.nii.gz"
    label.write_bytes(Path(record["label"]).read_bytes())
    record["label"] = str(label)
    overrides = {**_monai_label_overrides(shared, tmp_path, [record]), "cache_dir": str(tmp_path / "cache")}

    def lesion_voxels() -> int:
        workflow = ConfigWorkflow(config_file=CONFIGS, workflow_type="train", logging_file=False, **overrides)
        workflow.initialize()
        # MONAI Label sets the epochs as train#trainer#max_epochs: the lr schedule follows them
        assert workflow.parser.get_parsed_content("lr_scheduler").max_epochs == 1
        return int(workflow.parser.get_parsed_content("train#dataset").lesion_voxels.sum())

    assert lesion_voxels() > 0
    mtime = label.stat().st_mtime_ns
    image = nib.load(label)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine, image.header), str(label))  # erased
    os.utime(label, ns=(mtime, mtime))
    assert lesion_voxels() == 0, "the second run trained on the cached old label"


class _CountingScale(Transform):
    """A deterministic MONAI transform that counts its calls (module level: picklable for hashing)."""

    calls = 0

    def __call__(self, d: dict) -> dict:
        type(self).calls += 1
        return {"image": torch.as_tensor(d["image"], dtype=torch.float32) * 2}


def test_disk_cache_stores_the_computed_volume(tmp_path: Path) -> None:
    # A Compose around the volume transform (as brain_preprocessing + ResidualMapd are) must be
    # cached as computed: a second, fresh cache object must not run the transform again.
    record = {"image": [[1.0, 2.0], [3.0, 4.0]]}
    _CountingScale.calls = 0
    first = DiskCachedTransform(Compose([_CountingScale()]), cache_dir=tmp_path)(record)
    assert _CountingScale.calls == 1
    second = DiskCachedTransform(Compose([_CountingScale()]), cache_dir=tmp_path)(record)
    assert _CountingScale.calls == 1, "the cached result was recomputed"
    torch.testing.assert_close(torch.as_tensor(second["image"]), torch.as_tensor(first["image"]))
    torch.testing.assert_close(torch.as_tensor(first["image"]), torch.tensor([[2.0, 4.0], [6.0, 8.0]]))
    assert any(tmp_path.iterdir())


def test_disk_cache_follows_the_files_it_depends_on(tmp_path: Path) -> None:
    # a retrained MAE at the same path must not be served the maps of the old one
    weights = tmp_path / "mae.pt"
    weights.write_bytes(b"old weights")
    record = {"image": [[1.0, 2.0]]}
    cache = tmp_path / "cache"
    _CountingScale.calls = 0
    DiskCachedTransform(Compose([_CountingScale()]), cache_dir=cache, depends_on=[weights])(record)
    DiskCachedTransform(Compose([_CountingScale()]), cache_dir=cache, depends_on=[weights])(record)
    assert _CountingScale.calls == 1
    weights.write_bytes(b"new weights")
    DiskCachedTransform(Compose([_CountingScale()]), cache_dir=cache, depends_on=[weights])(record)
    assert _CountingScale.calls == 2
    assert len(list(cache.iterdir())) == 2


class _RandomDraw(Transform):
    """A deterministic result whose computation consumes the global RNG (like building the MAE)."""

    def __call__(self, d: dict) -> dict:
        torch.rand(3)
        return {"image": torch.as_tensor(d["image"], dtype=torch.float32)}


def test_disk_cache_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    # cold and warm cache runs must draw the same network init and slice order afterwards
    for cache_dir in (tmp_path, tmp_path, None):  # miss, hit, no cache
        torch.manual_seed(0)
        DiskCachedTransform(Compose([_RandomDraw()]), cache_dir=cache_dir)({"image": [1.0]})
        after = torch.rand(1)
        torch.manual_seed(0)
        assert torch.equal(after, torch.rand(1))


def test_progress_bar_only_on_a_terminal() -> None:
    """A log file or MONAI Label's task output gets no progress-bar redraws (its last 20 lines are /train's details)."""
    import io

    from bundle.handlers.progress import ProgressBarHandler

    class _Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    counts = {}
    for name, stream, enabled in (
        ("terminal", _Terminal(), True),
        ("pipe", io.StringIO(), True),
        ("off", _Terminal(), "false"),
    ):
        engine = Engine(lambda e, b: 0.0)
        before = sum(len(h) for h in engine._event_handlers.values())
        ProgressBarHandler(enabled=enabled, stream=stream).attach(engine)
        counts[name] = sum(len(h) for h in engine._event_handlers.values()) - before
    assert counts["terminal"] > 0 and counts["pipe"] == 0 and counts["off"] == 0, counts
