"""Data sets in exactly the layout their downloads unpack to, built from the look-alikes.

The look-alike generators add their own index files (``lesions.json``, ``nodules.json``,
``reference_scores.json``, a README, DICOM copies); a user's download has none of them. These
builders copy only what the release holds, under the release's names, and add what the real
archives carry that the look-alikes do not:

- ATLAS v2.0 (``ATLAS_2/``): ``Training/R0xx/sub-r0xxs0yy/ses-1/anat/`` with the T1w image and its
  ``label-L_desc-T1lesion_mask``; one Training subject whose mask is missing; a ``Testing/`` tree
  of images without masks; a metadata table beside the two folders.
- MSD Task06 Lung (``Task06_Lung/``): ``dataset.json`` (``./imagesTr/...`` paths, the release's
  keys), ``imagesTr/``, ``labelsTr/``, ``imagesTs/``, and the AppleDouble ``._*`` file the
  release tarball holds next to every file (made on a Mac: 4 KiB of resource fork, not NIfTI).
- orCaScore (``orCaScore/``): ``Training Set/Images/<case>CTI.mhd`` + ``.raw`` and ``Training
  Set/Reference standard/<case>CTR.mhd`` + ``.raw``, and a ``Test Set/Images`` case without
  reference.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

from bundle.data.synthetic.atlas import generate_atlas_like_dataset
from bundle.data.synthetic.ct import generate_msd_lung_like, generate_orcascore_like

#: an AppleDouble header (magic 0x00051607, version 2) followed by filler: what macOS tar puts in ``._x``
APPLE_DOUBLE = bytes.fromhex("0005160700020000") + b"Mac OS X        " + bytes(4096 - 24)


def _copy(src: str | Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def build_atlas_release(root: Path, work: Path, resolution_mm: int = 4) -> dict[str, Any]:
    """``root/ATLAS_2`` in the ATLAS v2.0 release layout: 8 Training subjects in 4 cohorts (one
    without its mask) and 1 Testing subject. Returns ``{"root", "training", "unlabelled", "testing"}``
    (paths of the images)."""
    generated = generate_atlas_like_dataset(
        work / "atlas-look-alike",
        num_subjects=9,
        num_cohorts=4,
        lesion_free_fraction=0.0,
        resolution_mm=resolution_mm,
        seed=3,
        progress=False,
    )
    base = root / "ATLAS_2"
    training, testing = [], []
    for i, rec in enumerate(generated):
        src_image = Path(rec["image"])
        rel = src_image.relative_to(work / "atlas-look-alike" / "Training")
        if i == len(generated) - 1:  # the last subject becomes a Testing subject (no mask, as released)
            testing.append(_copy(src_image, base / "Testing" / rel))
            continue
        training.append(_copy(src_image, base / "Training" / rel))
        _copy(rec["label"], base / "Training" / Path(rec["label"]).relative_to(src_image.parents[4]))
    unlabelled = training[1]  # a Training subject whose mask is missing
    unlabelled.with_name(unlabelled.name.replace("_T1w.nii.gz", "_label-L_desc-T1lesion_mask.nii.gz")).unlink()
    (base / "ATLAS_2.0_metadata.csv").write_text(
        "Subject ID,Cohort,Session\n" + "".join(f"{p.parents[2].name},{p.parents[3].name},ses-1\n" for p in training)
    )
    return {"root": base, "training": training, "unlabelled": unlabelled, "testing": testing}


def _with_apple_double(folder: Path) -> None:
    """A ``._<name>`` sibling for every file under ``folder``, as in the tarball made on a Mac."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("._")):
        (path.parent / f"._{path.name}").write_bytes(APPLE_DOUBLE)


def build_msd_lung_release(root: Path, work: Path) -> dict[str, Any]:
    """``root/Task06_Lung`` as ``Task06_Lung.tar`` unpacks (``._*`` files included), and the tarball
    itself in ``work``. Returns ``{"root", "tarball", "training", "test"}``."""
    source = Path(
        generate_msd_lung_like(
            work / "msd-look-alike", num_cases=8, shape=(64, 64, 16), spacing=(3.2, 3.2, 5.0), seed=0, progress=False
        )
    )
    listing = json.loads((source / "dataset.json").read_text())
    base = root / "Task06_Lung"
    for rec in listing["training"]:
        for key in ("image", "label"):
            _copy(source / rec[key], base / rec[key])
    for image in listing["test"]:
        _copy(source / image, base / image)
    release = {  # the release's keys and spelling ("relase" is the MSD's own)
        "name": "Lung",
        "description": "Lung and cancer segmentation",
        "reference": "The Cancer Imaging Archive",
        "licence": "CC-BY-SA 4.0",
        "relase": "1.0 04/05/2018",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(listing["training"]),
        "numTest": len(listing["test"]),
        "training": listing["training"],
        "test": listing["test"],
    }
    (base / "dataset.json").write_text(json.dumps(release, indent=4))
    _with_apple_double(base)
    tarball = work / "Task06_Lung.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(base, arcname="Task06_Lung")
    return {
        "root": base,
        "tarball": tarball,
        "training": [base / r["image"] for r in listing["training"]],
        "test": [base / p for p in listing["test"]],
    }


def build_orcascore_release(root: Path, work: Path) -> dict[str, Any]:
    """``root/orCaScore`` with ``Training Set`` (MetaImage images and reference masks) and a ``Test
    Set`` case without reference. Returns ``{"root", "training", "test"}``."""
    source = Path(
        generate_orcascore_like(
            work / "orcascore-look-alike", num_cases=7, shape=(96, 96, 12), spacing=(1.8, 1.8, 3.0), seed=0, formats=("mhd",),
            progress=False,
        )
    )  # fmt: skip
    base = root / "orCaScore"
    images = sorted((source / "Training Set" / "Images").glob("*CTI.mhd"))
    training = []
    for image in images[:-1]:
        case = image.name[: -len("CTI.mhd")]
        for folder, suffix in (("Images", "CTI"), ("Reference standard", "CTR")):
            for ext in (".mhd", ".raw"):
                _copy(
                    source / "Training Set" / folder / f"{case}{suffix}{ext}",
                    base / "Training Set" / folder / f"{case}{suffix}{ext}",
                )
        training.append(base / "Training Set" / "Images" / image.name)
    # the last case as a challenge test case: TEV<vendor>P<patient>, image only
    last = images[-1]
    test_case = "TE" + last.name[2 : -len("CTI.mhd")]
    header = last.read_text().replace(last.name.replace(".mhd", ".raw"), f"{test_case}CTI.raw")
    test_image = base / "Test Set" / "Images" / f"{test_case}CTI.mhd"
    test_image.parent.mkdir(parents=True)
    test_image.write_text(header)
    _copy(last.with_suffix(".raw"), test_image.with_suffix(".raw"))
    return {"root": base, "training": training, "test": [test_image]}
