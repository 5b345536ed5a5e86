"""docs/configs.md is true to the configs, and the vocabulary rules it states hold.

- every top-level id of every config is in the table, with the configs that define it;
- a data-set overlay never sets an id of the MAE pre-training other than the shared ones (the
  data set, its preprocessing, the MAE's input size), so that its training hyperparameters
  cannot leak into the MAE's;
- every switch (an id whose default is true or false) reaches the code only through a component
  or function of the bundle, which parse their switches with ``bundle.utils.as_flag`` (e.g.
  ``$bundle.utils.as_flag(@x)``, ``$bundle.utils.amp_enabled(@amp, @device)``): ``--x false``
  means false everywhere (tests/configs/test_switches.py runs them from the command line);
- no ``$`` expression of a config branches (``if ... else``) or writes anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
DOC = ROOT / "docs" / "configs.md"
NAMES = ["train_mae", "train", "inference", "evaluate", "multi_gpu_train", "demo", "atlas", "msd_lung", "orcascore"]
#: ids of the MAE pre-training a data-set overlay may set: the data set and what the MAE sees of it
SHARED_WITH_THE_MAE = {
    "dataset_layout",
    "dataset_layout_options",
    "ckpt_dir",
    "preprocessing_domain",
    "preprocessing_options",
    "mae_img_size",
}


def _load(name: str) -> dict[str, Any]:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _top_level_ids(name: str) -> set[str]:
    return {k for k in _load(name) if not k.startswith("_") and k not in ("imports", "+imports")}


def _documented() -> dict[str, set[str]]:
    """id -> the configs column of its row (an id cell may name several ids)."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([^`]+)`", cells[0]):
            rows[name] = {c.strip() for c in cells[3].split(",") if c.strip()}
    return rows


def test_every_id_is_documented_with_its_configs() -> None:
    documented = _documented()
    defined: dict[str, set[str]] = {}
    for name in NAMES:
        for config_id in _top_level_ids(name):
            defined.setdefault(config_id, set()).add(name)
    missing = sorted(set(defined) - set(documented))
    assert not missing, f"ids not in docs/configs.md: {missing}"
    wrong = {k: (sorted(documented[k]), sorted(v)) for k, v in defined.items() if documented[k] != v}
    assert not wrong, f"docs/configs.md names other configs (documented, actual): {wrong}"
    stale = sorted(set(documented) - set(defined))
    assert not stale, f"docs/configs.md documents ids no config has: {stale}"


@pytest.mark.parametrize("overlay", ["demo", "atlas", "msd_lung", "orcascore"])
def test_overlays_reach_the_mae_only_through_shared_ids(overlay: str) -> None:
    leaked = (_top_level_ids(overlay) & _top_level_ids("train_mae")) - SHARED_WITH_THE_MAE
    if overlay == "demo":  # the demo scale sets the MAE's own ids on purpose, and its data set
        leaked -= {k for k in leaked if k.startswith("mae_")} | {"dataset_dir", "num_workers", "num_threads"}
    assert not leaked, f"{overlay} sets ids of the MAE pre-training: {sorted(leaked)}"


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    """(id path, string) of every string in a config tree."""
    if isinstance(node, str):
        return [(path, node)]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(v, f"{path}#{k}" if path else k)]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in _strings(v, f"{path}#{i}")]
    return []


def _switches() -> set[str]:
    return {k for name in NAMES for k, v in _load(name).items() if isinstance(v, bool)}


def _targets(node: Any, path: str = "") -> dict[str, str]:
    """id path -> ``_target_`` of every component in a config tree."""
    found = {}
    if isinstance(node, dict):
        if "_target_" in node:
            found[path] = node["_target_"]
        for k, v in node.items():
            found.update(_targets(v, f"{path}#{k}" if path else k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found.update(_targets(v, f"{path}#{i}"))
    return found


def test_switches_are_parsed_where_they_are_used() -> None:
    switches = _switches()
    assert {"amp", "resume", "overwrite", "save_probabilities", "debug", "progress", "mae_adversarial"} <= switches
    unparsed = []
    for name in NAMES:
        config = _load(name)
        targets = _targets(config)
        for path, text in _strings(config):
            for switch in switches:
                if not re.search(rf"@{switch}\b", text):
                    continue
                owner = path.rpartition("#")[0]
                if text == f"@{switch}" and targets.get(owner, "").startswith("bundle."):
                    continue  # the argument of a bundle component, which parses it
                if text.startswith("$") and re.search(rf"\bbundle\.[\w.]+\(.*@{switch}\b", text):
                    continue  # an argument of a function of the bundle, which parses it
                unparsed.append(f"{name}: {path} = {text!r}")
    assert not unparsed, "switches used without parsing:\n" + "\n".join(unparsed)


def test_no_branches_or_writes_in_expressions() -> None:
    bad = []
    for name in NAMES:
        for path, text in _strings(_load(name)):
            if text.startswith("$") and (
                re.search(r"\bif\b.*\belse\b", text) or re.search(r"\.(write|save)\w*\(", text)
            ):
                bad.append(f"{name}: {path} = {text!r}")
    assert not bad, "logic or side effects in $ expressions:\n" + "\n".join(bad)
