"""The SEG `imaging infer` writes: header de-identified with the configured options, preamble zero."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
from hydra import compose, initialize_config_dir

from imaging.deid.apply import deidentify_dataset
from imaging.deid.options import DeidOptions
from imaging.dicom.seg import load_source, write_seg
from tests.unit.test_seg_writer import CODES, PSEUDO, nifti_mask, write_source

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_seg_header_follows_the_configured_options(tmp_path: Path) -> None:
    source = load_source(write_source(tmp_path / "src", "axial"))
    labels, affine = nifti_mask()
    header = pydicom.dcmread(source.paths[0], stop_before_pixels=True)
    for name, options in (("default", None), ("full-dates", DeidOptions(retain_longitudinal_full_dates=True,
                                                                          retain_longitudinal_modified_dates=False))):
        res = write_seg(tmp_path / f"{name}.dcm", source, labels, affine, {1: "liver", 3: "spleen"}, CODES,
                        algorithm_name="unet", algorithm_version="3", pseudonymizer=PSEUDO, deid_options=options)
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
                                            "seg.deid_options.keep_age_90_plus=true"])
        deid = compose("deid", overrides=["input_dir=x", "output_dir=x"])
        ingest = compose("ingest", overrides=["input_dir=x", "output_dir=x"])
    from imaging.pipelines.infer import _seg_deid_options

    opts = _seg_deid_options(infer)
    assert isinstance(opts, DeidOptions) and opts.keep_age_90_plus
    assert DeidOptions.from_mapping(dict(deid.deid.options)) == DeidOptions.from_mapping(dict(ingest.deid_options))
