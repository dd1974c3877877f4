"""Selection rules on the synthetic export, ingested for real (no fakes).

The export's normal subjects each have a CT study (thin portal-venous 5 mm series
with its ground-truth SEG, a thick 10 mm reconstruction) and an MR study; the
tricky CT study holds a localizer, a secondary capture, an SR, a gantry-tilted, an
oblique, a JPEG 2000 lossless and a too-short series. Expected choices come from
the generator's manifest (descriptions and flags), not from the rule code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from imaging.dicom.catalog import read_catalog
from imaging.keys import Pseudonymizer
from imaging.pipelines.ingest import ingest
from imaging.resources import CONF_DIR
from imaging.selection.apply import resolve_rule
from imaging.selection.report import write_study_report
from imaging.selection.select import select_series
from imaging.synth import generate

REPO = Path(__file__).resolve().parents[2]
PSEUDO = Pseudonymizer.from_config(demo_key=True)
CASES = ["localizer", "secondary_capture", "sr", "gantry_tilt", "oblique", "compressed_j2k", "too_few_slices"]
SUBJECTS = 2


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("select")
    manifest = generate(root / "export", subjects=SUBJECTS, seed=11, cases=CASES, dicomdir=False)
    ingest(root / "export", root / "dataset", PSEUDO, private_dir=root / "dataset.private", progress=False)
    yield {"root": root, "manifest": manifest, "catalog": read_catalog(root / "dataset"),
           "dataset": root / "dataset", "private": root / "dataset.private"}


def _rule(*overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("infer", overrides=["model_uri=models:/x@champion", "input=/x", "output_dir=/x",
                                          "inference/select@select=ct_axial_soft", *overrides])
    return resolve_rule(OmegaConf.to_container(cfg.select), None)


def _key(uid: str, kind: str) -> str:
    return PSEUDO.key(uid, kind)


def test_thin_soft_axial_rule_picks_exactly_the_thin_pv_series(synth: dict[str, Any], tmp_path: Path) -> None:
    sel = select_series(synth["catalog"], _rule(), synth["dataset"], synth["private"])
    by_study = {s.study_key: s for s in sel.studies}
    normal = [e for e in synth["manifest"]["series"] if e["subject"] <= SUBJECTS]
    thin = [e for e in normal if e["modality"] == "CT" and e["description"] == "CT ABDOMEN PV 5.0"]
    assert len(thin) == SUBJECTS
    for e in thin:  # exactly that one in every CT study
        study = by_study[_key(e["study_instance_uid"], "study")]
        assert study.selected == [_key(e["series_instance_uid"], "series")]
        rejected = {r.series_key: r for r in study.rejected}
        thick = next(x for x in normal if x["study_instance_uid"] == e["study_instance_uid"]
                     and x["description"] == "CT ABDOMEN PV 10.0")
        assert rejected[_key(thick["series_instance_uid"], "series")].by == ["thin"]
        seg = next(x for x in normal if x["study_instance_uid"] == e["study_instance_uid"] and x["modality"] == "SEG")
        assert rejected[_key(seg["series_instance_uid"], "series")].by == ["ingest"]
    mr_studies = {e["study_instance_uid"] for e in normal if e["modality"] == "MR"}
    for uid in mr_studies:  # a study without a match is a row, not an error
        study = by_study[_key(uid, "study")]
        assert study.status == "no_match" and study.selected == []
        assert all("ct" in r.by for r in study.rejected if r.by != ["ingest"])
    assert len(sel.rows) == SUBJECTS

    path = write_study_report(tmp_path, sel)
    text = path.read_text()
    assert text.count("\n") == len(sel.studies) + 1
    assert "no_match" in text and "CT ABDOMEN" not in text  # keys only, no descriptions


def test_tricky_study_rejections_name_the_rule(synth: dict[str, Any]) -> None:
    # The case series are 6 mm and the tilted one is 15 deg off axial: widen "thin" and the
    # axial tolerance so they reach QC (the oblique one, about 28 deg off, still does not).
    rule = _rule("select.match.all.3.slice_thickness=[null,6.0]", "select.match.all.2.tolerance_deg=20")
    sel = select_series(synth["catalog"], rule, synth["dataset"], synth["private"])
    entries = [e for e in synth["manifest"]["series"] if e["subject"] == SUBJECTS + 1]
    study = next(s for s in sel.studies if s.study_key == _key(entries[0]["study_instance_uid"], "study"))
    why = {r.series_key: r for r in study.rejected}

    def by_flag(flag: str) -> list[str]:
        keys = [_key(e["series_instance_uid"], "series") for e in entries if flag in e["flags"]]
        assert keys, flag
        return [",".join(why[k].by) if k in why else "selected" for k in keys]

    assert by_flag("localizer") == ["ingest"]
    assert by_flag("secondary_capture") == ["ingest"]
    assert by_flag("sr") == ["ingest"]
    assert "qc.max_tilt_deg" in by_flag("tilt:15")[0]
    assert "axial" in by_flag("oblique")[0].split(",")
    assert "qc.min_slices" in by_flag("too_few_slices")[0] or "ingest" in by_flag("too_few_slices")[0]
    # JPEG 2000 *lossless* passes lossless_only: it is a candidate (selected or lost the tie-break only).
    assert by_flag("compressed")[0] in ("selected", "tie_break")
    assert len(study.selected) == 1


def test_per_study_all_and_contrast_condition(synth: dict[str, Any]) -> None:
    rule = _rule("select.per_study=all", "select.match.all.3.slice_thickness=[null,12]")
    sel = select_series(synth["catalog"], rule, synth["dataset"], synth["private"])
    normal_ct = {e["study_instance_uid"] for e in synth["manifest"]["series"]
                 if e["subject"] <= SUBJECTS and e["modality"] == "CT"}
    for uid in normal_ct:  # thin and thick both pass: all of them are kept
        assert len(next(s for s in sel.studies if s.study_key == _key(uid, "study")).selected) == 2
    # The synthetic CT carries a contrast agent: a non-contrast rule matches nothing.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("infer", overrides=["model_uri=models:/x@champion", "input=/x", "output_dir=/x",
                                          "inference/select@select=ct_axial_soft"])
    raw = OmegaConf.to_container(cfg.select)
    raw["match"]["all"].append({"name": "non_contrast", "contrast": False})
    sel = select_series(synth["catalog"], resolve_rule(raw, None), synth["dataset"], synth["private"])
    assert sel.rows == [] and all(s.status == "no_match" for s in sel.studies)
