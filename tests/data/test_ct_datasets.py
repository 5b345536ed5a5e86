"""Adapters for MSD Task06 Lung and orCaScore (bundle.data.msd_lung) and scripts/make_ct_demo_data.py."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from bundle.data.msd_lung import load_msd_lung, msd_lung_split
from bundle.data.orcascore import find_orcascore_scans, orcascore_split
from bundle.data.records import split_sizes, write_split_datalist
from bundle.data.synthetic.ct import generate_msd_lung_like, generate_orcascore_like, write_metaimage
from monai.data import load_decathlon_datalist


def _records(n: int, prefix: str = "case") -> list[dict]:
    return [
        {
            "image": f"/data/{prefix}_{i:03d}.nii.gz",
            "label": f"/data/{prefix}_{i:03d}_seg.nii.gz",
            "subject": f"{prefix}_{i:03d}",
        }
        for i in range(n)
    ]


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _fake_msd(root: Path, n: int = 3) -> dict:
    """An MSD folder with empty NIfTI stand-ins (the loader only lists files)."""
    training = []
    for i in range(1, n + 1):
        _touch(root / "imagesTr" / f"lung_{i:03d}.nii.gz")
        _touch(root / "labelsTr" / f"lung_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/lung_{i:03d}.nii.gz", "label": f"./labelsTr/lung_{i:03d}.nii.gz"})
    dataset = {
        "name": "Lung",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "numTraining": n,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(dataset))
    return dataset


def _fake_mhd(path: Path) -> None:
    write_metaimage(np.zeros((2, 2, 2), dtype=np.int16), np.eye(4), path)


@pytest.fixture(scope="module")
def lookalikes(tmp_path_factory):
    base = tmp_path_factory.mktemp("ct")
    lung = generate_msd_lung_like(
        base / "lung", num_cases=5, num_test=1, shape=(48, 48, 16), spacing=(6.0, 6.0, 15.0), progress=False
    )
    orca = generate_orcascore_like(
        base / "orca", num_cases=4, shape=(64, 64, 8), spacing=(2.7, 2.7, 3.0), progress=False
    )
    return Path(lung), Path(orca)


# --------------------------------------------------------------------------- MSD


def test_load_msd_lung_lookalike(lookalikes):
    lung, _ = lookalikes
    records = load_msd_lung(lung)
    assert [r["subject"] for r in records] == [f"lung_{i:03d}" for i in range(1, 6)]
    for r in records:
        assert set(r) == {"image", "label", "subject"}
        assert Path(r["image"]) == lung / "imagesTr" / f"{r['subject']}.nii.gz"
        assert Path(r["label"]) == lung / "labelsTr" / f"{r['subject']}.nii.gz"
    assert not any("imagesTs" in r["image"] for r in records)  # only labelled cases


def test_load_msd_lung_errors(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_msd_lung(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        load_msd_lung(tmp_path)

    dataset = _fake_msd(tmp_path)
    assert len(load_msd_lung(tmp_path)) == 3
    (tmp_path / "imagesTr" / "lung_002.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"lung_002\.nii\.gz.*image.*dataset\.json"):
        load_msd_lung(tmp_path)
    _touch(tmp_path / "imagesTr" / "lung_002.nii.gz")
    (tmp_path / "labelsTr" / "lung_003.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"labelsTr.lung_003\.nii\.gz.*label"):
        load_msd_lung(tmp_path)

    entries = dataset["training"]
    for broken, word in (
        ({**dataset, "training": [{"image": entries[0]["image"]}]}, "has no label"),
        ({**dataset, "training": [entries[0], entries[0]]}, "listed twice"),
        ({**dataset, "training": []}, "training"),
        ({**dataset, "training": ["./imagesTr/lung_001.nii.gz"]}, "not an"),
    ):
        (tmp_path / "dataset.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=word) as info:
            load_msd_lung(tmp_path)
        assert "dataset.json" in str(info.value)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json is not valid JSON"):
        load_msd_lung(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({**dataset, "training": entries[:1], "numTraining": 3}))
    with caplog.at_level("WARNING"):
        assert len(load_msd_lung(tmp_path)) == 1
    assert "numTraining is 3" in caplog.text


# --------------------------------------------------------------------------- orCaScore


def test_find_orcascore_lookalike(lookalikes):
    _, orca = lookalikes
    records = find_orcascore_scans(orca)
    assert [r["subject"] for r in records] == ["TRV1P1", "TRV2P1", "TRV3P1", "TRV4P1"]
    for r in records:
        s = r["subject"]
        assert Path(r["image"]) == orca / "Training Set" / "Images" / f"{s}CTI.mhd"
        assert Path(r["label"]) == orca / "Training Set" / "Reference standard" / f"{s}CTR.mhd"
        assert Path(r["image_dicom"]) == orca / "Training Set" / "DICOM" / s
        assert r["vendor"] == f"V{s[3]}"
    # the "Training Set" folder itself works as the root too
    assert find_orcascore_scans(orca / "Training Set") == records


def test_find_orcascore_real_layout_and_errors(tmp_path):
    training = tmp_path / "Training Set"
    with pytest.raises(FileNotFoundError, match="no orCaScore images"):
        find_orcascore_scans(tmp_path)
    for case in ("TRV1P1", "TRV2P1", "TRV1P2"):
        _fake_mhd(training / "Images" / f"{case}CTI.mhd")
        _fake_mhd(training / "Reference standard" / f"{case}CTR.mhd")
    _touch(training / "Images" / "notes.txt")  # other files are ignored
    records = find_orcascore_scans(tmp_path)
    assert [r["subject"] for r in records] == ["TRV1P1", "TRV1P2", "TRV2P1"]
    assert all("image_dicom" not in r for r in records)

    # an image without reference
    _fake_mhd(training / "Images" / "TRV3P1CTI.mhd")
    with pytest.raises(FileNotFoundError, match=r"TRV3P1CTI\.mhd has no reference.*TRV3P1CTR\.mhd"):
        find_orcascore_scans(tmp_path)
    unlabelled = find_orcascore_scans(tmp_path, require_reference=False)
    assert [r["label"] for r in unlabelled if r["subject"] == "TRV3P1"] == [None]
    (training / "Images" / "TRV3P1CTI.mhd").unlink()
    (training / "Images" / "TRV3P1CTI.raw").unlink()

    # a reference without image
    _fake_mhd(training / "Reference standard" / "TRV4P1CTR.mhd")
    with pytest.raises(FileNotFoundError, match=r"TRV4P1CTR\.mhd has no image"):
        find_orcascore_scans(tmp_path)
    # ... that a DICOM series can provide
    _touch(training / "DICOM" / "TRV4P1" / "IM0001.dcm", "x")
    record = next(r for r in find_orcascore_scans(tmp_path) if r["subject"] == "TRV4P1")
    assert record["image"] == record["image_dicom"] == str(training / "DICOM" / "TRV4P1")

    # a header whose data file is missing
    (training / "Images" / "TRV1P2CTI.raw").unlink()
    with pytest.raises(FileNotFoundError, match=r"TRV1P2CTI\.raw.*named in.*TRV1P2CTI\.mhd"):
        find_orcascore_scans(tmp_path)
    _touch(training / "Images" / "TRV1P2CTI.mhd.bak")  # not a case file: ignored
    (training / "Images" / "TRV1P2CTI.mhd").unlink()
    _touch(training / "Images" / "TRV1P2CTI.mha")
    _touch(training / "Images" / "TRV1P2CTI.mhd", "ElementDataFile = LOCAL\n")
    with pytest.raises(ValueError, match="TRV1P2.*two files"):
        find_orcascore_scans(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        find_orcascore_scans(tmp_path / "nowhere")


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize(
    "n, sizes, expected",
    [
        (64, (43, 11, 10), (43, 11, 10)),
        (32, (26, 5, 1), (26, 5, 1)),
        (12, (43, 11, 10), (8, 2, 2)),
        (8, (26, 5, 1), (6, 1, 1)),
        (5, (26, 5, 1), (3, 1, 1)),
        (3, (43, 11, 10), (1, 1, 1)),
        (100, (43, 11, 10), (67, 17, 16)),
        (10, (8, 2, 0), (8, 2, 0)),
    ],
)
def test_split_sizes(n, sizes, expected):
    got = split_sizes(n, sizes)
    assert got == expected and sum(got) == n


def test_split_sizes_errors():
    with pytest.raises(ValueError, match="cannot split 2"):
        split_sizes(2, (43, 11, 10))
    with pytest.raises(ValueError, match="non-negative integers"):
        split_sizes(10, (5, -1, 1))
    with pytest.raises(ValueError, match="non-negative integers"):
        split_sizes(10, (0, 0, 0))


@pytest.mark.parametrize(
    "split, n, expected",
    [
        (msd_lung_split, 64, (43, 11, 10)),
        (orcascore_split, 32, (26, 5, 1)),
        (msd_lung_split, 7, (5, 1, 1)),
        (orcascore_split, 4, (2, 1, 1)),
    ],
)
def test_paper_splits(split, n, expected):
    records = _records(n)
    parts = split(records, seed=0)
    assert tuple(len(parts[k]) for k in ("training", "validation", "test")) == expected
    subjects = [r["subject"] for k in ("training", "validation", "test") for r in parts[k]]
    assert sorted(subjects) == sorted(r["subject"] for r in records)  # disjoint and complete
    assert parts == split(records, seed=0)
    shuffled = records[:]
    random.Random(5).shuffle(shuffled)
    assert parts == split(shuffled, seed=0), "the split must not depend on the record order"
    if n > 10:
        assert parts != split(records, seed=1)
    assert all(part == sorted(part, key=lambda r: r["subject"]) for part in parts.values())


def test_split_errors():
    records = _records(4)
    with pytest.raises(ValueError, match="more than one record"):
        msd_lung_split(records + records[:1])
    with pytest.raises(ValueError, match="subject"):
        msd_lung_split([{"image": "a"}] * 4)
    with pytest.raises(ValueError, match="cannot split 2"):
        orcascore_split(records[:2])
    with pytest.raises(ValueError, match="one size per part"):
        msd_lung_split(records, sizes=(3, 1))


# --------------------------------------------------------------------------- datalists


def test_write_split_datalist(lookalikes, tmp_path, monkeypatch):
    lung, orca = lookalikes
    split = msd_lung_split(load_msd_lung(lung), seed=3)
    path = write_split_datalist(split, tmp_path / "lists" / "lung.json")
    for key in ("training", "validation", "test"):
        items = load_decathlon_datalist(path, data_list_key=key)
        assert [i["subject"] for i in items] == [r["subject"] for r in split[key]]
        assert [i["image"] for i in items] == [r["image"] for r in split[key]]
        assert all(os.path.isabs(i["label"]) and Path(i["label"]).is_file() for i in items)
    with pytest.raises(FileExistsError):
        write_split_datalist(split, path)
    write_split_datalist({"training": split["training"], "test": []}, path, overwrite=True)
    assert len(load_decathlon_datalist(path, data_list_key="training")) == len(split["training"])
    with pytest.raises(ValueError, match="not specified"):  # an empty part is left out
        load_decathlon_datalist(path, data_list_key="test")

    orca_split = orcascore_split(find_orcascore_scans(orca))
    orca_path = write_split_datalist(orca_split, tmp_path / "orca.json")
    test_items = load_decathlon_datalist(orca_path, data_list_key="test")
    assert len(test_items) == 1 and Path(test_items[0]["image_dicom"]).is_dir()

    # relative record paths are written absolute
    monkeypatch.chdir(tmp_path)
    rel = {"training": [{"image": "a.nii.gz", "label": "b.nii.gz", "subject": "a"}], "validation": [], "test": []}
    items = load_decathlon_datalist(write_split_datalist(rel, "rel.json"), data_list_key="training")
    assert items[0]["image"] == str(tmp_path / "a.nii.gz") and items[0]["label"] == str(tmp_path / "b.nii.gz")
    with pytest.raises(ValueError, match="unknown parts"):
        write_split_datalist({"train": []}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------- script


def _script():
    from bundle.tools import make_ct_demo_data

    return make_ct_demo_data


def test_make_ct_demo_data_script(tmp_path, capsys):
    script = _script()
    out = tmp_path / "ct"
    paths = script.main(["--output", str(out), "--cases", "3", "--seed", "2", "--no-progress", "--no-dicom"])
    printed = capsys.readouterr().out
    assert str(out / "msd_lung") in printed and str(out / "orcascore_datalist.json") in printed
    assert "TRV3P1" in printed and "category 0" in printed
    assert len(load_msd_lung(paths["msd_lung"])) == 3 and len(find_orcascore_scans(paths["orcascore"])) == 3
    for name in ("msd_lung_datalist", "orcascore_datalist"):
        for key in ("training", "validation", "test"):
            assert len(load_decathlon_datalist(paths[name], data_list_key=key)) == 1
    # an existing output is refused cleanly (exit code 2, no traceback) unless --overwrite
    with pytest.raises(SystemExit) as info:
        script.main(["--output", str(out), "--cases", "3", "--no-progress"])
    assert info.value.code == 2 and "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        script.main(["--output", str(tmp_path / "few"), "--cases", "2", "--no-progress"])
    assert info.value.code == 2
