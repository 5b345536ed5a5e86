"""IterationTimingHandler: data wait and compute of each epoch add up, appear in the log and in
TensorBoard; the training configs attach it before the other iteration-level handlers."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch
from bundle.handlers.timing import SCALARS, IterationTimingHandler, batch_size_of
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader, Dataset

from tests.helpers import tensorboard_scalars

ROOT = Path(__file__).resolve().parents[2]
WAIT_S, COMPUTE_S = 0.03, 0.02  # per item / per iteration
BATCH, ITEMS = 2, 6  # 3 iterations per epoch


class SlowDataset(Dataset):
    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        time.sleep(WAIT_S)
        return {"image": torch.full((1, 4, 4), float(index))}


def test_wait_and_compute_add_up_and_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def step(engine: Engine, batch: dict) -> float:
        time.sleep(COMPUTE_S)
        return 0.0

    engine = Engine(step)
    handler = IterationTimingHandler(log_dir=str(tmp_path))
    handler.attach(engine)
    other = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: other.append(time.sleep(0.005)))
    with caplog.at_level(logging.INFO):
        engine.run(DataLoader(SlowDataset(), batch_size=BATCH), max_epochs=2)

    assert [e["epoch"] for e in handler.history] == [1, 2]
    for epoch in handler.history:
        assert epoch["iterations"] == ITEMS // BATCH and epoch["samples"] == ITEMS
        # the sleeps are lower bounds; the three parts make up the epoch
        assert epoch["data_wait_s"] >= ITEMS * WAIT_S and epoch["compute_s"] >= (ITEMS // BATCH) * COMPUTE_S
        assert epoch["other_s"] >= 3 * 0.005 * 0.9
        parts = epoch["data_wait_s"] + epoch["compute_s"] + epoch["other_s"]
        assert parts == pytest.approx(epoch["epoch_s"], rel=1e-6)
        assert epoch["data_wait_s"] + epoch["compute_s"] >= 0.75 * epoch["epoch_s"]
        assert epoch["data_wait_percent"] == pytest.approx(100 * epoch["data_wait_s"] / epoch["epoch_s"])
        # the first batch (and the loader's start) apart: the steady share leaves it out
        first = epoch["epoch_start_wait_s"]
        assert BATCH * WAIT_S <= first < epoch["data_wait_s"]
        steady = 100 * (epoch["data_wait_s"] - first) / (epoch["epoch_s"] - first)
        assert epoch["steady_data_wait_percent"] == pytest.approx(steady)
        assert epoch["samples_per_s"] == pytest.approx(ITEMS / epoch["epoch_s"])
    summary = handler.summary(skip_first=1)
    assert summary["epochs"] == 1 and summary["iterations"] == 3 and summary["samples"] == ITEMS
    assert summary["data_wait_s"] == pytest.approx(handler.history[1]["data_wait_s"])

    lines = [r.getMessage() for r in caplog.records if "data wait" in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("epoch 1: 3 iterations in ")
    first = handler.history[0]
    shares = f"({first['data_wait_percent']:.1f} %; {first['steady_data_wait_percent']:.1f} % after the first batch)"
    assert shares in lines[0]
    assert lines[0].endswith(f"{first['samples_per_s']:.1f} samples/s")

    scalars = tensorboard_scalars(tmp_path)  # the writer is closed at COMPLETED
    assert set(scalars) == {f"timing/{name}" for name in SCALARS}
    for name in SCALARS:
        assert scalars[f"timing/{name}"] == pytest.approx([e[name] for e in handler.history], rel=1e-5)


def test_disabled_and_without_log_dir(tmp_path: Path) -> None:
    engine = Engine(lambda e, b: 0.0)
    IterationTimingHandler(log_dir=str(tmp_path / "off"), enabled="false").attach(engine)
    quiet = IterationTimingHandler()  # log line only
    quiet.attach(engine)
    engine.run([torch.zeros(3, 1)] * 2, max_epochs=1)
    assert not (tmp_path / "off").exists()
    assert quiet.history[0]["iterations"] == 2 and quiet.history[0]["samples"] == 6


def test_batch_size_of() -> None:
    assert batch_size_of(torch.zeros(5, 2)) == 5 and batch_size_of(torch.tensor(1.0)) == 1
    assert batch_size_of({"subject": ["a", "b"], "image": torch.zeros(2, 1, 4, 4)}) == 2
    assert batch_size_of([torch.zeros(3, 1), torch.zeros(3)]) == 3
    assert batch_size_of({"name": "x"}) == 0 and batch_size_of(None) == 0


@pytest.mark.parametrize("config,log_dir", [("train.json", "@output_dir"), ("train_mae.json", "@tb_dir")])
def test_training_configs_attach_it_first_of_the_iteration_handlers(config: str, log_dir: str) -> None:
    handlers = json.loads((ROOT / "configs" / config).read_text())["train"]["handlers"]
    targets = [h.get("_target_") if isinstance(h, dict) else h for h in handlers]
    timing = targets.index("bundle.handlers.IterationTimingHandler")
    assert handlers[timing]["log_dir"] == log_dir
    # only epoch-level handlers (the per-epoch seeding) before it
    assert targets[:timing] == ["bundle.handlers.EpochSeedHandler"][:timing]
