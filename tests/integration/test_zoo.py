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
"""MONAI model-zoo readiness, checked with MONAI's own bundle tools.

- configs/metadata.json: MONAI's ``verify_metadata`` (what the zoo's ci/verify_bundle.py runs)
  against a schema written from the bundle specification (tests/integration/metadata_schema.json;
  MONAI's own schema files are online only), the fields and types checked one by one, and
  ``network_data_format`` against the network with ``monai.bundle.verify_net_in_out``;
- ``python -m monai.bundle ckpt_export`` gives TorchScript with the PyTorch weights' outputs;
- every config of configs/ (alone or merged as documented) parses and every id instantiates;
- ``scripts/export_bundle.py`` writes the zoo layout and a zip that ``monai.bundle download``
  unpacks; the unpacked bundle loads with ``monai.bundle load`` (weights and TorchScript), passes
  ``monai.bundle download_large_files`` (hash check) and runs inference from its own folder;
- large_files.yml, the model card sections and the licence files.

Scale: the "small" network and a random tiny MAE (the tools are under test, not the weights),
4 mm synthetic subjects; everything is written under pytest's tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle.data.layouts import DATASET_LAYOUTS
from bundle.data.synthetic.atlas import generate_atlas_like_dataset
from bundle.networks import MODEL_SETTING_DEFAULTS
from bundle.networks.mae import mae_preset, save_mae
from bundle.tools import export_bundle as export_bundle
from monai.bundle import ConfigParser

from tests.helpers import SMALL, make_dataset, save_model

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
META = CONFIGS / "metadata.json"
BUNDLE_NAME = "grcsf_lesion_segmentation"


def _metadata() -> dict:
    return json.loads(META.read_text())


def _run(cmd: list[str], cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command; a failure shows its output (the test names the command)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _small_network(**overrides: Any) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({**SMALL, **overrides})
    return parser.get_parsed_content("network_def")


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ with model.pt (random small network), mae.pt (random tiny MAE) and model.ts (ckpt_export CLI)."""
    models = tmp_path_factory.mktemp("zoo_weights") / "models"
    models.mkdir()
    torch.manual_seed(0)
    save_mae(mae_preset("tiny"), models / "mae.pt")
    save_model(_small_network(), models / "model.pt", mae_path=models / "mae.pt")
    # the network of the weights' own settings; the weights under "model"
    _run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "ckpt_export",
            "network_def",
            "--filepath",
            str(models / "model.ts"),
            "--ckpt_file",
            str(models / "model.pt"),
            "--meta_file",
            str(META),
            "--config_file",
            str(CONFIGS / "inference.json"),
            "--key_in_ckpt",
            "model",
            "--ckpt_dir",
            str(models),
        ]
    )
    return models


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> dict[str, Path]:
    """The bundle exported (zoo layout + zip) with the test-scale settings merged into inference.json."""
    root = tmp_path_factory.mktemp("zoo_export")
    small = root / "small.json"
    small.write_text(json.dumps(SMALL))
    folder = export_bundle.export_bundle(
        root / "dist", models_dir=weights, merge=[f"inference.json={small}"], make_zip=True
    )
    return {"folder": folder, "zip": root / "dist" / f"{BUNDLE_NAME}.zip", "root": root}


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """3 subjects at 4 mm in 3 cohorts, a tiny random MAE at 32 px and a shared residual-map cache."""
    root = tmp_path_factory.mktemp("zoo_configs")
    data = root / "atlas_4mm"
    records = generate_atlas_like_dataset(
        data, num_subjects=3, num_cohorts=3, lesion_free_fraction=0.0, resolution_mm=4, seed=0, progress=False
    )
    torch.manual_seed(0)
    save_mae(mae_preset("tiny", img_size=32, patch_size=8), root / "mae.pt")
    return {
        "root": str(root),
        "dataset_dir": str(data),
        "mae_path": str(root / "mae.pt"),
        "cache_dir": str(root / "cache"),
        "image": records[0]["image"],
    }


# ----------------------------------------------------------------------------------- metadata

_SHAPE_ITEM = re.compile(r"^(\d+|\*|\d+\*n|\d+\*\*p)$")


def test_metadata_fields_and_types() -> None:
    """The bundle specification's metadata fields with their types (MONAI's schema is online only)."""
    meta = _metadata()
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]), meta["version"]
    assert meta["version"] in meta["changelog"] and all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in meta["changelog"].items()
    )
    # the newest changelog entry is the current version
    newest = max(meta["changelog"], key=lambda v: tuple(int(x) for x in v.split(".")))
    assert newest == meta["version"]
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", meta[key]), (key, meta[key])
    packages = meta["required_packages_version"]
    assert isinstance(packages, dict) and {"nibabel", "itk", "einops", "pytorch-ignite", "scipy"} <= set(packages)
    for key in (
        "name",
        "task",
        "description",
        "authors",
        "copyright",
        "data_source",
        "data_type",
        "image_classes",
        "label_classes",
        "pred_classes",
        "intended_use",
    ):
        assert isinstance(meta[key], str) and meta[key].strip(), key
    assert isinstance(meta["eval_metrics"], dict) and meta["eval_metrics"]
    assert isinstance(meta["references"], list) and all(isinstance(r, str) and r for r in meta["references"])

    fmt = meta["network_data_format"]
    for group in ("inputs", "outputs"):
        assert fmt[group], group
        for name, desc in fmt[group].items():
            where = f"network_data_format.{group}.{name}"
            assert desc["type"] == "image" and isinstance(desc["format"], str), where
            assert isinstance(desc["num_channels"], int) and desc["num_channels"] > 0, where
            assert all(_SHAPE_ITEM.match(str(s)) for s in desc["spatial_shape"]), where
            assert desc["dtype"] in ("float16", "float32", "float64", "uint8", "int64"), where
            assert isinstance(desc["value_range"], list) and isinstance(desc["is_patch_data"], bool), where
            assert sorted(desc["channel_def"], key=int) == [str(i) for i in range(desc["num_channels"])], where


SCHEMA = Path(__file__).with_name("metadata_schema.json")


def test_verify_metadata_against_the_specification(tmp_path: Path) -> None:
    """MONAI's ``verify_metadata`` (what the zoo's ci/verify_bundle.py runs) with a schema written from
    the bundle specification (tests/integration/metadata_schema.json; MONAI's own schema is online only):
    it is placed where verify_metadata would download it, so nothing is fetched."""
    from monai.bundle import verify_metadata

    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)
    verify_metadata(meta_file=str(META), filepath=str(schema))
    # the check has teeth: a metadata without a required field, or a tensor without its dtype, fails
    for broken in ("required_packages_version", "network_data_format#inputs#image#dtype"):
        meta = _metadata()
        node, *path, last = [meta, *broken.split("#")]
        for key in path:
            node = node[key]
        del node[last]
        bad = tmp_path / "metadata.json"
        bad.write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=f"'{last}' is a required property"):  # MONAI's one-line report
            verify_metadata(meta_file=str(bad), filepath=str(schema))


def test_metadata_describes_the_inference_config() -> None:
    """Channels of the metadata = image + one residual map per mask ratio of the shipped settings
    (those a training with the default configs records, and inference's fallback without weights)."""
    meta = _metadata()
    config = ConfigParser.load_config_file(str(CONFIGS / "inference.json"))
    settings = MODEL_SETTING_DEFAULTS
    image = meta["network_data_format"]["inputs"]["image"]
    ratios = settings["mask_ratios"]
    assert image["num_channels"] == 1 + len(ratios)
    assert image["channel_def"]["0"] == "image"
    for i, ratio in enumerate(ratios, start=1):
        assert f"{ratio:.2f}" in image["channel_def"][str(i)], (ratio, image["channel_def"])
    # MONAI Label names its label from the output channel_def and takes the model's
    # dimension from the length of the input spatial_shape: a 2D network
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "lesion"}
    assert len(image["spatial_shape"]) == 2
    # the 2D shape rule "32*n" fits the default input size and RCU patch sizes
    for size in settings["input_size"]:
        assert size % 32 == 0
    assert config["displayable_configs"] == {"model_filename": ["model.pt"]}


def test_verify_net_in_out_paper_and_small() -> None:
    from monai.bundle import verify_net_in_out

    # the paper's network (the function behind the CLI); n = 1 in "32*n": 32 x 32 keeps it fast
    verify_net_in_out(
        net_id="network_def", meta_file=str(META), config_file=str(CONFIGS / "inference.json"), device="cpu", n=1
    )
    # the demo scale over the same metadata, at its input size 96 x 96
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(META),
        config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "demo.json")],
        device="cpu",
        n=3,
    )
    # the check has teeth: wrong channel counts fail
    with pytest.raises(Exception, match="channel|size|shape"):
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(META),
            config_file=str(CONFIGS / "inference.json"),
            device="cpu",
            n=1,
            **{"network_preset": "small", "_meta_#network_data_format#inputs#image#num_channels": 2},
        )
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(META),
            config_file=str(CONFIGS / "inference.json"),
            device="cpu",
            n=1,
            **{"network_preset": "small", "_meta_#network_data_format#outputs#pred#num_channels": 2},
        )


# ------------------------------------------------------------------------------ TorchScript


def test_ckpt_export_torchscript_matches_weights(weights: Path) -> None:
    from monai.data import load_net_with_metadata

    scripted, meta, _ = load_net_with_metadata(str(weights / "model.ts"), map_location="cpu")
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert meta["version"] == _metadata()["version"]  # ckpt_export embeds configs/metadata.json
    network = _small_network()
    network.load_state_dict(torch.load(weights / "model.pt", weights_only=True)["model"])
    network.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for shape in ((1, 3, 64, 64), (2, 3, 96, 128)):
            x = torch.rand(shape)
            expected, actual = network(x), scripted(x)
            assert actual.shape == (shape[0], 1, *shape[2:])
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert export_bundle.check_weight_file(weights / "model.ts").startswith("TorchScript, bundle version")


# --------------------------------------------------------------------- configs instantiate

# entry points: they *run* the workflows (covered by test_training / test_inference / test_evaluation)
_ENTRY_POINTS = ("initialize", "run", "training", "evaluating", "finalize")
# components that make files when built: the demo data set (its own tests cover it)
_MAKES_FILES = ("demo_dataset",)

CONFIG_SETS = {
    "train+demo": ["train.json", "demo.json"],
    "train+demo+multi_gpu": ["train.json", "demo.json", "multi_gpu_train.json"],
    "train_mae+demo": ["train_mae.json", "demo.json"],
    "inference+demo": ["inference.json", "demo.json"],
    "inference+demo+evaluate": ["inference.json", "demo.json", "evaluate.json"],
}


def test_config_sets_cover_every_config() -> None:
    used = {name for names in CONFIG_SETS.values() for name in names}
    present = {p.name for p in CONFIGS.glob("*.json")} - {"metadata.json", *DATASET_CONFIGS}
    assert present == used, f"configs not instantiated by test_every_id_instantiates: {present - used}"


def _toy_overrides(names: list[str], toy: dict[str, str], out: Path) -> dict[str, Any]:
    common = {"bundle_root": str(out), "dataset_dir": toy["dataset_dir"], "num_workers": 0}
    if names[0] == "train_mae.json":
        return {**common, "mae_img_size": 32, "mae_preset": "tiny", "volume_cache": None, "progress": False}
    scale = {
        "mae_path": toy["mae_path"],
        "input_size": [64, 64],
        "rcu_patch_sizes": [4, 4, 8],
        "network_options": {"features": [4, 8, 8, 8, 8, 4]},
        "num_passes": 1,
        "sw_batch_size": 48,
    }
    if names[0] == "train.json":
        return {
            **common,
            **scale,
            "cache_dir": toy["cache_dir"],
            "max_slices_per_epoch": 8,
            "batch_size": 4,
            "progress": False,
        }
    return {**common, **scale, "input_dir": toy["image"], "output_dir": str(out / "predictions")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def instantiate_every_id(names: list[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """Parse ``names`` (merged) with ``overrides`` and instantiate every id but the entry points.

    Returns ``{"num_ids", "failures": {id: error}, "checks": {what: bool}}`` (JSON-friendly, so that
    the distributed set can run it in a process of its own).
    """
    parser = ConfigParser()
    parser.read_meta(str(META))
    parser.read_config([str(CONFIGS / n) for n in names])
    parser.update(overrides)
    parser.parse(True)
    skipped = (*_ENTRY_POINTS, *_MAKES_FILES)
    ids = [i for i in parser.ref_resolver.items if i and i.split("::")[0] not in skipped]
    distributed = "multi_gpu_train.json" in names
    if distributed:  # one gloo process, as torchrun --nproc_per_node=1 on a CPU machine
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
        )
    try:
        failures = {}
        for config_id in ids:
            try:
                parser.get_parsed_content(config_id)
            except Exception as e:  # noqa: BLE001 - collect them all: one message lists every broken id
                failures[config_id] = f"{type(e).__name__}: {str(e)[-300:]}"
        checks: dict[str, bool] = {}
        if not failures:  # spot checks that the instantiated objects are the real ones
            top = parser.get_parsed_content
            if names[0] == "inference.json":
                checks["network is a module"] = isinstance(top("network_def"), torch.nn.Module)
                checks["SliceInferer"] = type(top("inferer")).__name__ == "SliceInferer"
                checks["displayable_configs"] = top("displayable_configs") == {"model_filename": ["model.pt"]}
            elif names[0] == "train.json":
                checks["slices"] = len(top("train#dataset")) > 0
                checks["SupervisedTrainer"] = type(top("train#trainer")).__name__ == "SupervisedTrainer"
                if distributed:
                    checks["DDP"] = isinstance(top("network"), torch.nn.parallel.DistributedDataParallel)
            else:
                checks["MAE"] = type(top("network")).__name__ == "MaskedAutoencoderViT"
                checks["slices"] = len(top("train#dataset")) > 0
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
    return {"num_ids": len(ids), "failures": failures, "checks": checks}


@pytest.mark.parametrize("config_set", sorted(CONFIG_SETS))
def test_every_id_instantiates(config_set: str, toy_data: dict[str, str], tmp_path: Path) -> None:
    names = CONFIG_SETS[config_set]
    overrides = _toy_overrides(names, toy_data, tmp_path)
    if "multi_gpu_train.json" in names:
        # torch.distributed and ignite.distributed keep process-wide state: a process of its own
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import test_zoo; "
            "print(json.dumps(test_zoo.instantiate_every_id(json.loads(sys.argv[2]), json.loads(sys.argv[3]))))"
        )
        done = _run([sys.executable, "-c", code, str(Path(__file__).parent), json.dumps(names), json.dumps(overrides)])
        report = json.loads(done.stdout.strip().splitlines()[-1])
    else:
        report = instantiate_every_id(names, overrides)
    assert report["num_ids"] > 40, report  # the enumeration found the nested ids, not only the top level
    assert not report["failures"], f"{config_set}: ids that do not instantiate:\n" + "\n".join(
        f"  {k}: {v}" for k, v in report["failures"].items()
    )
    assert report["checks"] and all(report["checks"].values()), report["checks"]


def test_instantiation_check_reports_broken_ids(toy_data: dict[str, str], tmp_path: Path) -> None:
    names = ["inference.json", "demo.json"]
    overrides = {**_toy_overrides(names, toy_data, tmp_path), "inferer#_target_": "NoSuchInferer"}
    report = instantiate_every_id(names, overrides)
    assert "inferer" in report["failures"] and "NoSuchInferer" in report["failures"]["inferer"]
    assert "network_def" not in report["failures"]


def unresolved_references(parser: ConfigParser, roots: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """``{id: [referenced ids that do not exist]}`` of a parsed config (nothing is instantiated).

    With ``roots`` only the ids a workflow evaluates are checked: the roots, what they reference,
    transitively, and the sub-ids of each (MONAI resolves ids lazily, so an id nothing uses may
    point anywhere).
    """
    from monai.bundle.reference_resolver import ReferenceResolver

    items = parser.ref_resolver.items

    def refs(config_id: str) -> list[str]:
        config = items[config_id].get_config()
        return list(ReferenceResolver.match_refs_pattern(config)) if isinstance(config, str) else []

    def subtree(config_id: str) -> list[str]:
        return [i for i in items if i == config_id or i.startswith(f"{config_id}::")]

    if roots is None:
        checked = set(items)
    else:
        checked, todo = set(), [i for r in roots if r in items for i in subtree(r)]
        while todo:
            config_id = todo.pop()
            if config_id in checked:
                continue
            checked.add(config_id)
            todo += [i for ref in refs(config_id) if ref in items for i in subtree(ref)]
    missing = {i: [r for r in refs(i) if r not in items] for i in sorted(checked)}
    return {i: m for i, m in missing.items() if m}


DATASET_CONFIGS = [f"{name}.json" for name in DATASET_LAYOUTS]  # configs/<layout>.json


@pytest.mark.parametrize("dataset", DATASET_CONFIGS)
def test_dataset_configs_resolve_over_every_workflow(dataset: str) -> None:
    """configs/atlas.json, msd_lung.json, orcascore.json merged over each workflow: every @reference names an existing id.

    Their workflows run end to end on look-alike data in tests/configs/test_dataset_configs.py; here only
    the references are checked (no data needed), for every workflow the data-set config serves.
    """
    for workflow in (
        ["train_mae.json"],
        ["train.json"],
        ["train.json", "multi_gpu_train.json"],
        ["inference.json"],
        ["inference.json", "evaluate.json"],
    ):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / n) for n in workflow] + [str(CONFIGS / dataset)])
        parser.parse(True)
        assert len(parser.ref_resolver.items) > 40
        missing = unresolved_references(parser, roots=_ENTRY_POINTS)
        assert not missing, (workflow, dataset, missing)


def test_reference_check_finds_a_dangling_reference() -> None:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"inferer#roi_size": "@no_such_id"})
    parser.parse(True)
    assert unresolved_references(parser) == {"inferer::roi_size": ["no_such_id"]}
    # the inference run evaluates the inferer (through the runner): found from the entry points too
    assert unresolved_references(parser, roots=_ENTRY_POINTS) == {"inferer::roi_size": ["no_such_id"]}
    # an id that nothing uses is not evaluated by MONAI, so it is not an error of the workflow
    parser.update({"inferer#roi_size": "@input_size", "unused": "@no_such_id"})
    parser.parse(True)
    assert unresolved_references(parser) == {"unused": ["no_such_id"]}
    assert unresolved_references(parser, roots=_ENTRY_POINTS) == {}


# ----------------------------------------------------------------------- export and re-import


def test_export_layout_and_hashes(exported: dict[str, Path], weights: Path) -> None:
    from monai.apps.utils import check_hash

    folder = exported["folder"]
    for path in (
        "configs/inference.json",
        "configs/metadata.json",
        "configs/train.json",
        "configs/logging.conf",
        "docs/README.md",
        "docs/data_license.txt",
        "LICENSE",
        "large_files.yml",
        "bundle/__init__.py",
        "models/model.pt",
        "models/mae.pt",
        "models/model.ts",
    ):
        assert (folder / path).is_file(), path
    assert not list(folder.rglob("__pycache__"))
    inference = json.loads((folder / "configs" / "inference.json").read_text())
    assert {k: inference[k] for k in SMALL} == SMALL  # the merge happened
    assert "merged over it" in inference["_description_"]
    assert json.loads((folder / "configs" / "train.json").read_text()) == json.loads(
        (CONFIGS / "train.json").read_text()
    )
    entries = export_bundle.read_large_files(folder / "large_files.yml")
    assert [e["path"] for e in entries] == list(export_bundle.LARGE_FILES)
    for entry in entries:
        assert check_hash(str(folder / entry["path"]), entry["hash_val"], entry["hash_type"])
        assert entry["hash_val"] == export_bundle.file_hash(weights / Path(entry["path"]).name)
    # nothing is overwritten without asking
    with pytest.raises(FileExistsError, match="exists"):
        export_bundle.export_bundle(exported["root"] / "dist", models_dir=weights)


def test_zip_downloads_loads_and_runs_with_monai_tools(
    exported: dict[str, Path], weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monai.bundle import download, download_large_files, load

    target = tmp_path / "hub"
    # the zoo path: `python -m monai.bundle download --name ... --url ...` unpacks the archive
    download(name=BUNDLE_NAME, bundle_dir=str(target), url=exported["zip"].as_uri(), progress=False)
    unpacked = target / BUNDLE_NAME
    assert (unpacked / "configs" / "metadata.json").is_file()
    # large_files.yml as the zoo consumes it: present files must match their recorded md5
    download_large_files(bundle_path=str(unpacked))

    # bundle_root is "." (the zoo convention): MONAI's load() initialises the inference workflow,
    # whose checkpoint loader reads ./models/model.pt, so it runs from the bundle folder
    monkeypatch.chdir(unpacked)
    network = load(name=BUNDLE_NAME, bundle_dir=str(target), workflow_type="inference", device="cpu", progress=False)
    expected = torch.load(weights / "model.pt", weights_only=True)["model"]
    assert set(network.state_dict()) == set(expected)
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    scripted, meta, _ = load(
        name=BUNDLE_NAME, bundle_dir=str(target), load_ts_module=True, device="cpu", progress=False
    )
    assert meta["version"] == _metadata()["version"] and isinstance(scripted, torch.jit.ScriptModule)

    # the unpacked folder is self-contained: started there, the configs import its own bundle package
    found = _run([sys.executable, "-c", "import bundle; print(bundle.__file__)"], cwd=unpacked)
    assert Path(found.stdout.strip()).resolve().is_relative_to(unpacked.resolve())

    # and it runs inference from there (paths relative to the bundle root)
    record = make_dataset(tmp_path / "data", num_subjects=2)[0]
    _run(
        [
            sys.executable,
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
            record["image"],
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=unpacked,
    )
    (mask_path,) = (tmp_path / "out").glob("*_seg.nii.gz")
    mask, image = nib.load(mask_path), nib.load(record["image"])
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine, atol=1e-5)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_verify_script_finds_corrupt_and_wrong_files(exported: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / BUNDLE_NAME
    shutil.copytree(exported["folder"], copy)
    reports = export_bundle.verify_bundle(copy, require_files=True)
    assert [r["status"] for r in reports] == ["ok"] * 3, reports
    assert "network state dict" in reports[0]["detail"] and "MAE checkpoint" in reports[1]["detail"]

    # a changed byte: the md5 differs from the recorded one (MONAI's download_large_files agrees)
    model = copy / "models" / "model.pt"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.write_bytes(bytes(data))
    # a file of the wrong kind under the MAE's name, with a matching hash recorded
    shutil.copy(copy / "models" / "model.ts", copy / "models" / "mae.pt")
    entries = export_bundle.read_large_files(copy / "large_files.yml")
    entries[1]["hash_val"] = export_bundle.file_hash(copy / "models" / "mae.pt")
    (copy / "large_files.yml").write_text(export_bundle.format_large_files(entries))
    (copy / "models" / "model.ts").unlink()

    by_path = {r["path"]: r for r in export_bundle.verify_bundle(copy, require_files=True)}
    assert (
        by_path["models/model.pt"]["status"] == "error"
        and "differs from the recorded" in by_path["models/model.pt"]["detail"]
    )
    assert (
        by_path["models/mae.pt"]["status"] == "error"
        and str(copy / "models" / "mae.pt") in by_path["models/mae.pt"]["detail"]
    )
    assert by_path["models/model.ts"]["status"] == "error" and "does not exist" in by_path["models/model.ts"]["detail"]
    # absent without a url is an error even when files are not required: nothing could download it
    assert export_bundle.verify_bundle(copy)[2]["status"] == "error"

    from monai.apps.utils import HashCheckError
    from monai.bundle import download_large_files

    with pytest.raises(HashCheckError, match="hash check of existing file failed"):
        download_large_files(bundle_path=str(copy))


def test_repository_large_files_yml_and_verify_cli(tmp_path: Path) -> None:
    """No weights are released: large_files.yml lists none, and the downloaders of MONAI and the zoo
    (which fail on an entry with an empty url whose file is absent) accept it."""
    from monai.bundle import download_large_files

    assert export_bundle.read_large_files(ROOT / "large_files.yml") == []
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(ROOT / "large_files.yml", bundle / "large_files.yml")
    download_large_files(bundle_path=str(bundle))  # nothing to download, nothing fails
    script = [sys.executable, str(ROOT / "scripts" / "export_bundle.py"), "verify", str(bundle)]
    result = subprocess.run([*script, "--require-files"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "no weights are released" in result.stdout, result.stdout + result.stderr

    # an entry without a url whose file is absent is what broke the zoo's CI: verify reports it,
    # and MONAI's downloader indeed fails on it
    (bundle / "large_files.yml").write_text(
        export_bundle.format_large_files([{"path": "models/model.pt", "url": "", "hash_val": "", "hash_type": "md5"}])
    )
    result = subprocess.run(script, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1 and "gives no url" in result.stdout, result.stdout + result.stderr
    with pytest.raises(ValueError, match="unknown url type"):
        download_large_files(bundle_path=str(bundle))


def test_export_without_weights_lists_no_files(tmp_path: Path) -> None:
    """The export for a zoo checkout (no weights): an empty large_files list the zoo's CI accepts."""
    folder = export_bundle.export_bundle(tmp_path, models_dir=tmp_path / "no_models")
    assert export_bundle.read_large_files(folder / "large_files.yml") == []
    assert "large_files: []" in (folder / "large_files.yml").read_text()
    assert not list((folder / "models").iterdir())


# ------------------------------------------------------------------------- model card, licences

CARD_SECTIONS = (
    "overview",
    "input and output",
    "data",
    "training",
    "performance",
    "how to run",
    "monai label",
    "references",
    "licen",
)


def test_model_card_follows_the_zoo_sections() -> None:
    card = (ROOT / "docs" / "README.md").read_text()
    headings = [line.lstrip("#").strip().lower() for line in card.splitlines() if line.startswith("#")]
    for section in CARD_SECTIONS:
        assert any(section in h for h in headings), f"docs/README.md has no section on {section!r}: {headings}"
    # every workflow config is shown with its command, and the zoo tools are documented
    for config in (
        "train_mae.json",
        "train.json",
        "multi_gpu_train.json",
        "inference.json",
        "evaluate.json",
        "demo.json",
    ):
        assert f"configs/{config}" in card, config
    for command in (
        "python -m monai.bundle run",
        "ckpt_export",
        "verify_net_in_out",
        "export_bundle.py",
        "monailabel start_server",
    ):
        assert command in card, command
    assert (ROOT / "docs" / "data_license.txt").read_text().strip()
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_zoo_subcommand_prepares_a_zoo_checkout(tmp_path: Path) -> None:
    """``export_bundle.py zoo``: the bundle without weights in models/<name>, the unit tests in ci/unit_tests,
    in a folder laid out as Project-MONAI/model-zoo (the real checkout's checks: docs/README.md)."""
    zoo = tmp_path / "model-zoo"
    (zoo / "ci" / "unit_tests").mkdir(parents=True)
    (zoo / "models").mkdir()
    (zoo / "ci" / "verify_bundle.py").write_text("# the zoo's script\n")
    script = [sys.executable, str(ROOT / "scripts" / "export_bundle.py"), "zoo", str(zoo)]
    result = subprocess.run(script, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    bundle = zoo / "models" / BUNDLE_NAME
    assert (bundle / "configs" / "metadata.json").is_file() and (bundle / "bundle" / "__init__.py").is_file()
    assert not list((bundle / "models").iterdir())  # no weights: none are released
    assert export_bundle.read_large_files(bundle / "large_files.yml") == []
    for name in export_bundle.ZOO_UNIT_TESTS:
        assert (zoo / "ci" / "unit_tests" / name).read_bytes() == (
            ROOT / "zoo" / "ci" / "unit_tests" / name
        ).read_bytes()
    for exclusion in ("exclude_verify_preferred_files_list", "exclude_verify_torchscript_list"):
        assert exclusion in result.stdout
    # nothing is overwritten without asking, and a folder that is not the zoo is refused
    again = subprocess.run(script, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    elsewhere = subprocess.run([*script[:-1], str(tmp_path / "nowhere")], capture_output=True, text=True, check=False)
    assert elsewhere.returncode == 1 and "not a checkout of Project-MONAI/model-zoo" in elsewhere.stderr
