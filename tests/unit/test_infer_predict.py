"""Sliding-window prediction inverts onto the source NIfTI grid (orientation, spacing, shape).

The network is a fixed 1x1x1 convolution (a threshold on the preprocessed
intensity), so the right answer is known: the inverted mask must equal the
threshold of the source volume itself, voxel for voxel up to resampling at the
object's border, whatever the source grid's orientation and spacing.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from imaging.engine.predict import InferenceOptions, SeriesPredictor
from imaging.pipelines.infer.writers import save_mask

PRE = {"task": "segmentation", "modality": "CT", "orientation": "RAS", "spacing": [2.0, 2.0, 2.0],
       "intensity": {"kind": "window", "a_min": 0, "a_max": 1000, "b_min": 0.0, "b_max": 1.0, "clip": True},
       "roi_size": [16, 16, 16]}


def threshold_net() -> torch.nn.Module:
    """Two-class logits: class 1 where the scaled intensity > 0.5."""
    conv = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([0.0, 20.0]).view(2, 1, 1, 1, 1)
        conv.bias[:] = torch.tensor([0.0, -10.0])
    return conv


def write_volume(path: Path, affine: np.ndarray, shape=(40, 36, 20)) -> np.ndarray:
    """A box of 1000 HU in a 0 HU volume; returns the true mask (value > 500)."""
    vol = np.zeros(shape, np.int16)
    vol[8:30, 10:26, 5:15] = 1000
    vol[2:6, 2:6, 2:5] = 1000  # a small second blob (dropped by largest_component)
    nib.save(nib.Nifti1Image(vol, affine), str(path))
    return (vol > 500).astype(np.uint8)


AFFINES = {
    "ras": np.diag([1.5, 1.5, 2.5, 1.0]),
    "lps_feet_first": np.array([[-1.5, 0, 0, 30], [0, -1.5, 0, 20], [0, 0, -2.5, 40], [0, 0, 0, 1.0]]),
    "permuted": np.array([[0, 0, 2.5, -5], [1.5, 0, 0, 3], [0, -1.5, 0, 7], [0, 0, 0, 1.0]]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("tta", [False, True])
def test_predict_inverts_to_source_grid(tmp_path: Path, name: str, tta: bool) -> None:
    truth = write_volume(tmp_path / "vol.nii.gz", AFFINES[name])
    opts = InferenceOptions(overlap=0.25, sw_batch_size=2, tta_flip=tta, device="cpu")
    predictor = SeriesPredictor(threshold_net(), PRE, opts)
    labels, affine = predictor.predict(tmp_path / "vol.nii.gz")
    assert labels.shape == truth.shape and labels.dtype == np.uint8
    np.testing.assert_allclose(affine, AFFINES[name])
    inter = int((labels & truth).sum())
    dice = 2 * inter / (labels.sum() + truth.sum())
    assert dice > 0.9, dice
    # The box's centre voxels (far from any resampling border) are exact.
    assert labels[12:26, 13:23, 7:13].all()
    assert not labels[34:, 30:, 17:].any()


def test_largest_component_and_save(tmp_path: Path) -> None:
    write_volume(tmp_path / "vol.nii.gz", AFFINES["ras"])
    opts = InferenceOptions(largest_component=True, device="cpu")
    labels, _ = SeriesPredictor(threshold_net(), PRE, opts).predict(tmp_path / "vol.nii.gz")
    assert labels[12:26, 13:23, 7:13].all() and not labels[2:6, 2:6, 2:5].any()
    save_mask(tmp_path / "seg.nii.gz", labels, tmp_path / "vol.nii.gz")
    img = nib.load(str(tmp_path / "seg.nii.gz"))
    np.testing.assert_allclose(img.affine, AFFINES["ras"])
    assert np.array_equal(np.asarray(img.dataobj), labels)
    assert not list(tmp_path.glob(".*tmp*"))


def test_refuses_classification_model() -> None:
    with pytest.raises(ValueError, match="classification"):
        SeriesPredictor(threshold_net(), {**PRE, "task": "classification"}, InferenceOptions(device="cpu"))
