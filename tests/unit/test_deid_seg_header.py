"""The SEG `imaging infer` writes: header de-identified with the configured options, preamble zero."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
import pytest
from hydra import compose, initialize_config_dir

from imaging.deid.apply import deidentify_dataset
from imaging.deid.options import DeidOptions
from imaging.deid.seg_header import header_deid
from imaging.dicom.seg import write_seg
from imaging.dicom.source_frames import load_source
from imaging.resources import CONF_DIR
from tests.unit.test_seg_writer import CODES, PSEUDO, nifti_mask, write_source

CONF = CONF_DIR


def test_seg_header_follows_the_configured_options(tmp_path: Path) -> None:
    source = load_source(write_source(tmp_path / "src", "axial"))
    labels, affine = nifti_mask()
    header = pydicom.dcmread(source.paths[0], stop_before_pixels=True)
    for name, options in (("default", None), ("full-dates", DeidOptions(retain_longitudinal_full_dates=True,
                                                                          retain_longitudinal_modified_dates=False))):
        res = write_seg(tmp_path / f"{name}.dcm", source, labels, affine, {1: "liver", 3: "spleen"}, CODES,
                        algorithm_name="unet", algorithm_version="3", pseudonymizer=PSEUDO, header_deid=header_deid(PSEUDO, options))
        assert res is not None
        raw = res.path.read_bytes()
        assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"
        seg = pydicom.dcmread(res.path)
        deid = deidentify_dataset(copy.deepcopy(header), PSEUDO, options)
        assert deid is not None
        for kw in ("PatientID", "StudyInstanceUID", "StudyDate", "LongitudinalTemporalInformationModified"):
            assert str(seg.get(kw)) == str(deid.get(kw)), (name, kw)
        if options is not None:  # full dates kept: the study date is the source's
            assert seg.StudyDate == header.StudyDate and seg.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_infer_config_carries_the_deid_options() -> None:
    """`imaging infer` and `imaging deid` compose the same options file."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        infer = compose("infer", overrides=["model_uri=x", "input=x", "output_dir=x",
                                            "deid_options.keep_age_90_plus=true"])
        deid = compose("deid", overrides=["input_dir=x", "output_dir=x"])
        ingest = compose("ingest", overrides=["input_dir=x", "output_dir=x"])
    from imaging.pipelines.infer.run import _seg_deid_options

    opts = _seg_deid_options(infer)
    assert isinstance(opts, DeidOptions) and opts.keep_age_90_plus
    assert DeidOptions.from_mapping(dict(deid.deid_options)) == DeidOptions.from_mapping(dict(ingest.deid_options))


_WHEN = {"ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime", "StructureSetDate",
         "StructureSetTime", "SeriesDate", "SeriesTime"}


# Made fresh by highdicom at each write: a time stamp, a random organisation UID.
_FRESH = _WHEN | {"ContributionDateTime", "DimensionOrganizationUID"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items()
                if not (len(k) == 8 and pydicom.datadict.keyword_for_tag(int(k, 16)) in _FRESH)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _content(path: Path) -> dict:
    return _strip(pydicom.dcmread(path).to_json_dict())


@pytest.mark.parametrize("options", [None, DeidOptions(retain_uids=True),
                                     DeidOptions(overrides=(("FrameOfReferenceUID", "K"),))],
                         ids=["default", "retain_uids", "override"])
def test_seg_and_rtstruct_from_per_image_headers_equal_whole_header_deid(tmp_path: Path, monkeypatch,
                                                                          options) -> None:
    """Slices after the first: only what highdicom reads, UIDs mapped as deid maps them; the same objects
    as with each slice's whole header de-identified, with default options and with retain_uids."""
    import imaging.deid.seg_header as seg_mod
    from imaging.dicom.rtstruct import write_rtstruct

    source = load_source(write_source(tmp_path / "src", "axial", patient="CANARYxPHI"))
    labels, affine = nifti_mask()
    names = {1: "liver", 3: "spleen"}
    for flavour in ("fast", "whole"):
        if flavour == "whole":
            monkeypatch.setattr(seg_mod, "_per_image_deidentified", seg_mod.deidentified_header)
        write_seg(tmp_path / f"{flavour}.dcm", source, labels, affine, names, CODES, algorithm_name="unet",
                  algorithm_version="3", pseudonymizer=PSEUDO, header_deid=header_deid(PSEUDO, options))
        write_rtstruct(tmp_path / f"{flavour}-rt.dcm", source, labels, affine, names, algorithm_name="unet",
                       algorithm_version="3", pseudonymizer=PSEUDO, header_deid=header_deid(PSEUDO, options))
    assert len(source.headers) > 2
    fast, whole = _content(tmp_path / "fast.dcm"), _content(tmp_path / "whole.dcm")
    assert fast == whole
    assert _content(tmp_path / "fast-rt.dcm") == _content(tmp_path / "whole-rt.dcm")
    # and the references are to the de-identified instances (the source's under retain_uids)
    refs = pydicom.dcmread(tmp_path / "fast.dcm").ReferencedSeriesSequence[0].ReferencedInstanceSequence
    src_uids = {str(h.SOPInstanceUID) for h in source.headers}
    assert len(refs) == len(source.headers)
    expected = src_uids if options is not None and options.retain_uids else {PSEUDO.uid(u) for u in src_uids}
    assert {str(r.ReferencedSOPInstanceUID) for r in refs} == expected
