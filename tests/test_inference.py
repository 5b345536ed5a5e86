"""configs/inference.json end to end on tiny data: ids, geometry, folders, overwriting, bad inputs.

Everything runs at test scale on the CPU: 4 mm synthetic ATLAS look-alikes cropped to 8 axial
slices, the "small" GRCSF at 64 x 64 with RCU patches 4/4/8, a tiny MAE with random weights and a
freshly initialised network checkpoint, all under pytest's tmp_path (nothing is written into the
repository). The helpers here are shared with tests/test_evaluation.py.
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
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run
from monai.inferers import SliceInferer
from monai.transforms import Invertd

from bundle.data import generate_atlas_like_dataset
from bundle.engines import (
    InferenceError,
    SavePredictiond,
    SegmentationRunner,
    describe_error,
    load_network_weights,
)
from bundle.networks import grcsf_preset
from bundle.networks.mae import mae_preset, save_mae

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
NUM_SLICES = 8  # axial slices kept per test volume: lesions in view, little CPU time

# test scale: small network at 64 x 64 (decoder layers 16/32/64 px, divisible by 4/4/8), tiny MAE
SMALL = {
    "network_preset": "small",
    "mae_preset": "tiny",
    "input_size": [64, 64],
    "rcu_patch_sizes": [4, 4, 8],
    "num_passes": 1,
}


def make_dataset(root: Path, num_subjects: int = 3) -> list[dict]:
    """Synthetic 4 mm subjects, cropped to the ``NUM_SLICES`` axial slices around their lesions.

    Returns records ``{"subject", "cohort", "image", "label", "source_dir"}``; the generated data set
    (uncropped) stays in ``root / "atlas"`` (``source_dir``).
    """
    source = root / "atlas"
    generated = generate_atlas_like_dataset(
        source,
        num_subjects=num_subjects,
        num_cohorts=2,
        lesion_free_fraction=0.0,
        resolution_mm=4,
        seed=0,
        progress=False,
    )
    out_dir = root / "cropped"
    out_dir.mkdir(parents=True)
    records = []
    for rec in generated:
        image, label = nib.load(rec["image"]), nib.load(rec["label"])
        lab = np.asarray(label.dataobj)
        centre = int(np.argmax((lab > 0).sum(axis=(0, 1))))
        z0 = int(np.clip(centre - NUM_SLICES // 2, 0, lab.shape[2] - NUM_SLICES))
        affine = image.affine.copy()
        affine[:3, 3] += affine[:3, 2] * z0  # the crop starts z0 voxels further along the third axis
        paths = {}
        for key, img, dtype in (("image", image, np.float32), ("label", label, np.uint8)):
            data = np.asarray(img.dataobj)[:, :, z0 : z0 + NUM_SLICES].astype(dtype)
            paths[key] = str(out_dir / f"{rec['subject']}_{key}.nii.gz")
            nib.save(nib.Nifti1Image(data, affine), paths[key])
        records.append(
            {"subject": rec["subject"], "cohort": rec["cohort"], **paths, "source_dir": str(source)}
        )
    return records


def make_bundle_root(root: Path) -> Path:
    """A bundle root with ``models/mae.pt`` (tiny random MAE) and ``models/model.pt`` (fresh network)."""
    models = root / "models"
    models.mkdir(parents=True)
    torch.manual_seed(0)
    save_mae(mae_preset("tiny"), models / "mae.pt")
    network = make_parser(root).get_parsed_content("network_def")
    torch.save(network.state_dict(), models / "model.pt")
    return root


def make_parser(
    bundle_root: Path, configs: tuple[str, ...] = ("inference.json",), **overrides
) -> ConfigParser:
    """The configs merged in order, at test scale, with ``bundle_root`` and ``overrides`` applied."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update({"bundle_root": str(bundle_root), **SMALL, **overrides})
    return parser


def run_config(
    bundle_root: Path, configs: tuple[str, ...] = ("inference.json",), run_id: str = "run", **overrides
):
    """``python -m monai.bundle run <run_id> --config_file <configs> ...`` in-process (same code path)."""
    bundle_run(
        run_id=run_id,
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        bundle_root=str(bundle_root),
        **SMALL,
        **overrides,
    )


def flip_to_lps(src: str, dst: Path) -> None:
    """Write ``src`` with voxel axes 0 and 1 reversed and an affine compensating it (same world image)."""
    img = nib.load(src)
    data = np.asarray(img.dataobj)[::-1, ::-1].copy()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, img.affine @ flip), str(dst))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[dict]:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> Path:
    return make_bundle_root(tmp_path_factory.mktemp("bundle"))


def test_inference_config_ids(tmp_path: Path, bundle_root: Path, data: list[dict]) -> None:
    raw = ConfigParser.load_config_file(str(CONFIGS / "inference.json"))
    # the defaults are the paper's setting
    assert (
        raw["network_preset"] == "paper" and raw["input_size"] == [224, 224] and raw["mae_preset"] == "base"
    )
    # K = 2 stratified masks: as good as the paper's K = 5 random ones, 2.5x cheaper (docs/speed.md)
    assert raw["mask_ratios"] == [0.5, 0.75] and raw["num_passes"] == 2 and raw["slice_axis"] == -1

    out = tmp_path / "evaluator_out"
    parser = make_parser(bundle_root, input_dir=data[0]["image"], output_dir=str(out))
    for name in (
        "datalist",
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
    assert parser.get_parsed_content("ckpt_path") == f"{bundle_root}/models/model.pt"
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, SliceInferer) and inferer.spatial_dim == 2  # axial = last axis after RAS
    post = parser.get_parsed_content("postprocessing").transforms
    assert any(isinstance(t, Invertd) for t in post)
    assert [t.keys for t in post if isinstance(t, SavePredictiond)] == [
        ("pred",)
    ]  # no probability by default

    # what MONAI Label does: the ids on a single {"image": path} dict
    item = parser.get_parsed_content("preprocessing")({"image": data[0]["image"]})
    shape = nib.load(data[0]["image"]).shape
    assert tuple(item["image"].shape) == (3, *shape)  # image + one residual map per mask ratio

    # the model-zoo path: checkpoint loader, then the MONAI SupervisedEvaluator over the datalist
    parser.get_parsed_content("checkpointloader")()
    parser.get_parsed_content("evaluator").run()
    (saved,) = glob.glob(str(out / "*_seg.nii.gz"))
    assert nib.load(saved).shape == shape


def test_single_file_keeps_geometry_and_orientation(
    tmp_path: Path, bundle_root: Path, data: list[dict]
) -> None:
    ras = tmp_path / "ras" / "case.nii.gz"  # same file name: the residual-map masks are seeded by it
    ras.parent.mkdir()
    ras.write_bytes(Path(data[0]["image"]).read_bytes())
    lps = tmp_path / "lps" / "case.nii.gz"
    flip_to_lps(str(ras), lps)

    masks, probs = {}, {}
    for name, path in (("ras", ras), ("lps", lps)):
        out = tmp_path / f"out_{name}"
        run_config(bundle_root, input_dir=str(path), output_dir=str(out), save_probabilities=True)
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
        run_config(bundle_root, input_dir=str(ras), output_dir=str(tmp_path / "out_ras"))
    assert describe_error(err.value).startswith("FileExistsError")
    assert "case_seg.nii.gz exists; set overwrite=true" in describe_error(err.value)


def test_folder_run_reports_bad_files_and_skips_existing(
    tmp_path: Path, bundle_root: Path, data: list[dict]
) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for rec in data[:2]:
        (folder / Path(rec["image"]).name).write_bytes(Path(rec["image"]).read_bytes())
    broken = folder / "broken_T1w.nii.gz"
    broken.write_bytes(b"not a nifti file")
    (folder / "notes.txt").write_text("not an image: ignored")

    def reports() -> list[dict]:
        return [
            json.loads(Path(p).read_text()) for p in sorted(glob.glob(str(out / "inference_report_*.json")))
        ]

    run_config(bundle_root, input_dir=str(folder), output_dir=str(out))
    (first,) = reports()
    status = {Path(e["image"]).name: e for e in first["files"]}
    assert (first["n_ok"], first["n_error"], first["n_skipped"]) == (2, 1, 0) and len(status) == 3
    assert str(broken) in status[broken.name]["error"] and "cannot read" in status[broken.name]["error"]
    written = sorted(glob.glob(str(out / "*_seg.nii.gz")))
    assert [Path(p).name for p in written] == sorted(
        Path(r["image"]).name.replace(".nii.gz", "_seg.nii.gz") for r in data[:2]
    )
    mtimes = [os.stat(p).st_mtime_ns for p in written]

    # again: the existing masks are skipped (reported), not overwritten; the broken file fails again
    run_config(bundle_root, input_dir=str(folder), output_dir=str(out))
    second = reports()[-1]
    assert (second["n_ok"], second["n_error"], second["n_skipped"]) == (0, 1, 2)
    assert all(
        "exists; set overwrite=true" in e["error"] for e in second["files"] if e["status"] == "skipped"
    )
    assert [os.stat(p).st_mtime_ns for p in written] == mtimes
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")], "temporary files left behind"

    # with the flag they are replaced
    run_config(bundle_root, input_dir=str(folder), output_dir=str(out), overwrite=True)
    third = reports()[-1]
    assert (third["n_ok"], third["n_error"], third["n_skipped"]) == (2, 1, 0)
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


def test_bad_inputs_name_the_file(tmp_path: Path, bundle_root: Path, data: list[dict]) -> None:
    cases = _bad_inputs(tmp_path / "bad", data[0]["image"])
    parser = make_parser(bundle_root, output_dir=str(tmp_path / "out"))
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

    # a folder or list: every file reported with its own message, the run goes on
    report = runner.run([str(p) for p, _ in cases.values()] + [str(missing)])
    assert report["n_error"] == len(cases) + 1 and report["n_ok"] == 0
    for entry, (path, words) in zip(
        report["files"], [*cases.values(), (missing, "does not exist")], strict=True
    ):
        assert entry["status"] == "error" and str(path) in entry["error"] and words in entry["error"], entry
    assert Path(report["report_path"]).is_file()
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_checkpoint_of_another_network(tmp_path: Path, bundle_root: Path) -> None:
    other = tmp_path / "other.pt"
    # the paper's defaults of rcu_patch_sizes would not even fit the small network's 64 px input;
    # a U-Net backbone has different keys, a third mask ratio a different RCU input
    torch.save(
        grcsf_preset("small", backbone="unet", in_channels=4, rcu_patch_sizes=[4, 4, 8]).state_dict(), other
    )
    with pytest.raises(ValueError) as err:
        make_parser(bundle_root, ckpt_path=str(other)).get_parsed_content("checkpointloader")()
    message = str(err.value)
    for words in (
        f"checkpoint {other} was saved for a different network",
        "missing keys",
        "unexpected keys",
        "check network_preset / rcu settings",
    ):
        assert words in message, message

    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match=f"checkpoint {missing} does not exist"):
        make_parser(bundle_root, ckpt_path=str(missing)).get_parsed_content("checkpointloader")()

    # MONAI CheckpointSaver files of several objects keep the network under "model", DDP adds "module."
    network = make_parser(bundle_root).get_parsed_content("network_def")
    state = {f"module.{k}": v + 1.0 if v.is_floating_point() else v for k, v in network.state_dict().items()}
    torch.save({"model": state, "epoch": 3}, tmp_path / "full.pt")
    load_network_weights(network, tmp_path / "full.pt")
    key = next(k for k, v in network.state_dict().items() if v.is_floating_point())
    torch.testing.assert_close(network.state_dict()[key], state[f"module.{key}"])


def test_outputs_get_the_usual_file_permissions(tmp_path: Path) -> None:
    # atomic writes go through a private temp file; the result must not stay owner-only
    import os
    import stat

    from bundle.engines.inference import write_json

    umask = os.umask(0o022)
    try:
        path = write_json({"a": 1}, tmp_path / "report.json")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
