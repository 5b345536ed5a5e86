"""configs/inference.json end to end on tiny data: ids, geometry, folders, overwriting, bad inputs.

Everything runs at test scale on the CPU: 4 mm synthetic ATLAS look-alikes cropped to 8 axial
slices, the "small" GRCSF at 64 x 64 with RCU patches 4/4/8, a tiny MAE with random weights and a
freshly initialised network checkpoint, all under pytest's tmp_path (nothing is written into the
repository). The helpers here are shared with tests/engines/test_evaluation.py.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle.engines.inference import SegmentationRunner
from bundle.networks import MODEL_SETTING_DEFAULTS
from bundle.networks.checkpoint import load_network_weights
from bundle.networks.grcsf import grcsf_preset
from bundle.transforms.io import SavePredictiond
from bundle.utils.errors import CheckpointError, FolderRunError, InferenceError, describe_error, user_error
from monai.bundle import ConfigParser
from monai.inferers import SliceInferer
from monai.transforms import Invertd

from tests.helpers import CONFIGS, SMALL, flip_to_lps, make_parser, run_config


def test_inference_config_ids(tmp_path: Path, small_bundle_root: Path, small_dataset: list[dict]) -> None:
    raw = ConfigParser.load_config_file(str(CONFIGS / "inference.json"))
    train = ConfigParser.load_config_file(str(CONFIGS / "train.json"))
    # inference takes the model's settings from its weights (null: not given here); a training with
    # the default configs records the paper's setting, which is also the fallback without weights
    for name, default in MODEL_SETTING_DEFAULTS.items():
        assert raw[name] is None and train[name] == default, name
    assert MODEL_SETTING_DEFAULTS["network_preset"] == "paper" and MODEL_SETTING_DEFAULTS["input_size"] == [224, 224]
    # K = 2 stratified masks: as good as the paper's K = 5 random ones, 2.5x cheaper (docs/speed.md)
    assert MODEL_SETTING_DEFAULTS["mask_ratios"] == [0.5, 0.75] and MODEL_SETTING_DEFAULTS["num_passes"] == 2
    assert MODEL_SETTING_DEFAULTS["masking"] == "stratified" and MODEL_SETTING_DEFAULTS["slice_axis"] == -1

    out = tmp_path / "evaluator_out"
    parser = make_parser(small_bundle_root, input_dir=small_dataset[0]["image"], output_dir=str(out))
    assert parser.get_parsed_content("model_settings")["network_preset"] == "small"  # from the weights
    for name in (
        "input_files",
        "network_def",
        "network",
        "residual_map_transform",
        "preprocessing",
        "inferer",
        "postprocessing",
        "dataset",
        "dataloader",
        "evaluator",
        "checkpointloader",
        "runner",
    ):
        assert parser.get_parsed_content(name) is not None, name
    assert parser.get_parsed_content("ckpt_path") == f"{small_bundle_root}/models/model.pt"
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, SliceInferer) and inferer.spatial_dim == 2  # axial = last axis after RAS
    post = parser.get_parsed_content("postprocessing").transforms
    assert any(isinstance(t, Invertd) for t in post)
    assert [t.keys for t in post if isinstance(t, SavePredictiond)] == [("pred",)]  # no probability by default

    # what MONAI Label does: the ids on a single {"image": path} dict
    item = parser.get_parsed_content("preprocessing")({"image": small_dataset[0]["image"]})
    shape = nib.load(small_dataset[0]["image"]).shape
    assert tuple(item["image"].shape) == (3, *shape)  # image + one residual map per mask ratio

    # the model-zoo path: checkpoint loader, then the MONAI SupervisedEvaluator over the datalist
    parser.get_parsed_content("checkpointloader")()
    parser.get_parsed_content("evaluator").run()
    (saved,) = glob.glob(str(out / "*_seg.nii.gz"))
    assert nib.load(saved).shape == shape


def test_single_file_keeps_geometry_and_orientation(
    tmp_path: Path, small_bundle_root: Path, small_dataset: list[dict]
) -> None:
    ras = tmp_path / "ras" / "case.nii.gz"  # same file name: the residual-map masks are seeded by it
    ras.parent.mkdir()
    ras.write_bytes(Path(small_dataset[0]["image"]).read_bytes())
    lps = tmp_path / "lps" / "case.nii.gz"
    flip_to_lps(str(ras), lps)

    masks, probs = {}, {}
    for name, path in (("ras", ras), ("lps", lps)):
        out = tmp_path / f"out_{name}"
        run_config(small_bundle_root, input_dir=str(path), output_dir=str(out), save_probabilities=True)
        src, mask_img, prob_img = (
            nib.load(path),
            nib.load(out / "case_seg.nii.gz"),
            nib.load(out / "case_prob.nii.gz"),
        )
        for img in (mask_img, prob_img):
            assert img.shape == src.shape
            np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
        assert mask_img.get_data_dtype() == np.uint8 and prob_img.get_data_dtype() == np.float32
        masks[name], probs[name] = np.asarray(mask_img.dataobj), np.asarray(prob_img.dataobj)
        assert set(np.unique(masks[name])) == {0, 1}
        assert probs[name].min() >= 0.0 and probs[name].max() <= 1.0
        np.testing.assert_array_equal(masks[name], (probs[name] >= 0.5).astype(np.uint8))
    # the LPS input gets the RAS prediction, flipped back into its own voxel order
    assert not np.array_equal(masks["ras"], masks["ras"][::-1, ::-1]), "a symmetric mask would prove nothing"
    np.testing.assert_array_equal(masks["lps"], masks["ras"][::-1, ::-1])
    np.testing.assert_allclose(probs["lps"], probs["ras"][::-1, ::-1], atol=1e-5)

    # a second run does not replace the mask (MONAI wraps the error of the config's "run" expression)
    with pytest.raises(RuntimeError) as err:
        run_config(small_bundle_root, input_dir=str(ras), output_dir=str(tmp_path / "out_ras"))
    assert isinstance(user_error(err.value), FileExistsError)
    assert "case_seg.nii.gz exists; set --overwrite true" in describe_error(err.value)


def test_folder_run_reports_bad_files_and_skips_existing(
    tmp_path: Path, small_bundle_root: Path, small_dataset: list[dict]
) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for rec in small_dataset[:2]:
        (folder / Path(rec["image"]).name).write_bytes(Path(rec["image"]).read_bytes())
    broken = folder / "broken_T1w.nii.gz"
    broken.write_bytes(b"not a nifti file")
    (folder / "notes.txt").write_text("not an image: ignored")

    def reports() -> list[dict]:
        return [json.loads(Path(p).read_text()) for p in sorted(glob.glob(str(out / "inference_report_*.json")))]

    # the run goes on past the broken file, writes its report, then fails naming the count
    with pytest.raises(RuntimeError) as err:
        run_config(small_bundle_root, input_dir=str(folder), output_dir=str(out))
    assert isinstance(user_error(err.value), FolderRunError) and "1 of 3 inputs failed" in describe_error(err.value)
    (first,) = reports()
    status = {Path(e["image"]).name: e for e in first["files"]}
    assert (first["n_ok"], first["n_error"], first["n_skipped"]) == (2, 1, 0) and len(status) == 3
    assert str(broken) in status[broken.name]["error"] and "cannot read" in status[broken.name]["error"]
    written = sorted(glob.glob(str(out / "*_seg.nii.gz")))
    assert [Path(p).name for p in written] == sorted(
        Path(r["image"]).name.replace(".nii.gz", "_seg.nii.gz") for r in small_dataset[:2]
    )
    mtimes = [os.stat(p).st_mtime_ns for p in written]

    # again: the existing masks are skipped (reported), not overwritten; the broken file fails again
    with pytest.raises(RuntimeError):
        run_config(small_bundle_root, input_dir=str(folder), output_dir=str(out))
    second = reports()[-1]
    assert (second["n_ok"], second["n_error"], second["n_skipped"]) == (0, 1, 2)
    assert all("exists; set --overwrite true" in e["error"] for e in second["files"] if e["status"] == "skipped")
    assert [os.stat(p).st_mtime_ns for p in written] == mtimes
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")], "temporary files left behind"

    # with the flag they are replaced
    broken.unlink()
    run_config(small_bundle_root, input_dir=str(folder), output_dir=str(out), overwrite=True)
    third = reports()[-1]
    assert (third["n_ok"], third["n_error"], third["n_skipped"]) == (2, 0, 0)
    assert len(reports()) == 3  # one report per run, none replaced


def _bad_inputs(folder: Path, good: str) -> dict[str, tuple[Path, str]]:
    """Bad image files next to each other: name -> (path, expected words of the error)."""
    folder.mkdir()
    img = nib.load(good)
    data = np.asarray(img.dataobj).astype(np.float32)
    cases = {
        "unreadable": (folder / "unreadable.nii.gz", "cannot read"),
        "nan": (folder / "nan.nii.gz", "NaN"),
        "constant": (folder / "constant.nii.gz", "constant"),
        "4d": (folder / "fourd.nii.gz", "4D"),
        "2d": (folder / "flat.nii.gz", "3D volume is expected"),
    }
    cases["unreadable"][0].write_bytes(b"\x00garbage")
    nan = data.copy()
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, img.affine), str(cases["nan"][0]))
    nib.save(nib.Nifti1Image(np.full_like(data, 7.0), img.affine), str(cases["constant"][0]))
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), img.affine), str(cases["4d"][0]))
    nib.save(nib.Nifti1Image(data[:, :, 0], img.affine), str(cases["2d"][0]))
    return cases


def test_bad_inputs_name_the_file(tmp_path: Path, small_bundle_root: Path, small_dataset: list[dict]) -> None:
    cases = _bad_inputs(tmp_path / "bad", small_dataset[0]["image"])
    parser = make_parser(small_bundle_root, output_dir=str(tmp_path / "out"))
    parser.get_parsed_content("checkpointloader")()
    runner: SegmentationRunner = parser.get_parsed_content("runner")

    # one file: raised, the message names the file and the problem
    for name, (path, words) in cases.items():
        with pytest.raises(InferenceError) as err:
            runner.run(str(path))
        assert str(path) in str(err.value) and words in str(err.value), (name, str(err.value))
    missing = tmp_path / "missing.nii.gz"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        runner.run(str(missing))

    # a folder or list: every file reported with its own message, the run goes on, then fails
    with pytest.raises(FolderRunError, match=f"{len(cases) + 1} of {len(cases) + 1} inputs failed"):
        runner.run([str(p) for p, _ in cases.values()] + [str(missing)])
    (report_path,) = (tmp_path / "out").glob("inference_report_*.json")
    report = json.loads(report_path.read_text())
    assert report["n_error"] == len(cases) + 1 and report["n_ok"] == 0
    for entry, (path, words) in zip(report["files"], [*cases.values(), (missing, "does not exist")], strict=True):
        assert entry["status"] == "error" and str(path) in entry["error"] and words in entry["error"], entry
    assert report["report_path"] == str(report_path)
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_checkpoint_of_another_network(tmp_path: Path, small_bundle_root: Path) -> None:
    other = tmp_path / "other.pt"
    # the paper's defaults of rcu_patch_sizes would not even fit the small network's 64 px input;
    # a U-Net backbone has different keys, a third mask ratio a different RCU input
    torch.save(grcsf_preset("small", backbone="unet", in_channels=4, rcu_patch_sizes=[4, 4, 8]).state_dict(), other)
    # a bare state dict (bundle <= 0.3) is refused until its version is stated: 0.2 and 0.3 weights
    # have the same tensors but compute different functions
    with pytest.raises(RuntimeError) as err:
        make_parser(small_bundle_root, ckpt_path=str(other)).get_parsed_content("network_def")
    assert isinstance(user_error(err.value), CheckpointError)
    assert f"{other}: holds weights of bundle 0.3 or older" in str(user_error(err.value))
    # stated, it loads with the settings given, and does not fit them
    legacy = {"ckpt_path": str(other), "legacy_weights_version": "0.3", **SMALL}
    with pytest.raises(CheckpointError) as err:
        make_parser(small_bundle_root, **legacy).get_parsed_content("checkpointloader")()
    message = str(err.value)
    for words in (
        f"{other}: its weights were saved for a different network",
        "missing keys",
        "unexpected keys",
        "check network_preset and the rcu settings",
    ):
        assert words in message, message

    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match=f"{missing}: the weights file does not exist"):
        make_parser(small_bundle_root, ckpt_path=str(missing)).get_parsed_content("checkpointloader")()

    # MONAI CheckpointSaver files of several objects keep the network under "model", DDP adds "module."
    network = make_parser(small_bundle_root).get_parsed_content("network_def")
    state = {f"module.{k}": v + 1.0 if v.is_floating_point() else v for k, v in network.state_dict().items()}
    torch.save({"model": state, "epoch": 3}, tmp_path / "full.pt")
    load_network_weights(network, tmp_path / "full.pt")
    key = next(k for k, v in network.state_dict().items() if v.is_floating_point())
    torch.testing.assert_close(network.state_dict()[key], state[f"module.{key}"])


def test_outputs_get_the_usual_file_permissions(tmp_path: Path) -> None:
    # atomic writes go through a private temp file; the result must not stay owner-only
    import os
    import stat

    from bundle.utils.io import write_json

    umask = os.umask(0o022)
    try:
        path = write_json({"a": 1}, tmp_path / "report.json")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
