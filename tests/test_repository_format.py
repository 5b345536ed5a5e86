"""The repository's files pass the model zoo's pre-commit hooks (its ``.pre-commit-config.yaml``).

The zoo runs, on every file of a pull request, pre-commit-hooks v4.6.0: ``pretty-format-json
--no-sort-keys --indent=4`` (the file equals ``json.dumps(..., indent=4, ensure_ascii=True)``: every
list one item per line, non-ASCII characters escaped), ``end-of-file-fixer``,
``trailing-whitespace``, ``mixed-line-ending``, ``check-added-large-files --maxkb=1024``,
``check-executables-have-shebangs``, ``check-docstring-first``, ``check-yaml``, ``check-toml``. The
checks here are written from those rules (pre-commit itself is not a dependency of the tests);
``check-shebang-scripts-are-executable`` is added: the zoo's ``scripts/`` are run as programs.
The files are those git tracks.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import subprocess
from collections import OrderedDict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_KB = 1024
#: binary files: no text rules (the zoo exempts .pt / .ts from trailing-whitespace)
BINARY_SUFFIXES = (".pt", ".ts", ".pth", ".png", ".jpg", ".gz", ".zip", ".npz", ".npy")


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (or no git): the tracked files are unknown")
    result = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    paths = [ROOT / p for p in result.stdout.decode("utf-8").split("\0") if p]
    return [p for p in paths if p.is_file() and not p.is_symlink()]


@pytest.fixture(scope="module")
def files() -> list[Path]:
    found = _tracked_files()
    assert len(found) > 50, found  # the listing works (the package, configs, docs, tests)
    return found


def _text_files(files: list[Path]) -> list[Path]:
    return [p for p in files if p.suffix not in BINARY_SUFFIXES]


def pretty_json(text: str) -> str:
    """What ``pretty-format-json --no-sort-keys --indent=4`` turns a JSON text into."""
    data = json.loads(text, object_pairs_hook=OrderedDict)
    return json.dumps(data, indent=4, ensure_ascii=True, separators=(",", ": ")) + "\n"


def test_json_files_are_pretty_formatted(files: list[Path]) -> None:
    jsons = [p for p in files if p.suffix == ".json"]
    assert any(p.name == "train.json" for p in jsons)
    bad = [str(p.relative_to(ROOT)) for p in jsons if p.read_text(encoding="utf-8") != pretty_json(p.read_text())]
    assert not bad, f"not in pretty-format-json's format (indent 4, lists expanded, ASCII): {bad}"


def test_pretty_json_rule_has_teeth() -> None:
    assert pretty_json('{"b": [1, 2], "a": "x"}') == '{\n    "b": [\n        1,\n        2\n    ],\n    "a": "x"\n}\n'
    assert pretty_json('{"a": "\u00d7"}') == '{\n    "a": "\\u00d7"\n}\n'


def test_text_files_end_cleanly(files: list[Path]) -> None:
    """end-of-file-fixer, trailing-whitespace, mixed-line-ending."""
    problems = []
    for path in _text_files(files):
        data = path.read_bytes()
        name = str(path.relative_to(ROOT))
        if not data:
            continue
        if not data.endswith(b"\n") or data.endswith(b"\n\n"):
            problems.append(f"{name}: must end with exactly one newline")
        if b"\r" in data:
            problems.append(f"{name}: carriage returns (the zoo wants LF line endings)")
        for number, line in enumerate(data.split(b"\n"), start=1):
            if line != line.rstrip():
                problems.append(f"{name}:{number}: trailing whitespace")
                break
    assert not problems, "\n".join(problems)


def test_no_large_files(files: list[Path]) -> None:
    """check-added-large-files --maxkb=1024: weights are not committed (models/README.md)."""
    large = [
        f"{p.relative_to(ROOT)} ({p.stat().st_size // 1024} KB)" for p in files if p.stat().st_size > MAX_KB * 1024
    ]
    assert not large, large


def _has_shebang(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


def test_executables_and_shebangs_agree(files: list[Path]) -> None:
    """check-executables-have-shebangs, and scripts with a shebang carry the run bit."""
    executable = {p for p in files if p.stat().st_mode & stat.S_IXUSR}
    no_shebang = sorted(str(p.relative_to(ROOT)) for p in executable if not _has_shebang(p))
    not_runnable = sorted(
        str(p.relative_to(ROOT)) for p in _text_files(files) if p not in executable and _has_shebang(p)
    )
    assert not no_shebang, f"executable without a shebang: {no_shebang}"
    assert not not_runnable, f"a shebang but no run bit (chmod +x): {not_runnable}"
    assert all(os.access(ROOT / "scripts" / s, os.X_OK) for s in ("export_bundle.py", "run_demo.py"))


def test_docstring_comes_first(files: list[Path]) -> None:
    """check-docstring-first: no module-level string after code."""
    late = []
    for path in (p for p in files if p.suffix == ".py"):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        for i, node in enumerate(body):
            if i > 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                if isinstance(node.value.value, str):
                    late.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not late, f"module-level strings after code (a misplaced docstring?): {late}"


def test_yaml_and_toml_parse(files: list[Path]) -> None:
    """check-yaml, check-toml."""
    import yaml

    for path in (p for p in files if p.suffix in (".yml", ".yaml")):
        yaml.safe_load(path.read_text())
    try:
        import tomllib
    except ImportError:  # Python 3.10
        pytest.skip("tomllib needs Python 3.11: pyproject.toml is not parsed here")
    for path in (p for p in files if p.suffix == ".toml"):
        tomllib.loads(path.read_text())
