"""The round trip with a real Orthanc: STOW a synthetic CT export, `infer input=URL seg.push=true`, read back.

Checks against the archive itself: every frame of every SEG read back from Orthanc
sits on the CT instance it references (position from that instance's header as
Orthanc serves it) and equals seg.nii.gz sampled there (nibabel); dcmqi rebuilds the
same mask from the SEG it got from Orthanc; a re-run stores no duplicate; a study
that is not on the server is one row and the rest goes on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicomweb_client.api import DICOMwebClient
from hydra import compose, initialize_config_dir

from imaging.errors import UsageError
from imaging.models.registry import build_network
from imaging.pipelines.infer.remote import read_transfers
from imaging.pipelines.infer.run import run_inference
from imaging.resources import CONF_DIR
from imaging.synth import generate
from imaging.tracking.registry import register_model
from tests.fixtures.orthanc import Orthanc
from tests.unit.test_seg_writer import _expected

pytestmark = [pytest.mark.integration, pytest.mark.orthanc]
REPO = Path(__file__).resolve().parents[2]
PRE = {"task": "segmentation", "modality": "CT", "orientation": "RAS", "spacing": [4.0, 4.0, 5.0],
       "intensity": {"kind": "window", "a_min": -200, "a_max": 300, "b_min": 0.0, "b_max": 1.0, "clip": True},
       "roi_size": [32, 32, 16]}
LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(132)[128:] == b"DICM"


@pytest.fixture(scope="module")
def env(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("infer-dicomweb")
    export = root / "export"
    generate(export, subjects=1, seed=5, cases=["gantry_tilt"], dicomdir=False)
    files = [p for p in sorted(export.rglob("*")) if p.is_file() and _is_dicom(p)]
    orthanc.clear()
    orthanc.stow(files)
    previous, previous_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    (root / "mlflow").mkdir()
    # Both: an earlier test's MlflowTracker may have pointed the registry elsewhere.
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    exp = mlflow.create_experiment("train", artifact_location=(root / "mlflow" / "artifacts").as_uri())
    torch.manual_seed(0)
    net = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [4, 8],
           "strides": [2], "num_res_units": 0}
    with mlflow.start_run(experiment_id=exp):
        register_model(build_network(net), network_config=net, preprocessing=PRE, labels=LABELS,
                       task="segmentation", name="tiny", alias="champion")
    manifest = json.loads((export / "manifest.json").read_text())
    yield {"root": root, "export": export, "manifest": manifest}
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous_registry)
    orthanc.clear()


def _config(env: dict, orthanc: Orthanc, out: Path, *extra: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("infer", overrides=[
            "model_uri=models:/tiny@champion", f"input={orthanc.dicomweb}", f"output_dir={out}",
            f"paths.root_dir={env['root']}", "demo_key=true", "inference.sw_batch_size=2", "overlay=false",
            "tracking.enabled=false", "seg.identity=source", "seg.push=true", *extra])


def _our_segs(client: DICOMwebClient) -> list[pydicom.Dataset]:
    series = client.search_for_series(search_filters={"Modality": "SEG"})
    out = []
    for s in series:
        study, uid = s["0020000D"]["Value"][0], s["0020000E"]["Value"][0]
        for inst in client.retrieve_series(study, uid):
            if inst.Manufacturer == "imaging":  # not the export's own ground-truth SEG
                out.append(inst)
    return out


def test_round_trip_push_read_back_and_rerun(orthanc: Orthanc, env: dict, tmp_path: Path) -> None:
    out = env["root"] / "out"
    prepared = run_inference(_config(env, orthanc, out, "prepare_only=true"))  # the job before an array
    assert prepared.exit_code == 0 and (out / "work" / "dataset" / "catalog.csv").is_file()
    assert not (out / "done").exists() and (out / "transfers.prepare.csv").is_file()
    outcome = run_inference(_config(env, orthanc, out))
    assert outcome.exit_code == 0
    pulls = [t for t in outcome.transfers if t.stage == "pull"]
    ct_studies = {s["study_instance_uid"] for s in env["manifest"]["series"] if s["modality"] == "CT"}
    assert len(pulls) == len(ct_studies) == 2 and all(t.status == "ok" for t in pulls)  # query: the model's CT
    pushed = [t for t in outcome.transfers if t.stage == "push"]
    assert pushed and all(t.status == "ok" for t in pushed), pushed
    private = out.with_name(out.name + ".private")
    assert not any(uid in (out / "transfers.shard-0-of-1.csv").read_text() for uid in ct_studies)

    client = DICOMwebClient(orthanc.dicomweb)
    segs = _our_segs(client)
    assert len(segs) == len(pushed)
    key_of = {json.loads(p.read_text())["series_instance_uid"]: p.stem for p in (private / "sources").glob("*.json")}
    tilted = {s["series_instance_uid"] for s in env["manifest"]["series"] if "tilt:15" in (s.get("flags") or [])}
    dcmqi_checked = 0
    for seg in segs:
        ref_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
        key = key_of[ref_series]
        nifti = nib.load(str(out / key / "seg.nii.gz"))
        labels = np.asarray(nifti.dataobj)
        metadata = client.retrieve_series_metadata(str(seg.StudyInstanceUID), ref_series)  # WADO-RS metadata
        ct = {str(d.SOPInstanceUID): d for d in (pydicom.Dataset.from_json(m) for m in metadata)}
        value_of = {int(s.SegmentNumber): next(v for v, n in LABELS.items() if n == s.SegmentLabel)
                    for s in seg.SegmentSequence}
        shared = seg.SharedFunctionalGroupsSequence[0]
        ori = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
        spacing = np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, float)
        pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
        for k, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
            ref = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            source = ct[ref]  # the referenced CT instance is on the server, in the referenced series
            pos = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
            np.testing.assert_allclose(pos, np.asarray(source.ImagePositionPatient, float), atol=1e-3)
            np.testing.assert_allclose(ori, np.asarray(source.ImageOrientationPatient, float), atol=1e-4)
            want = _expected(pos, ori, spacing, int(seg.Rows), int(seg.Columns), labels, nifti.affine)
            number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            assert np.array_equal(pixels[k], (want == value_of[number]).astype(np.uint8)), (key, k)
        if ref_series not in tilted:
            dcmqi_checked += _dcmqi_same_mask(seg, labels, nifti.affine, value_of, tmp_path / key)
    assert dcmqi_checked >= 1

    # Re-run, plus a study the server does not have: nothing stored twice, one row for the missing study.
    studies = sorted(ct_studies) + ["1.2.826.0.1.3680043.8.498.999999"]
    again = run_inference(_config(env, orthanc, out, f"study=[{','.join(studies)}]"))
    rows = read_transfers(out / "transfers.shard-0-of-1.csv")
    assert [r["status"] for r in rows if r["stage"] == "pull"].count("error") == 1
    assert {r["status"] for r in rows if r["stage"] == "push"} == {"present"}
    assert len(_our_segs(client)) == len(segs)
    assert again.result.n_skipped_done == outcome.result.n_ok + outcome.result.n_error - again.result.n_error


def _dcmqi_same_mask(seg: pydicom.Dataset, labels: np.ndarray, affine: np.ndarray, value_of: dict[int, int],
                     folder: Path) -> int:
    """dcmqi converts the SEG (as Orthanc served it) back to NIfTI: each voxel it sets is that label."""
    import SimpleITK as sitk

    tool = shutil.which("segimage2itkimage") or str(Path(sys.executable).parent / "segimage2itkimage")
    folder.mkdir(parents=True)
    seg.save_as(folder / "seg.dcm", enforce_file_format=True)
    done = subprocess.run([tool, "--inputDICOM", str(folder / "seg.dcm"), "--outputDirectory", str(folder),
                           "-t", "nifti"], capture_output=True, text=True)
    assert done.returncode == 0 and "ERROR" not in done.stdout + done.stderr, done.stdout[-1500:]
    for number, value in value_of.items():
        img = sitk.ReadImage(str(folder / f"{number}.nii.gz"))
        arr = sitk.GetArrayFromImage(img)
        k, r, c = np.nonzero(arr)
        pts = np.array([img.TransformIndexToPhysicalPoint((int(ci), int(ri), int(ki)))
                        for ki, ri, ci in zip(k, r, c, strict=True)])
        ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(affine), pts * [-1, -1, 1])).astype(int)
        assert len(ijk) and np.all(labels[tuple(ijk.T)] == value)
    return 1


def test_dimse_push_from_a_folder_export(orthanc: Orthanc, env: dict, tmp_path: Path) -> None:
    """An archive without DICOMweb: `infer input=FOLDER seg.push=true seg.dimse.host=...` C-STOREs each SEG."""
    client = DICOMwebClient(orthanc.dicomweb)
    for seg in _our_segs(client):  # the round trip's SEGs (same deterministic UIDs) out of the way
        found = orthanc.request("POST", "/tools/lookup", str(seg.SOPInstanceUID).encode())
        for item in found:  # type: ignore[attr-defined]
            orthanc.request("DELETE", str(item["Path"]))
    assert _our_segs(client) == []
    out = tmp_path / "out"
    cfg = _config(env, orthanc, out, "seg.dimse.host=127.0.0.1", f"seg.dimse.port={orthanc.dicom_port}",
                  f"seg.dimse.called_aet={orthanc.aet}")
    cfg.input = str(env["export"])  # a PACS export folder, not the archive's URL
    outcome = run_inference(cfg)
    pushed = [t for t in outcome.transfers if t.stage == "push"]
    assert pushed and all(t.status == "ok" for t in pushed), pushed
    segs = _our_segs(client)
    assert len(segs) == len(pushed) == outcome.result.n_ok
    assert {str(s.SOPInstanceUID) for s in segs} == {str(pydicom.dcmread(p).SOPInstanceUID)
                                                     for p in out.glob("*/seg.dcm")}
    rows = read_transfers(out / "transfers.shard-0-of-1.csv")
    assert [r["stage"] for r in rows] == ["push"] * len(pushed)

    bad = _config(env, orthanc, tmp_path / "bad", "seg.dimse.host=127.0.0.1", "seg.dimse.port=0")
    bad.input = str(env["export"])
    with pytest.raises(UsageError, match="seg.dimse.port"):
        run_inference(bad)
