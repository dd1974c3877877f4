"""Opening an ingested NIfTI volume: one checked entry for the readers of every layer.

It lives here, below engine (prediction reads the source grid), review (notebooks) and
the inference writers, so none of them imports another room to open a file.
"""

from __future__ import annotations

import os

import nibabel as nib


def load_nifti(path: str | os.PathLike[str]) -> nib.Nifti1Image:
    """Open a NIfTI file (header now, voxels lazily).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not NIfTI-1/2 (names the file).
    """
    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"'{path}' is not a NIfTI image ({type(img).__name__})")
    return img
