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
"""Export the bundle as the MONAI model zoo distributes it, and check its large files.

``export`` writes ``<output_dir>/<name>/`` with the zoo layout -- ``configs/``, ``models/``,
``docs/``, ``LICENSE``, ``large_files.yml`` -- plus the ``bundle/`` Python package the configs
import (MONAI Label and ``python -m monai.bundle run`` started in the folder find it there, so the
folder is self-contained). Optionally:

- ``--merge inference.json=demo.json``: write ``configs/inference.json`` as inference.json with
  demo.json's ids merged over it (MONAI's ``--config_file "[a, b]"`` merge). MONAI Label reads
  only ``configs/inference.json``, so a bundle served with demo-scale weights needs this.
- ``--models-dir DIR``: take the weights from DIR instead of the repository's ``models/``.
- ``--zip``: also write ``<output_dir>/<name>.zip`` holding ``<name>/...``, the archive layout
  ``python -m monai.bundle download --url ...`` unpacks.

``large_files.yml`` lists the released weight files, each with its ``url`` and md5 (the zoo's CI
and ``monai.bundle download_large_files`` download and check them); none are released yet, so
the repository's list is empty. The export adds every weight file it copies, with its md5 and,
when the repository lists none, an empty ``url``: the file is in the folder, so nothing is
downloaded (MONAI skips an existing file after checking its hash). An entry without a url whose
file is absent would make those downloaders fail, so the export never writes one.

``verify BUNDLE_DIR`` recomputes the hashes of the files that ``large_files.yml`` lists, compares
them with the recorded ones and checks each file's format (network state dict, MAE checkpoint,
TorchScript with bundle metadata). Exit status 1 on any problem.

``zoo ZOO_CHECKOUT`` prepares a pull request to the MONAI model zoo in a checkout of
Project-MONAI/model-zoo: the bundle (without weights: none are released, and the zoo refuses files
over 1 MB) in ``models/grcsf_lesion_segmentation/``, and the bundle's unit tests (``zoo/ci/unit_tests/``
of this repository, run by the zoo's ``ci/unit_tests/runner.py``) in ``ci/unit_tests/``; it prints
the zoo's own checks to run and the entries the bundle needs in ``ci/bundle_custom_data.py``.

Examples::

    python scripts/export_bundle.py export dist --merge inference.json=demo.json --zip
    python scripts/export_bundle.py verify dist/grcsf_lesion_segmentation
    python scripts/export_bundle.py zoo ~/src/model-zoo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bundle.tools import BUNDLE_ROOT

BUNDLE_NAME = "grcsf_lesion_segmentation"
#: the weight files of the bundle, relative to its root (the entries of large_files.yml)
LARGE_FILES = ("models/model.pt", "models/mae.pt", "models/model.ts")
#: what the export copies besides configs/ and models/ (the zoo layout plus the code the configs import)
BUNDLE_CONTENT = ("bundle", "docs", "LICENSE")
HASH_TYPE = "md5"
#: the bundle's unit tests for the model zoo's CI (ci/unit_tests/test_<name>.py and _dist.py)
ZOO_UNIT_TESTS = ("test_grcsf_lesion_segmentation.py", "test_grcsf_lesion_segmentation_dist.py")
#: the zoo's exclusion lists (ci/bundle_custom_data.py) the bundle belongs to, and why (docs/README.md)
ZOO_EXCLUSIONS = {
    "exclude_verify_preferred_files_list": "no weights are released: models/model.pt is made by training",
    "exclude_verify_torchscript_list": (
        "models/model.pt holds {'model', 'model_settings'}: the zoo's ckpt_export without --key_in_ckpt "
        "cannot load it (python -m monai.bundle ckpt_export ... --key_in_ckpt model exports it)"
    ),
}
_CHUNK = 1 << 20


def file_hash(path: str | os.PathLike, hash_type: str = HASH_TYPE) -> str:
    """Hex digest of a file (``hash_type``: any :mod:`hashlib` name, e.g. md5 or sha256)."""
    try:
        digest = hashlib.new(hash_type)
    except ValueError as e:
        raise ValueError(f"unknown hash_type {hash_type!r}: {e}") from e
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- large_files.yml


def read_large_files(path: str | os.PathLike) -> list[dict[str, str]]:
    """The ``large_files`` entries of a large_files.yml, each with path, url, hash_val, hash_type."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - PyYAML ships with the test extra
        raise ImportError("reading large_files.yml needs PyYAML: pip install pyyaml") from e
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        with open(path) as f:
            content = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    entries = content.get("large_files") if isinstance(content, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a 'large_files' list (empty when no weights are released).")
    required = ("path", "url", "hash_val", "hash_type")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"{path}: entry {i} is not a mapping.")  # noqa: TRY004 - bad file content
        missing = [k for k in required if k not in entry]
        if missing:
            raise ValueError(f"{path}: entry {i} ({entry.get('path', '?')}) lacks {missing}.")
    return [{k: "" if entry[k] is None else str(entry[k]) for k in required} for entry in entries]


def format_large_files(entries: Sequence[Mapping[str, str]]) -> str:
    """large_files.yml text in the zoo's layout (every value a quoted string; ``[]`` for none)."""
    lines = [
        "# Weights of the bundle, downloaded and checked by MONAI's bundle tools (the zoo format).",
        "# hash_val: the md5 of the file; an empty url marks a file shipped in this folder (exported by",
        "# scripts/export_bundle.py); `python scripts/export_bundle.py verify <bundle>` checks them.",
        "large_files:" if entries else "large_files: []",
    ]
    for entry in entries:
        lines.append(f"  - path: {json.dumps(entry['path'])}")
        for key in ("url", "hash_val", "hash_type"):
            lines.append(f"    {key}: {json.dumps(entry.get(key, ''))}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ file formats


def check_weight_file(path: str | os.PathLike) -> str:
    """Check that a weight file has the format its name promises; returns a one-line description.

    - ``model.pt``: a network state dict (bare, or under ``"model"``) readable with
      ``torch.load(weights_only=True)``;
    - ``mae.pt``: an MAE checkpoint written by :func:`bundle.networks.save_mae` (rebuilt here);
    - ``*.ts``: TorchScript written by ``monai.bundle ckpt_export`` (it carries the bundle's
      metadata.json, whose version is reported).

    Raises:
        ValueError: the file does not have that format (the message names the file).
    """
    import torch

    path = os.fspath(path)
    name = os.path.basename(path)
    if name.endswith(".ts"):
        from monai.data import load_net_with_metadata

        try:
            net, meta, _ = load_net_with_metadata(path, map_location="cpu")
        except Exception as e:
            raise ValueError(f"{path} is not a TorchScript file ({type(e).__name__}: {e}).") from e
        if not isinstance(net, torch.jit.ScriptModule):
            raise ValueError(f"{path} did not load as a TorchScript module.")
        if not meta.get("version"):
            raise ValueError(f"{path} carries no bundle metadata (export it with monai.bundle ckpt_export).")
        return f"TorchScript, bundle version {meta['version']}"
    if name.startswith("mae"):
        from bundle.networks.mae import load_mae

        mae = load_mae(path)
        n_params = sum(p.numel() for p in mae.parameters())
        return f"MAE checkpoint, {n_params} parameters, image size {mae.config.get('img_size')}"
    from bundle.networks.checkpoint import read_state_dict

    state = read_state_dict(path)
    n_params = sum(v.numel() for v in state.values())
    return f"network state dict, {len(state)} tensors, {n_params} values"


def verify_bundle(bundle_dir: str | os.PathLike, require_files: bool = False) -> list[dict[str, Any]]:
    """Recompute the hashes of the files large_files.yml lists and check their formats.

    Returns one report per entry: ``{"path", "status", "detail", "hash_val"}`` where status is
    ``ok`` (file present, format right, hash equal to the recorded one or none recorded),
    ``missing`` (file absent: an error when ``require_files``) or ``error``.
    """
    root = Path(bundle_dir)
    reports = []
    for entry in read_large_files(root / "large_files.yml"):
        path = root / entry["path"]
        report: dict[str, Any] = {"path": entry["path"], "hash_val": None}
        if not path.is_file():
            if not entry["url"]:  # nothing to download it from: the zoo's CI and MONAI's downloader fail
                report.update(status="error", detail=f"{path} does not exist and large_files.yml gives no url")
            else:
                status = "error" if require_files else "missing"
                report.update(status=status, detail=f"{path} does not exist (url {entry['url']})")
            reports.append(report)
            continue
        try:
            actual = file_hash(path, entry["hash_type"] or HASH_TYPE)
            report["hash_val"] = actual
            detail = check_weight_file(path)
            if entry["hash_val"] and entry["hash_val"].lower() != actual:
                report.update(
                    status="error",
                    detail=f"{path}: {entry['hash_type']} {actual} differs from the recorded {entry['hash_val']}",
                )
            else:
                recorded = "matches the recorded hash" if entry["hash_val"] else "no hash recorded"
                report.update(status="ok", detail=f"{detail}; {recorded}")
        except Exception as e:  # noqa: BLE001 - any failure of one file is reported, the others go on
            report.update(status="error", detail=f"{path}: {type(e).__name__}: {e}")
        reports.append(report)
    return reports


# ---------------------------------------------------------------------------------- export


def merged_config(base: str | os.PathLike, overrides: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """``base`` with the ids of ``overrides`` merged over it, as ``--config_file "[base, ...]"`` does.

    The base's ``_description_`` is kept, with a note naming the merged files.
    """
    from monai.bundle import ConfigParser

    base_config = ConfigParser.load_config_file(os.fspath(base))
    merged = ConfigParser.load_config_files([os.fspath(base), *[os.fspath(o) for o in overrides]])
    names = ", ".join(Path(o).name for o in overrides)
    description = base_config.get("_description_", "")
    merged["_description_"] = f"{description} [Exported with {names} merged over it.]".strip()
    return dict(merged)


def _parse_merges(merges: Sequence[str]) -> dict[str, list[str]]:
    """``["inference.json=demo.json", ...]`` -> ``{"inference.json": ["demo.json", ...]}``."""
    result: dict[str, list[str]] = {}
    for item in merges:
        target, sep, override = item.partition("=")
        if not sep or not target or not override:
            raise ValueError(f"--merge expects CONFIG=OVERRIDE (e.g. inference.json=demo.json), got {item!r}.")
        result.setdefault(target, []).append(override)
    return result


def _ignore_caches(_folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]


def export_bundle(
    output_dir: str | os.PathLike,
    name: str = BUNDLE_NAME,
    source: str | os.PathLike = BUNDLE_ROOT,
    models_dir: str | os.PathLike | None = None,
    merge: Sequence[str] = (),
    make_zip: bool = False,
    overwrite: bool = False,
    copy_weights: bool = True,
) -> Path:
    """Write the bundle in the zoo layout to ``output_dir/name`` (see the module docstring).

    Args:
        output_dir: parent folder of the export.
        name: bundle (folder) name; MONAI Label serves it under this name.
        source: the repository (bundle root) to export.
        models_dir: where the weights are, default ``source/models``; the files of
            :data:`LARGE_FILES` that exist there are copied.
        merge: ``"CONFIG=OVERRIDE"`` items: CONFIG a name in ``source/configs``, OVERRIDE a name
            there or an absolute path.
        make_zip: also write ``output_dir/name.zip``.
        overwrite: replace an existing export (folder and zip).
        copy_weights: False exports no weight files (``models/`` stays empty).

    Returns:
        the exported bundle folder.

    Raises:
        FileExistsError: the export exists and ``overwrite`` is False.
        FileNotFoundError: a merged config does not exist.
    """
    source = Path(source).resolve()
    output = Path(output_dir).resolve()
    target = output / name
    archive = output / f"{name}.zip"
    for path in (target, archive) if make_zip else (target,):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    merges = _parse_merges(merge)
    configs = source / "configs"
    for target_config, overrides in merges.items():
        # an override is a name in configs/ or an absolute path (e.g. a test's own scale)
        merges[target_config] = [str(configs / o) if not Path(o).is_absolute() else o for o in overrides]
        for config in (str(configs / target_config), *merges[target_config]):
            if not Path(config).is_file():
                raise FileNotFoundError(f"--merge: {config} does not exist.")
    models = Path(models_dir) if models_dir is not None else source / "models"

    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=output))
    try:
        build = staging / name
        build.mkdir()
        for item in BUNDLE_CONTENT:
            src = source / item
            if src.is_dir():
                shutil.copytree(src, build / item, ignore=_ignore_caches)
            elif src.is_file():
                shutil.copy2(src, build / item)
        shutil.copytree(configs, build / "configs", ignore=_ignore_caches)
        for target_config, overrides in merges.items():
            merged = merged_config(configs / target_config, overrides)
            (build / "configs" / target_config).write_text(json.dumps(merged, indent=4) + "\n")

        # the released files (with urls), then every weight file exported, with its md5
        released = read_large_files(source / "large_files.yml") if (source / "large_files.yml").is_file() else []
        listed = {entry["path"] for entry in released}
        entries = released + [
            {"path": p, "url": "", "hash_val": "", "hash_type": HASH_TYPE} for p in LARGE_FILES if p not in listed
        ]
        (build / "models").mkdir()
        kept = []
        for entry in entries:
            weight = models / Path(entry["path"]).name
            if copy_weights and weight.is_file():
                shutil.copy2(weight, build / entry["path"])
                entry["hash_type"] = entry["hash_type"] or HASH_TYPE
                entry["hash_val"] = file_hash(build / entry["path"], entry["hash_type"])
            elif not entry["url"]:
                continue  # neither exported nor downloadable: not listed
            kept.append(entry)
        (build / "large_files.yml").write_text(format_large_files(kept))

        if make_zip:
            tmp_zip = staging / f"{name}.zip"
            with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(build.rglob("*")):
                    zf.write(path, path.relative_to(staging).as_posix())
            os.chmod(tmp_zip, 0o644)
        if target.exists():  # overwrite=True (checked above)
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(build, target)
        if make_zip:
            os.replace(staging / f"{name}.zip", archive)  # replaces an older archive atomically
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def export_to_zoo(
    zoo_dir: str | os.PathLike, source: str | os.PathLike = BUNDLE_ROOT, overwrite: bool = False
) -> dict[str, Any]:
    """Put the bundle (no weights) and its unit tests into a checkout of the MONAI model zoo.

    Returns:
        ``{"bundle": folder, "unit_tests": [paths], "exclusions": ZOO_EXCLUSIONS}``.

    Raises:
        FileNotFoundError: ``zoo_dir`` is not a checkout of Project-MONAI/model-zoo.
        FileExistsError: the bundle or a unit test is there already and ``overwrite`` is False.
    """
    zoo = Path(zoo_dir).resolve()
    if not (zoo / "ci" / "verify_bundle.py").is_file() or not (zoo / "models").is_dir():
        raise FileNotFoundError(
            f"{zoo}: not a checkout of Project-MONAI/model-zoo (no ci/verify_bundle.py or models/)."
        )
    tests_dir = Path(source) / "zoo" / "ci" / "unit_tests"
    targets = [zoo / "ci" / "unit_tests" / name for name in ZOO_UNIT_TESTS]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace it.")
    folder = export_bundle(zoo / "models", name=BUNDLE_NAME, source=source, overwrite=overwrite, copy_weights=False)
    for name, target in zip(ZOO_UNIT_TESTS, targets):
        shutil.copy2(tests_dir / name, target)
    return {"bundle": folder, "unit_tests": targets, "exclusions": dict(ZOO_EXCLUSIONS)}


# ------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write the bundle in the zoo layout")
    exp.add_argument("output_dir", help="parent folder of the export")
    exp.add_argument("--name", default=BUNDLE_NAME, help=f"bundle folder name (default {BUNDLE_NAME})")
    exp.add_argument("--models-dir", default=None, help="folder with model.pt / mae.pt / model.ts (default models/)")
    exp.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="CONFIG=OVERRIDE",
        help="merge OVERRIDE (a name in configs/ or an absolute path) over configs/CONFIG in the export (repeatable)",
    )
    exp.add_argument("--zip", action="store_true", help="also write <output_dir>/<name>.zip")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing export")
    zoo = sub.add_parser("zoo", help="put the bundle (no weights) and its unit tests into a model-zoo checkout")
    zoo.add_argument("zoo_dir", help="a checkout of Project-MONAI/model-zoo")
    zoo.add_argument("--overwrite", action="store_true", help="replace an earlier export there")
    ver = sub.add_parser("verify", help="recompute the hashes of large_files.yml and check the file formats")
    ver.add_argument("bundle_dir", help="bundle root holding large_files.yml")
    ver.add_argument("--require-files", action="store_true", help="a listed file that is absent is an error")
    args = parser.parse_args(argv)

    try:
        if args.command == "export":
            target = export_bundle(
                args.output_dir,
                name=args.name,
                models_dir=args.models_dir,
                merge=args.merge,
                make_zip=args.zip,
                overwrite=args.overwrite,
            )
            print(f"exported {target}" + (f" and {target}.zip" if args.zip else ""))
            entries = read_large_files(target / "large_files.yml")
            for entry in entries:
                print(
                    f"  {entry['path']:<18} {entry['hash_type']} {entry['hash_val']} {entry['url'] or '(in the folder)'}"
                )
            if not entries:
                print("  no weight files (large_files.yml lists none)")
            return 0
        if args.command == "zoo":
            done = export_to_zoo(args.zoo_dir, overwrite=args.overwrite)
            print(f"exported {done['bundle']} (no weights) and {', '.join(str(t) for t in done['unit_tests'])}")
            print(f"add {BUNDLE_NAME!r} to these lists of ci/bundle_custom_data.py:")
            for name, why in done["exclusions"].items():
                print(f"  {name}: {why}")
            print(
                "then, from the checkout: python ci/prepare_schema.py -l grcsf_lesion_segmentation; "
                "python ci/verify_bundle.py -b grcsf_lesion_segmentation -m min (and -m full); "
                "python ci/unit_tests/runner.py --b grcsf_lesion_segmentation; "
                "torchrun ci/unit_tests/runner.py --b grcsf_lesion_segmentation --dist True; ./runtests.sh --codeformat"
            )
            return 0
        reports = verify_bundle(args.bundle_dir, require_files=args.require_files)
    except (OSError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not reports:
        print("large_files.yml lists no files: no weights are released")
    for report in reports:
        print(f"{report['status']:<8} {report['path']:<18} {report['detail']}")
    return 1 if any(r["status"] == "error" for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
