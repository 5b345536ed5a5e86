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
"""MONAI Label's whole loop with the bundle, on a real server (the ``monaibundle`` sample app) on 127.0.0.1.

Setup (module fixtures):

1. the MONAI Label environment of ``requirements-monailabel.txt`` (monailabel 0.8.5, CPU torch
   2.13.0, the torchvision stand-in), built once and cached outside the temporary folders
   (tests/integration/monailabel_support.py);
2. demo data: synthetic ATLAS look-alikes at 3 mm with large lesions; the MAE pre-trained by the
   bundle's own workflow (train_mae.json + demo.json: MAE weights are a prerequisite of training
   from MONAI Label, see docs/monailabel.md) and a GRCSF ``models/model.pt`` with random weights and
   the demo scale's settings (MONAI Label lists a bundle only when it has weights);
3. the bundle exported with scripts/export_bundle.py into ``<app>/model/grcsf_lesion_segmentation/``
   (demo.json and a CI-sized schedule merged into inference.json and train.json); the studies: the
   served case (the largest lesion of the demo set, never trained on) in RAS and stored LPS, and
   the two subjects of the other cohort with their labels in ``labels/final/``;
4. ``monailabel start_server ... --conf models grcsf_lesion_segmentation --conf zoo_source github``
   (the local bundle folder exists, so nothing is downloaded) ``--conf sam2 false``; stopped
   (process group) after the module, every wait has a deadline.

The loop, over HTTP: ``/info/`` (inference and training offered with ``model.pt`` only; no
scoring), ``/infer`` with the random weights, ``/train`` (val_split 0: every labelled image trains;
the weights of the last epoch replace ``models/model.pt``), ``/infer`` again -- the new weights: the
mask equals the bundle's own inference with the new file, and finds the lesion --, ``PUT
/datastore/label`` (a corrected label saved in place) and ``/train`` again, which reads the
corrected label (its residual-map cache entry is recomputed, the unchanged subject's is reused),
and ``/train`` without ``models/mae.pt``, which fails with one line naming the file and the command
that makes it. Two servers that must refuse to start: with ``--conf epistemic_model`` (epistemic
scoring is not offered, docs/monailabel.md says why) and with two versions of the bundle (the
second would run the first one's code). Every request and response is written to
``monailabel_transcript.md`` in the test's temporary folder (its path is printed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle.data.synthetic.atlas import SyntheticAtlasParams, generate_atlas_like_dataset
from bundle.networks import MODEL_SETTING_DEFAULTS, ModelSettings, grcsf_from_settings, mae_digest
from bundle.tools import export_bundle as export
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run

from tests.helpers import flip_to_lps
from tests.integration import monailabel_support as support

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
MODEL = "grcsf_lesion_segmentation"

# every test here shares the module's fixtures; the first one pays the (cached) environment
# build on a new machine (about 80 s), then the MAE pre-training
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# Demo data and training schedule. The lesions are made large (8-40 ml) so that a lesion can be
# learnt in a CI-sized schedule, started through MONAI Label's /train: 32 epochs of 32 slices,
# i.e. 256 iterations of batch 4 at a constant lr of 3e-3 (no warm-up), on one CPU thread.
# Measured (2-core machine shared with another job): about 110 s for the task, Dice 0.40 and
# precision 0.35 on the held-out served case (48 epochs: 145 s, Dice 0.60).
# The split is by cohort: r002 is labelled in the datastore (trains), r001 holds the served case.
NUM_SUBJECTS = 4
LESIONS = SyntheticAtlasParams(
    lesion_volume_mm3=(8000.0, 40000.0), lesion_contrast=(0.4, 0.7), lesion_count_probs=(0.6, 0.4)
)
MAE_EPOCHS = 2
TRAIN_EPOCHS = 32
SCHEDULE = {  # merged into the exported train.json (MONAI Label sets only the epochs)
    "max_slices_per_epoch": 32,
    "batch_size": 4,
    "learning_rate": 3e-3,
    "warmup_epochs": 0,
    "warmup_lr_factor": 1.0,
    "lesion_oversampling": 10.0,
    "early_stop_patience": 100,
}
# the request of the training panel (MONAI Label 0.8.5 reads every displayable_configs key from it)
TRAIN_REQUEST = {
    "val_split": 0.0,
    "device": "cpu",
    "multi_gpu": False,
    "pretrained": True,
    "model_filename": "model.pt",
}
# one torch thread in the server and in the bundle's own inference: predictable on a shared CI
# machine (see monailabel_support.venv_env); the demo training runs with one thread anyway (demo.json)
THREADS = 1
# "lesion found": Dice at least MIN_DICE (chance level for a mask of this size is about 0.01) and a
# precision at least MIN_ENRICHMENT times the lesion's share of the brain
MIN_DICE = 0.05
MIN_ENRICHMENT = 5.0


def _log_time(timings: dict[str, float], step: str, start: float) -> None:
    timings[step] = round(time.perf_counter() - start, 1)
    print(f"[monailabel test] {step}: {timings[step]} s", flush=True)


def _mask(data: bytes, path: Path, client: support.MonaiLabelClient) -> np.ndarray:
    """The returned label volume (saved to ``path``); its description goes into the transcript."""
    path.write_bytes(data)
    mask = np.asarray(nib.load(path).dataobj)
    client.annotate(
        f"returned mask: shape {mask.shape}, {mask.dtype}, values {np.unique(mask).tolist()}, "
        f"{int(np.count_nonzero(mask))} lesion voxels"
    )
    return mask


def _demo_settings() -> dict[str, Any]:
    """The model settings of train.json with demo.json merged (what the served training records)."""
    merged = ConfigParser.load_config_files([str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")])
    return {key: merged[key] for key in MODEL_SETTING_DEFAULTS}


@pytest.fixture(scope="module")
def timings() -> dict[str, float]:
    return {}


@pytest.fixture(scope="module")
def venv(timings: dict[str, float]) -> Path:
    start = time.perf_counter()
    path = support.ensure_venv()
    _log_time(timings, "environment (0 when cached)", start)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, timings: dict[str, float]) -> dict[str, Any]:
    """Demo data, the pre-trained MAE and random GRCSF weights; returns paths and the subjects."""
    root = tmp_path_factory.mktemp("grcsf_demo")
    start = time.perf_counter()
    records = generate_atlas_like_dataset(
        root / "atlas_3mm",
        num_subjects=NUM_SUBJECTS,
        num_cohorts=2,
        lesion_free_fraction=0.0,
        resolution_mm=3,
        seed=0,
        progress=False,
        params=LESIONS,
    )
    _log_time(timings, "demo data", start)
    start = time.perf_counter()
    bundle_run(
        run_id="training",
        config_file=[str(CONFIGS / "train_mae.json"), str(CONFIGS / "demo.json")],
        logging_file=str(CONFIGS / "logging.conf"),
        bundle_root=str(root),
        dataset_dir=str(root / "atlas_3mm"),
        mae_max_epochs=MAE_EPOCHS,
        progress=False,
        output_dir=str(root / "mae_logs"),
    )
    _log_time(timings, "MAE pre-training", start)
    models = root / "models"
    settings = _demo_settings()
    torch.manual_seed(0)
    network = grcsf_from_settings(settings)
    recorded = ModelSettings(**settings, mae_sha256=mae_digest(models / "mae.pt")).state_dict()
    torch.save({"model": network.state_dict(), "model_settings": recorded}, models / "model.pt")
    served = max(records, key=lambda r: r["lesion_voxels"])  # the largest lesion of the demo set
    training = [r for r in records if r["cohort"] != served["cohort"]]
    assert len(training) == 2
    return {"root": root, "models": models, "case": served, "training": training}


@pytest.fixture(scope="module")
def app(venv: Path, demo: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The ``monaibundle`` app with the exported bundle, and the studies folder."""
    root = tmp_path_factory.mktemp("monailabel")
    app_dir = support.download_sample_app(venv, root / "apps")
    schedule = root / "schedule.json"
    schedule.write_text(json.dumps(SCHEDULE))
    bundle_dir = export.export_bundle(
        app_dir / "model",
        name=MODEL,
        models_dir=demo["models"],
        merge=["inference.json=demo.json", "train.json=demo.json", f"train.json={schedule}"],
    )
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    shutil.copy(demo["case"]["image"], studies / "case_ras.nii.gz")
    flip_to_lps(str(studies / "case_ras.nii.gz"), studies / "case_lps.nii.gz")
    for name, record in zip(("train_a", "train_b"), demo["training"]):
        shutil.copy(record["image"], studies / f"{name}.nii.gz")
        shutil.copy(record["label"], studies / "labels" / "final" / f"{name}.nii.gz")
    return {"root": root, "app": app_dir, "bundle": bundle_dir, "studies": studies}


@pytest.fixture(scope="module")
def served(venv: Path, app: dict[str, Path], timings: dict[str, float]) -> Any:
    """The MONAI Label server (inference and training); stopped afterwards, the transcript written."""
    root = app["root"]
    server = support.MonaiLabelServer(
        venv,
        app["app"],
        app["studies"],
        conf={"models": MODEL, "zoo_source": "github", "sam2": "false"},
        log_path=root / "server.log",
        workdir=root / "server",
        threads=THREADS,
    )
    start = time.perf_counter()
    client = support.MonaiLabelClient(server.url)
    try:
        server.start(timeout_s=300)
        _log_time(timings, "server start", start)
        yield {"server": server, "client": client, **app}
    finally:
        server.stop()
        transcript = client.write_transcript(
            root / "monailabel_transcript.md", "MONAI Label 0.8.5 and the GRCSF bundle: requests and responses"
        )
        print(f"[monailabel test] transcript: {transcript}; server log: {server.log_path}", flush=True)


def _train(client: support.MonaiLabelClient, max_epochs: int, note: str, timeout_s: float = 900) -> dict[str, Any]:
    """``POST /train/<model>`` (a background task), then ``GET /train/`` until it ends."""
    submitted = client.post_json(f"/train/{MODEL}", {"max_epochs": max_epochs, **TRAIN_REQUEST}, note=note)
    assert submitted["status"] == "SUBMITTED", submitted
    return client.wait_task("train", timeout_s=timeout_s)


@pytest.fixture(scope="module")
def before(served: dict[str, Any], timings: dict[str, float]) -> np.ndarray:
    """The served case's mask with the random weights."""
    start = time.perf_counter()
    data = served["client"].infer(MODEL, "case_ras", note="inference with the random weights of models/model.pt")
    _log_time(timings, "infer before training", start)
    return _mask(data, served["root"] / "before.nii.gz", served["client"])


@pytest.fixture(scope="module")
def trained(served: dict[str, Any], before: np.ndarray, timings: dict[str, float]) -> dict[str, Any]:
    """/train through the API, then /infer of both cases with the new weights."""
    client, weights = served["client"], served["bundle"] / "models" / "model.pt"
    old = torch.load(weights, weights_only=True)
    start = time.perf_counter()
    task = _train(client, TRAIN_EPOCHS, f"training: {TRAIN_EPOCHS} epochs, val_split 0 (both labelled images train)")
    _log_time(timings, "train (MONAI Label /train)", start)
    new = torch.load(weights, weights_only=True)
    changed = sum(not torch.equal(old["model"][k], new["model"][k]) for k in old["model"])
    client.annotate(f"models/model.pt after the task: {changed} of {len(old['model'])} tensors changed")
    masks, files = {}, {}
    for image_id in ("case_ras", "case_lps"):
        start = time.perf_counter()
        data = client.infer(MODEL, image_id, note="inference with the weights /train wrote")
        _log_time(timings, f"infer {image_id} after training", start)
        files[image_id] = served["root"] / f"{image_id}_after.nii.gz"
        masks[image_id] = _mask(data, files[image_id], client)
    return {"task": task, "old": old, "new": new, "masks": masks, "files": files}


@pytest.fixture(scope="module")
def reference(served: dict[str, Any], venv: Path, trained: dict[str, Any], timings: dict[str, float]) -> dict:
    """The bundle's own inference with the trained weights, run from the served folder in the same environment."""
    inputs, out = served["root"] / "reference_in", served["root"] / "reference_out"
    inputs.mkdir()
    for name in ("case_ras", "case_lps"):  # same file names: the residual-map masks are seeded by them
        shutil.copy(served["studies"] / f"{name}.nii.gz", inputs / f"{name}.nii.gz")
    cmd = [
        str(venv / "bin" / "python"),
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--meta_file",
        "configs/metadata.json",
        "--logging_file",
        "configs/logging.conf",
        "--bundle_root",
        ".",
        "--input_dir",
        str(inputs),
        "--output_dir",
        str(out),
    ]
    start = time.perf_counter()
    result = subprocess.run(
        cmd,
        cwd=served["bundle"],
        env=support.venv_env(venv, THREADS),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    _log_time(timings, "reference inference (both cases)", start)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return {name: np.asarray(nib.load(out / f"{name}_seg.nii.gz").dataobj) for name in ("case_ras", "case_lps")}


def _cache_entries(bundle_dir: Path, label: Path) -> list[tuple[float, int]]:
    """(mtime, lesion voxels) of the residual-map cache entries of ``label``, oldest first."""
    entries = []
    for path in (bundle_dir / "outputs" / "train" / "cache").glob("*.pt"):
        item = torch.load(path, weights_only=True)
        packed = item["label"]
        if Path(packed["meta"]["filename_or_obj"]).resolve() == label.resolve():
            entries.append((path.stat().st_mtime, int(packed["__meta_tensor__"].sum())))
    return sorted(entries)


@pytest.fixture(scope="module")
def relabelled(served: dict[str, Any], trained: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """Submit Label (the label of train_a erased, saved in place), then /train again."""
    client, bundle_dir = served["client"], served["bundle"]
    label_a = served["studies"] / "labels" / "final" / "train_a.nii.gz"
    label_b = served["studies"] / "labels" / "final" / "train_b.nii.gz"
    before_a, before_b = _cache_entries(bundle_dir, label_a), _cache_entries(bundle_dir, label_b)
    original = nib.load(label_a)
    original_voxels = int(np.asarray(original.dataobj).sum())  # read now: nibabel reads the file lazily
    corrected = served["root"] / "train_a_corrected.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(original.shape, np.uint8), original.affine, original.header), str(corrected))
    inode = label_a.stat().st_ino
    saved = client.put_label("train_a", corrected, note="Submit Label: the lesion of train_a erased")
    on_disk = int(np.asarray(nib.load(label_a).dataobj).sum())
    client.annotate(
        f"labels/final/train_a.nii.gz now: {on_disk} lesion voxels (was {original_voxels}), "
        f"same inode: {label_a.stat().st_ino == inode}"
    )
    start = time.perf_counter()
    task = _train(client, 1, "retraining after the label edit: 1 epoch, from the trained model.pt")
    _log_time(timings, "retrain after the label edit", start)
    after_a = _cache_entries(bundle_dir, label_a)
    client.annotate(
        "residual-map cache entries of train_a's record (lesion voxels of the cached label, oldest first): "
        f"before {[v for _, v in before_a]}, after {[v for _, v in after_a]}"
    )
    return {
        "saved": saved,
        "task": task,
        "in_place": label_a.stat().st_ino == inode,
        "on_disk": on_disk,
        "before": (before_a, before_b),
        "after": (after_a, _cache_entries(bundle_dir, label_b)),
        "original_voxels": original_voxels,
    }


# ----------------------------------------------------------------------------------------- tests


def test_info_offers_inference_and_training(served: dict[str, Any]) -> None:
    info = served["client"].get_json("/info/", note="what the app offers")
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    model = info["models"][MODEL]
    assert model["type"] == "segmentation"
    assert model["labels"] == {"lesion": 0}  # MONAI Label's reading of the output channel_def
    assert model["dimension"] == 2  # the network is 2D; the bundle's SliceInferer covers the volume
    assert model["version"] == meta["version"] and model["description"] == meta["description"]
    # displayable_configs: inference and training offer (and by default load) model.pt, not mae.pt
    assert model["config"]["model_filename"] == ["model.pt"]
    trainer = info["trainers"][MODEL]
    assert trainer["config"]["model_filename"] == ["model.pt"], trainer["config"]
    assert "lesion" in info["labels"]
    assert set(info["models"]) == {MODEL} and set(info["trainers"]) == {MODEL}  # no SAM, nothing downloaded
    assert info["scoring"] == {}  # epistemic scoring is not offered (test_epistemic_scoring_is_refused)
    datastore = served["client"].get_json("/datastore/?output=all", note="the studies and their labels")
    assert {"case_ras", "case_lps", "train_a", "train_b"} <= set(datastore["objects"])
    labelled = {k for k, v in datastore["objects"].items() if "final" in v.get("labels", {})}
    assert labelled == {"train_a", "train_b"}
    # the OHIF viewer (for DICOMweb studies) ships with the server
    page, content_type = support.http_get(f"{served['server'].url}/ohif/", timeout_s=30)
    assert content_type.startswith("text/html") and b"<html" in page.lower()


def test_train_replaces_the_weights_and_infer_uses_them(
    before: np.ndarray, trained: dict[str, Any], reference: dict[str, np.ndarray]
) -> None:
    assert trained["task"]["status"] == "DONE", trained["task"]
    old, new = trained["old"], trained["new"]
    assert set(new) == {"model", "model_settings"}  # with the settings inference rebuilds the network from
    assert new["model_settings"]["residual_map_reference"]["n_volumes"] == 2  # both labelled studies trained
    changed = sum(not torch.equal(old["model"][k], new["model"][k]) for k in old["model"])
    assert changed > len(old["model"]) // 2, "models/model.pt was not replaced by the training"
    after = trained["masks"]["case_ras"]
    assert int(np.count_nonzero((after > 0) != (before > 0))) > 0, "/infer returned the old weights' mask"
    # exactly what the bundle's own inference writes with the new file: the server reloaded model.pt
    for image_id, mask in trained["masks"].items():
        own = reference[image_id]
        differing = int(np.count_nonzero(mask.astype(np.uint8) != own))
        assert differing == 0, f"{image_id}: {differing} of {own.size} voxels differ from the bundle's inference"


def test_infer_keeps_the_input_geometry(served: dict[str, Any], trained: dict[str, Any]) -> None:
    for image_id, path in trained["files"].items():
        mask, image = nib.load(path), nib.load(served["studies"] / f"{image_id}.nii.gz")
        assert mask.shape == image.shape, image_id
        np.testing.assert_allclose(mask.affine, image.affine, atol=1e-4, err_msg=image_id)
        values = set(np.unique(np.asarray(mask.dataobj)).tolist())
        assert values <= {0, 1}, (image_id, values)


def test_lesion_found_after_training(
    served: dict[str, Any], demo: dict[str, Any], trained: dict[str, Any], timings: dict[str, float]
) -> None:
    truth = np.asarray(nib.load(demo["case"]["label"]).dataobj) > 0
    brain = np.asarray(nib.load(served["studies"] / "case_ras.nii.gz").dataobj) > 0
    ras, lps = trained["masks"]["case_ras"] > 0, trained["masks"]["case_lps"] > 0
    overlap = int(np.count_nonzero(ras & truth))
    dice = 2 * overlap / max(1, int(ras.sum()) + int(truth.sum()))
    precision = overlap / max(1, int(ras.sum()))
    prevalence = int(truth.sum()) / max(1, int(np.count_nonzero(brain)))
    # the LPS copy gets the RAS result in its own voxel order (up to the residual-map masks, which
    # are seeded by the file name)
    flipped = lps[::-1, ::-1]
    agreement = 2 * int(np.count_nonzero(flipped & ras)) / max(1, int(flipped.sum()) + int(ras.sum()))
    report = {
        "case": demo["case"]["subject"],
        "lesion_voxels": int(truth.sum()),
        "predicted_voxels": int(ras.sum()),
        "overlap_voxels": overlap,
        "dice": round(dice, 4),
        "precision": round(precision, 4),
        "lesion_share_of_brain": round(prevalence, 4),
        "ras_lps_dice": round(agreement, 4),
        "timings_s": timings,
    }
    print("[monailabel test] " + json.dumps(report), flush=True)
    assert agreement > 0.8, report
    assert dice >= MIN_DICE and precision >= MIN_ENRICHMENT * prevalence, f"lesion not found: {report}"


def test_retraining_reads_the_corrected_label(relabelled: dict[str, Any]) -> None:
    assert relabelled["saved"]["image"] == "train_a" and relabelled["saved"]["label"] == "train_a"
    assert relabelled["in_place"] and relabelled["on_disk"] == 0 < relabelled["original_voxels"]  # same file, now empty
    assert relabelled["task"]["status"] == "DONE", relabelled["task"]
    (before_a, before_b), (after_a, after_b) = relabelled["before"], relabelled["after"]
    # the first training cached train_a with its lesion; the retraining computed a new entry from the
    # corrected (empty) label instead of serving the cached one, and reused train_b's unchanged entry
    assert len(before_a) == 1 and before_a[0][1] > 0, before_a
    assert len(after_a) == 2 and after_a[0] == before_a[0] and after_a[1][1] == 0, after_a
    assert after_b == before_b and len(after_b) == 1, (before_b, after_b)


def test_training_without_the_mae_says_what_to_do(
    served: dict[str, Any], relabelled: dict[str, Any], timings: dict[str, float]
) -> None:
    """The MAE is a prerequisite (MONAI Label trains configs/train.json only): without models/mae.pt,
    /train fails and its last line names the file and the command that makes it."""
    mae = served["bundle"] / "models" / "mae.pt"
    aside = served["root"] / "mae.pt.aside"
    mae.rename(aside)
    try:
        start = time.perf_counter()
        task = _train(served["client"], 1, "training without models/mae.pt", timeout_s=300)
        _log_time(timings, "train without the MAE", start)
    finally:
        aside.rename(mae)
    assert task["status"] == "ERROR", task
    last = task["details"][-1]
    assert last.startswith("error: ") and str(mae) in last and "configs/train_mae.json" in last, task["details"]


def _refusal_log(venv: Path, app: dict[str, Path], conf: dict[str, str], name: str, timings: dict[str, float]) -> str:
    server = support.MonaiLabelServer(
        venv,
        app["app"],
        app["studies"],
        conf={"zoo_source": "github", "sam2": "false", "skip_trainers": "true", **conf},
        log_path=app["root"] / f"server_{name}.log",
        workdir=app["root"] / f"server_{name}",
        threads=THREADS,
    )
    start = time.perf_counter()
    try:
        return server.start_expecting_refusal(timeout_s=300)
    finally:
        server.stop()
        _log_time(timings, f"server refusing ({name})", start)


def test_epistemic_scoring_is_refused(venv: Path, app: dict[str, Path], timings: dict[str, float]) -> None:
    """``--conf epistemic_model`` asks the bundle for Monte-Carlo dropout, which it does not offer:
    MONAI Label would score its 3D predictions over the wrong axes (docs/monailabel.md)."""
    log = _refusal_log(venv, app, {"models": MODEL, "epistemic_model": MODEL}, "epistemic", timings)
    assert "MONAI Label's epistemic scoring (--conf epistemic_model) is not supported by the GRCSF bundle" in log


def test_two_versions_in_one_server_are_refused(
    venv: Path, app: dict[str, Path], demo: dict[str, Any], timings: dict[str, float]
) -> None:
    """A second version of the bundle in the same server would run the first one's ``bundle`` package
    (MONAI Label unloads only ``scripts``): the server refuses, naming both folders."""
    second = export.export_bundle(app["app"] / "model", name=f"{MODEL}_v2", models_dir=demo["models"])
    init = second / "bundle" / "__init__.py"
    init.write_text(init.read_text() + '\n__version__ = "9.9.9"  # another version of the code\n')
    log = _refusal_log(venv, app, {"models": f"{MODEL},{MODEL}_v2"}, "two_versions", timings)
    first_code = (app["bundle"] / "bundle").resolve()
    assert f"{(second / 'bundle').resolve()}: the bundle's code differs" in log, log[-3000:]
    assert f"already runs, {first_code}" in log
