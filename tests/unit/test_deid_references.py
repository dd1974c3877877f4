"""Referential integrity after UID remapping: a SEG still resolves against its CT series."""

from __future__ import annotations

from pathlib import Path

import pydicom

from imaging.deid.export import deidentify_export
from imaging.keys import Pseudonymizer
from tests.unit.deid_factory import SECRET, write_ct_series, write_seg

PSEUDO = Pseudonymizer(SECRET)
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def test_seg_references_resolve_after_deid(tmp_path: Path) -> None:
    export = tmp_path / "export"
    ct_paths = write_ct_series(export / "ct", n=4)
    write_seg(ct_paths, export / "seg" / "seg.dcm")
    originals = {pydicom.dcmread(p).SOPInstanceUID for p in ct_paths}
    out = tmp_path / "out"
    summary = deidentify_export(export, out, PSEUDO, progress=False)
    assert summary.written == 5 and summary.withheld == 0

    datasets = [pydicom.dcmread(p) for p in sorted(out.rglob("*.dcm"))]
    segs = [ds for ds in datasets if ds.SOPClassUID == SEG_CLASS]
    cts = [ds for ds in datasets if ds.SOPClassUID != SEG_CLASS]
    assert len(segs) == 1 and len(cts) == 4
    seg = segs[0]
    ct_series = {ds.SeriesInstanceUID for ds in cts}
    ct_sops = {ds.SOPInstanceUID for ds in cts}
    assert len(ct_series) == 1 and ct_sops.isdisjoint(originals)
    assert all(uid.startswith("2.25.") for uid in ct_sops | ct_series)

    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID in ct_series
    assert {item.ReferencedSOPInstanceUID for item in ref.ReferencedInstanceSequence} == ct_sops
    # Per-frame derivation references point at the remapped CT instances too.
    sources = {
        src.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for der in frame.DerivationImageSequence
        for src in der.SourceImageSequence
    }
    assert sources and sources <= ct_sops
    # One frame of reference, one study, one subject across SEG and CT.
    assert {ds.FrameOfReferenceUID for ds in datasets} == {seg.FrameOfReferenceUID}
    assert {ds.StudyInstanceUID for ds in datasets} == {seg.StudyInstanceUID}
    assert {ds.PatientID for ds in datasets} == {seg.PatientID}
    # Well-known UIDs untouched, the SEG's own series distinct.
    assert {item.ReferencedSOPClassUID for item in ref.ReferencedInstanceSequence} == {
        cts[0].SOPClassUID
    }
    assert seg.SeriesInstanceUID not in ct_series
    # The SEG lands in its own series folder next to the CT's, under one subject/study.
    seg_dirs = {p.parent.relative_to(out).parts[:2] for p in out.rglob("*.dcm")}
    assert len(seg_dirs) == 1
