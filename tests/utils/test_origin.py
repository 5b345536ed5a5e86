"""Two versions of the bundle in one process: the configs refuse to run another copy's code.

MONAI Label serves several bundles in one process and unloads only packages named ``scripts``
between them; every workflow resolves ``ckpt_dir`` through ``bundle.utils.models_dir``, which
checks that ``<bundle_root>/bundle`` is the package the process runs (or an identical copy).
tests/integration/test_monailabel.py checks the same with two bundle versions in a real server.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bundle.utils import PACKAGE_DIR, PackageConflictError, check_package_origin, models_dir, package_digest
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[2]


def _copy_bundle(folder: Path) -> Path:
    """A bundle folder holding a copy of this process's ``bundle`` package (and the configs)."""
    shutil.copytree(PACKAGE_DIR, folder / "bundle", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "configs", folder / "configs")
    return folder


def test_own_code_and_identical_copies_pass(tmp_path: Path) -> None:
    assert models_dir(tmp_path) == str(tmp_path / "models")  # no bundle/ of its own: nothing to check
    assert models_dir(str(tmp_path), "atlas", "subset-0") == str(tmp_path / "models" / "atlas" / "subset-0")
    assert models_dir(PACKAGE_DIR.parent) == str(PACKAGE_DIR.parent / "models")  # the running package's folder
    copy = _copy_bundle(tmp_path / "copy")
    assert package_digest(copy / "bundle") == package_digest(PACKAGE_DIR)
    check_package_origin(copy)  # another folder, the same code: the same behaviour


def test_another_version_is_refused_naming_both_folders(tmp_path: Path) -> None:
    other = _copy_bundle(tmp_path / "grcsf_v2")
    init = other / "bundle" / "__init__.py"
    init.write_text(init.read_text().replace("__version__ = ", "__version__ = '9.9.9'  # was ", 1))
    with pytest.raises(PackageConflictError) as error:
        models_dir(other)
    message = str(error.value)
    assert str((other / "bundle").resolve()) in message and str(PACKAGE_DIR) in message
    assert "\n" not in message and "one version of the GRCSF bundle per MONAI Label server" in message

    # what MONAI Label resolves for the second bundle: its inference network (through model_settings,
    # ckpt_path and ckpt_dir) and its preprocessing
    parser = ConfigParser()
    parser.read_config(str(other / "configs" / "inference.json"))
    parser.update({"bundle_root": str(other), "device": "cpu"})
    for config_id in ("network_def", "preprocessing"):
        with pytest.raises(Exception) as wrapped:
            parser.get_parsed_content(config_id)
        chain, cause = [], wrapped.value
        while cause is not None:
            chain.append(cause)
            cause = cause.__cause__
        assert any(isinstance(e, PackageConflictError) for e in chain), (config_id, chain)
