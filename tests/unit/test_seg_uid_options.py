"""A SEG made with other output options is another object under another UID; the same options, the same UID.

The masks come from the real inference path (SeriesPredictor with the options
``largest_component`` and ``tta_flip``, the ``inference.labels`` subset wrapper)
on a NIfTI volume lying over a real DICOM source series, then ``write_seg``;
UIDs are read back from the written files with pydicom.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from imaging.deid.seg_header import header_deid
from imaging.dicom.seg import write_seg
from imaging.dicom.source_frames import load_source
from imaging.engine.predict import InferenceOptions, SeriesPredictor
from imaging.selection.apply import LabelSubsetPredictor
from tests.unit.test_seg_writer import CODES, PSEUDO, nifti_mask, write_source

PRE = {"task": "segmentation", "modality": "CT", "orientation": "RAS", "spacing": [2.0, 2.0, 2.0],
       "intensity": {"kind": "window", "a_min": 0, "a_max": 1000, "b_min": 0.0, "b_max": 1.0, "clip": True},
       "roi_size": [16, 16, 16]}
NAMES = {1: "liver", 2: "spleen"}


def shifted_threshold_net() -> torch.nn.Module:
    """Logits from the intensity one voxel further along x: 1000 -> liver, 500 -> spleen, 0 -> background.

    Reading a neighbour makes the net not flip-equivariant, so tta_flip really changes the mask.
    """
    conv = torch.nn.Conv3d(1, 3, kernel_size=3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0, 2, 1, 1] = torch.tensor([0.0, 60.0, 20.0])
        conv.bias[:] = torch.tensor([0.0, -40.0, -4.0])
    return conv


def write_volume(path: Path) -> None:
    """On the SEG test's NIfTI grid (over the source frames): liver in two pieces, spleen at 500."""
    labels, affine = nifti_mask()
    vol = np.zeros(labels.shape, np.int16)
    vol[labels == 1] = 1000
    vol[labels == 3] = 500
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in labels.shape], indexing="ij"), -1)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    vol[np.linalg.norm(ras - [11, 9, -8], axis=-1) < 3.5] = 1000  # a second, small piece of liver
    nib.save(nib.Nifti1Image(vol, affine), str(path))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scene")
    write_volume(root / "vol.nii.gz")
    return root / "vol.nii.gz", write_source(root / "src", "axial")


def _mask(volume: Path, keep: list[int] | None = None, **options: bool) -> tuple[np.ndarray, np.ndarray]:
    predictor = SeriesPredictor(shifted_threshold_net(), PRE, InferenceOptions(device="cpu", **options))
    runner = predictor if keep is None else LabelSubsetPredictor(predictor, keep)
    prepared = runner.prepare(volume)
    return runner.invert(prepared, runner.forward(prepared))  # type: ignore[no-any-return]


def _uids(out: Path, src_json: Path, labels: np.ndarray, affine: np.ndarray, names: dict[int, str],
          seg_type: str = "BINARY", pseudo: bool = False) -> tuple[str, str]:
    result = write_seg(out, load_source(src_json), labels, affine, names, CODES, algorithm_name="unet",
                       algorithm_version="7", segmentation_type=seg_type,
                       **({"pseudonymizer": PSEUDO, "header_deid": header_deid(PSEUDO)} if pseudo
                          else {"identity": "source"}))
    assert result is not None
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert (str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)) == (result.sop_instance_uid,
                                                                  result.series_instance_uid)
    return str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)


def test_each_content_option_gives_a_new_uid_and_the_same_options_the_same(tmp_path: Path,
                                                                          scene: tuple[Path, Path]) -> None:
    volume, src = scene
    base_labels, affine = _mask(volume)
    assert set(np.unique(base_labels)) == {0, 1, 2}
    base = _uids(tmp_path / "base.dcm", src, base_labels, affine, NAMES)
    again_labels, _ = _mask(volume)
    assert _uids(tmp_path / "again.dcm", src, again_labels, affine, NAMES) == base

    variants = {
        "largest_component": _mask(volume, largest_component=True)[0],
        "tta_flip": _mask(volume, tta_flip=True)[0],
        "labels=[liver]": _mask(volume, keep=[1])[0],
    }
    seen = {base[0]}
    for name, labels in variants.items():
        assert not np.array_equal(labels, base_labels), f"{name} did not change the mask: the test proves nothing"
        names = {1: "liver"} if name == "labels=[liver]" else NAMES
        sop, series = _uids(tmp_path / f"{name}.dcm", src, labels, affine, names)
        assert sop not in seen and series != base[1], name
        seen.add(sop)
    labelmap = _uids(tmp_path / "labelmap.dcm", src, base_labels, affine, NAMES, seg_type="LABELMAP")
    assert labelmap[0] not in seen and labelmap[1] != base[1]


def test_deidentified_seg_uids_follow_the_options_too(tmp_path: Path, scene: tuple[Path, Path]) -> None:
    volume, src = scene
    labels, affine = _mask(volume)
    first = _uids(tmp_path / "a.dcm", src, labels, affine, NAMES, pseudo=True)
    assert _uids(tmp_path / "b.dcm", src, labels.copy(), affine, NAMES, pseudo=True) == first
    pruned, _ = _mask(volume, largest_component=True)
    assert _uids(tmp_path / "c.dcm", src, pruned, affine, NAMES, pseudo=True)[0] != first[0]
