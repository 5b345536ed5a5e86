"""The MNI-152 ICBM 2009a (symmetric, non-linear) template that ships inside nilearn.

ATLAS v2.0 images are registered to this space (docs/method.md §7): 197 x 233 x 189 voxels of
1 mm, RAS+ axes, world origin (-98, -134, -72) mm at voxel (0, 0, 0). nilearn bundles the
T1 template and the grey/white-matter probability maps as small uint8 NIfTI files
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``), so
no download is needed; nilearn is the ``demo`` extra of this project.

The template's T1 is brain-extracted (zero outside the brain, cerebrospinal fluid
included), which is what :attr:`MNITemplate.brain_mask` is derived from.

Coarser grids (``resolution_mm`` = 2, 3, 4, ...) are obtained by averaging non-overlapping
``r x r x r`` blocks of the 1 mm grid (zero-padded at the far end to a multiple of ``r``).
The affine keeps the 1 mm grid's axes; the voxel size becomes ``r`` mm and voxel (0, 0, 0)
sits at the centre of the first block, i.e. ``origin + (r - 1) / 2`` mm.
:func:`mni152_grid` gives shape and affine of such a grid without reading any file, for
checks such as "is this image on the MNI grid".
"""

from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MNI152_SHAPE",
    "MNI152_AFFINE",
    "MNI152_TEMPLATE_FILES",
    "MNITemplate",
    "mni152_grid",
    "mni152_template_paths",
    "load_mni152_template",
    "block_average",
    "check_resolution",
]

#: Shape of the 1 mm MNI-152 ICBM 2009a grid (x, y, z), in voxels.
MNI152_SHAPE: tuple[int, int, int] = (197, 233, 189)

#: Voxel-to-world affine of the 1 mm grid (RAS+, mm); read-only.
MNI152_AFFINE: np.ndarray = np.array(
    [[1.0, 0.0, 0.0, -98.0], [0.0, 1.0, 0.0, -134.0], [0.0, 0.0, 1.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)
MNI152_AFFINE.setflags(write=False)

#: File names (inside ``nilearn/datasets/data``) of the T1 template and tissue maps.
MNI152_TEMPLATE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

# The files store values 0..255 (uint8) for intensities/probabilities in [0, 1].
_UINT8_SCALE = 255.0


@dataclass(frozen=True)
class MNITemplate:
    """The MNI-152 template on one grid.

    Attributes:
        t1: T1 intensities scaled to [0, 1], float32, shape ``(X, Y, Z)``; zero outside the brain.
        gm: grey-matter probability in [0, 1], float32, shape ``(X, Y, Z)``.
        wm: white-matter probability in [0, 1], float32, shape ``(X, Y, Z)``.
        brain_mask: bool, shape ``(X, Y, Z)``; the brain (CSF included) of the T1 template.
            On a coarse grid a voxel is brain when at least half of its 1 mm voxels are.
        affine: voxel-to-world affine (4, 4), float64, mm.
        resolution_mm: isotropic voxel size in mm.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    resolution_mm: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(X, Y, Z)`` in voxels."""
        return tuple(int(s) for s in self.t1.shape)  # type: ignore[return-value]


def check_resolution(resolution_mm: int, name: str = "resolution_mm") -> int:
    """``resolution_mm`` as a positive int (mm), else a ValueError naming ``name``."""
    # bool is an int subclass; True would silently mean 1 mm.
    if isinstance(resolution_mm, bool) or not isinstance(resolution_mm, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer (mm), got {resolution_mm!r}.")
    if resolution_mm < 1:
        raise ValueError(f"{name} must be a positive integer (mm), got {resolution_mm}.")
    return int(resolution_mm)


def mni152_grid(resolution_mm: int = 1) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the MNI-152 grid block-averaged to ``resolution_mm``.

    Args:
        resolution_mm: isotropic voxel size in mm (block size of the averaging), >= 1.

    Returns:
        ``(shape, affine)``: the grid shape ``(X, Y, Z)`` = ``ceil(MNI152_SHAPE / r)`` and a
        new (writable) 4 x 4 float64 affine with voxel size ``r`` mm whose voxel (0, 0, 0)
        is the centre of the first ``r``-block of the 1 mm grid.
    """
    r = check_resolution(resolution_mm)
    shape = tuple(math.ceil(n / r) for n in MNI152_SHAPE)
    affine = np.array(MNI152_AFFINE, dtype=np.float64)
    affine[:3, :3] *= r
    # Voxel (0,0,0) of the coarse grid is the mean position of 1 mm voxels 0..r-1 per axis.
    affine[:3, 3] = MNI152_AFFINE[:3, 3] + MNI152_AFFINE[:3, :3] @ np.full(3, (r - 1) / 2.0)
    return shape, affine  # type: ignore[return-value]


def mni152_template_paths() -> dict[str, Path]:
    """Locate the template files inside the installed nilearn package.

    Returns:
        ``{"t1": path, "gm": path, "wm": path}``.

    Raises:
        ImportError: nilearn is not installed.
        FileNotFoundError: the installed nilearn does not ship one of the files.
    """
    try:
        data_dir = importlib.resources.files("nilearn.datasets") / "data"
    except ModuleNotFoundError as err:
        raise ImportError(
            "The MNI-152 template comes with nilearn, which is not installed. "
            'Install the demo extra: pip install ".[demo]" (or pip install nilearn).'
        ) from err
    paths = {}
    for key, name in MNI152_TEMPLATE_FILES.items():
        path = Path(str(data_dir / name))
        if not path.is_file():
            raise FileNotFoundError(
                f"The installed nilearn does not ship the MNI-152 ICBM 2009a file {path}; "
                'reinstall it with pip install ".[demo]" (nilearn>=0.10).'
            )
        paths[key] = path
    return paths


def block_average(volume: np.ndarray, block: int) -> np.ndarray:
    """Average non-overlapping ``block``-cubes of a 3D array.

    Args:
        volume: array of shape ``(X, Y, Z)``.
        block: block edge in voxels (>= 1). The far end of every axis is zero-padded to a
            multiple of ``block``, so the result has shape ``ceil((X, Y, Z) / block)``.

    Returns:
        float32 array of the block means (padding counts as zeros).
    """
    if volume.ndim != 3:
        raise ValueError(f"block_average expects a 3D array, got shape {volume.shape}.")
    block = check_resolution(block)
    data = np.asarray(volume, dtype=np.float32)
    if block == 1:
        return data.copy()
    out_shape = [math.ceil(n / block) for n in data.shape]
    padded = np.zeros([n * block for n in out_shape], dtype=np.float32)
    padded[: data.shape[0], : data.shape[1], : data.shape[2]] = data
    blocks = padded.reshape(out_shape[0], block, out_shape[1], block, out_shape[2], block)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def _read_uint8_volume(path: Path) -> np.ndarray:
    """Read one template file as float32 in [0, 1], checking it is on the 1 mm MNI grid."""
    import nibabel as nib

    img = nib.load(str(path))
    if tuple(img.shape) != MNI152_SHAPE or not np.allclose(img.affine, MNI152_AFFINE):
        raise ValueError(
            f"{path} is not on the expected MNI-152 1 mm grid: shape {tuple(img.shape)}, "
            f"affine {img.affine.tolist()} (expected {MNI152_SHAPE} and {MNI152_AFFINE.tolist()})."
        )
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data / _UINT8_SCALE


def load_mni152_template(resolution_mm: int = 1) -> MNITemplate:
    """Load the MNI-152 ICBM 2009a T1 template and tissue maps from nilearn.

    Args:
        resolution_mm: isotropic voxel size in mm. 1 gives the native 197 x 233 x 189 grid;
            ``r`` > 1 block-averages ``r x r x r`` blocks (see :func:`mni152_grid`).

    Returns:
        :class:`MNITemplate` with float32 ``t1``/``gm``/``wm`` in [0, 1], a bool
        ``brain_mask`` and the grid's affine, all of shape ``mni152_grid(resolution_mm)[0]``.

    Raises:
        ImportError: nilearn is missing (``pip install ".[demo]"``).
        ValueError: bad ``resolution_mm``.
    """
    r = check_resolution(resolution_mm)
    paths = mni152_template_paths()
    t1, gm, wm = (_read_uint8_volume(paths[k]) for k in ("t1", "gm", "wm"))
    brain = (t1 > 0).astype(np.float32)
    _, affine = mni152_grid(r)
    # Averaging the 1 mm mask (rather than thresholding the averaged T1 at > 0) keeps the
    # coarse mask from growing by a voxel wherever a block merely touches the brain.
    return MNITemplate(
        t1=block_average(t1, r),
        gm=block_average(gm, r),
        wm=block_average(wm, r),
        brain_mask=block_average(brain, r) >= 0.5,
        affine=affine,
        resolution_mm=r,
    )
