"""Selection rules: validation names the key; AND/OR, orientation, ranges, tie-breaks, QC, output flags."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from imaging.errors import UsageError
from imaging.selection.apply import LabelSubsetPredictor, label_subset, resolve_rule
from imaging.selection.features import SeriesFeatures, plane_of
from imaging.selection.qc import output_flags, qc_failures
from imaging.selection.rules import RuleError, parse_rule
from imaging.selection.select import select_series  # noqa: F401  (import check: the package wires up)

BASE = SeriesFeatures("s1", "st", "sub", "ok", modality="CT", body_part="ABDOMEN",
                      image_type=("ORIGINAL", "PRIMARY", "AXIAL"), plane="axial", obliquity_deg=0.0,
                      slice_thickness=1.0, slice_spacing=1.0, pixel_spacing=0.7, n_slices=300, contrast=True,
                      kernel="B30f", description="ABD PV 1.0 SOFT", acquired="20240101120000", lossy=False)


def _rule(match: Any, **kw: Any):
    return parse_rule({"name": "r", "match": match, **kw})


@pytest.mark.parametrize("raw, key", [
    ({"name": "r", "match": {"all": [{"name": "a", "slice_thicknes": [0, 3]}]}},
     "select.match.all[0].slice_thicknes: unknown key (did you mean 'slice_thickness'?)"),
    ({"name": "r", "match": {"all": [{"modality": "CT"}]}}, "select.match.all[0].name"),
    ({"name": "r", "match": {"all": [{"name": "t", "slice_thickness": [5, 1]}]}},
     "select.match.all[0].slice_thickness: min 5.0 > max 1.0"),
    ({"name": "r", "match": {"any": [{"name": "d", "description": "(unclosed"}]}},
     "select.match.any[0].description: invalid regular expression"),
    ({"name": "r", "match": {"all": [{"name": "o", "orientation": "axail"}]}}, "select.match.all[0].orientation"),
    ({"name": "r", "per_study": "some", "match": {"all": [{"name": "m", "modality": "CT"}]}}, "select.per_study"),
    ({"name": "r", "tie_break": ["newest"], "match": {"all": [{"name": "m", "modality": "CT"}]}},
     "select.tie_break[0]"),
    ({"name": "r", "match": {"all": [{"name": "m", "modality": "CT"}]}, "qc": {"max_tilt": 0}},
     "select.qc.max_tilt: unknown key (did you mean 'max_tilt_deg'?)"),
    ({"name": "r", "match": {"all": [{"name": "m", "modality": "CT"}]}, "flags": {"volume_ml": {"liver": [9, 1]}}},
     "select.flags.volume_ml.liver"),
    ({"name": "r", "match": {"all": [{"name": "m"}]}}, "select.match.all[0]: condition 'm' has no criterion"),
    ({"name": "r", "matc": {}}, "select.matc: unknown key"),
    ({"name": "r", "match": {"all": [{"name": "c", "contrast": "yes"}]}}, "select.match.all[0].contrast"),
])
def test_validation_names_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rule(raw)
    assert isinstance(err.value, UsageError)  # exit 2 through the CLI error contract
    assert str(err.value).startswith(key), str(err.value)


def test_and_or_groups_and_named_rejections() -> None:
    rule = _rule({"all": [{"name": "ct", "modality": ["CT"]},
                          {"name": "thin", "slice_thickness": [None, 3]},
                          {"any": [{"name": "soft_kernel", "kernel": "^b3"},
                                   {"name": "soft_desc", "description": "SOFT"}], "name": "soft"}]})
    assert rule.rejections(BASE) == []
    bone = replace(BASE, kernel="B70f", description="ABD BONE")
    (name, why), = rule.rejections(bone)
    assert name == "soft" and "B70f" in why and "ABD BONE" not in why  # never echo the description
    assert rule.rejections(replace(BASE, kernel="B70f")) == []  # OR: the description still matches
    thick = replace(BASE, slice_thickness=5.0, modality="MR")
    assert [n for n, _ in rule.rejections(thick)] == ["ct", "thin"]
    unknown = replace(BASE, slice_thickness=None)
    assert "unknown" in rule.rejections(unknown)[0][1]


def test_orientation_tolerance_and_planes() -> None:
    assert plane_of(np.array([0, 0, 1.0])) == ("axial", 0.0)
    assert plane_of(np.array([0, 1.0, 0]))[0] == "coronal"
    assert plane_of(np.array([-1.0, 0, 0]))[0] == "sagittal"
    name, angle = plane_of(np.array([0, np.sin(np.radians(15)), np.cos(np.radians(15))]))
    assert name == "axial" and abs(angle - 15) < 1e-6
    rule = _rule({"all": [{"name": "axial", "orientation": "axial", "tolerance_deg": 10}]})
    assert rule.rejections(replace(BASE, obliquity_deg=9.0)) == []
    assert rule.rejections(replace(BASE, obliquity_deg=15.0))[0][0] == "axial"
    assert rule.rejections(replace(BASE, plane="coronal"))[0][0] == "axial"


def test_image_type_contrast_body_part_ranges() -> None:
    rule = _rule({"all": [{"name": "orig", "image_type": ["original"], "image_type_not": ["LOCALIZER"]},
                          {"name": "cont", "contrast": True}, {"name": "abd", "body_part": ["abdomen", "chest"]},
                          {"name": "n", "n_slices": [50, None]}, {"name": "px", "pixel_spacing": [None, 1.0]}]})
    assert rule.rejections(BASE) == []
    bad = replace(BASE, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), contrast=False, body_part="HEAD",
                  n_slices=20, pixel_spacing=1.5)
    assert [n for n, _ in rule.rejections(bad)] == ["orig", "cont", "abd", "n", "px"]


def _select(rule: Any, feats: list[SeriesFeatures]) -> Any:
    from imaging.selection.select import StudySelection, _decide

    study = StudySelection("st", "sub", rule.name)
    _decide(rule, feats, study)
    return study


def test_tie_breaks_and_per_study() -> None:
    a = replace(BASE, series_key="a", n_slices=300, slice_thickness=1.0, acquired="20240101120000")
    b = replace(BASE, series_key="b", n_slices=300, slice_thickness=0.6, acquired="20240101110000")
    c = replace(BASE, series_key="c", n_slices=150, slice_thickness=0.5, acquired="20240101130000")
    match = {"all": [{"name": "ct", "modality": "CT"}]}
    assert _select(_rule(match), [a, b, c]).selected == ["b"]  # most slices, then thinnest
    assert _select(_rule(match, tie_break=["latest"]), [a, b, c]).selected == ["c"]
    assert _select(_rule(match, tie_break=["thinnest"]), [a, b, c]).selected == ["c"]
    study = _select(_rule(match, per_study="all"), [a, b, c])
    assert sorted(study.selected) == ["a", "b", "c"]
    losers = _select(_rule(match), [a, b, c]).rejected
    assert {r.series_key: r.by for r in losers} == {"a": ["tie_break"], "c": ["tie_break"]}


def test_qc_refuses_with_reasons() -> None:
    qc = parse_rule({"name": "r", "match": {"all": [{"name": "m", "modality": "CT"}]},
                     "qc": {"max_tilt_deg": 0, "uneven_spacing": "refuse", "min_slices": 16,
                            "lossless_only": True}}).qc
    assert qc_failures(BASE, qc) == []
    bad = replace(BASE, tilt_deg=15.0, uneven=True, n_slices=8, lossy=True)
    assert [n for n, _ in qc_failures(bad, qc)] == ["qc.max_tilt_deg", "qc.uneven_spacing", "qc.min_slices",
                                                  "qc.lossless_only"]
    assert qc_failures(replace(BASE, lossy=None), qc)[0][1] == "compression unknown"
    rule = parse_rule({"name": "r", "match": {"all": [{"name": "m", "modality": "CT"}]}, "qc": qc})
    study = _select(rule, [replace(BASE, series_key="tilted", tilt_deg=20.0)])
    assert study.status == "no_match" and study.rejected[0].by == ["qc.max_tilt_deg"]


def test_output_flags() -> None:
    names = {0: "background", 1: "liver", 2: "spleen"}
    flags = parse_rule({"name": "r", "match": {"all": [{"name": "m", "modality": "CT"}]},
                        "flags": {"volume_ml": {"liver": [1, 2]}}}).flags
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 mm3 voxels
    empty = np.zeros((10, 10, 10), np.uint8)
    assert output_flags(empty, affine, names, flags)[0] == "empty mask"
    inside = empty.copy()
    inside[4:6, 4:6, 4:6] = 1  # 8 voxels = 0.064 mL: below range; spleen absent
    got = output_flags(inside, affine, names, flags)
    assert "empty: spleen" in got and any(g.startswith("volume liver 0.1 mL outside [1, 2]") for g in got)
    assert not any("border" in g for g in got)
    edge = inside.copy()
    edge[:, :, 9] = 2
    assert any(g.startswith("touches border: spleen") for g in output_flags(edge, affine, names, flags))


def test_label_subset_and_model_rule_precedence() -> None:
    labels = {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}
    assert label_subset(labels, ["spleen", "liver"]) == {0: "background", 1: "liver", 2: "spleen"}
    assert label_subset(labels, None) == labels
    with pytest.raises(UsageError, match=r"inference.labels\[1\]: 'livr'.*did you mean 'liver'"):
        label_subset(labels, ["spleen", "livr"])

    class Inner:
        device = "cpu"

        def invert(self, prepared: Any, label: Any) -> tuple[np.ndarray, np.ndarray]:
            return np.array([0, 1, 2, 3], np.uint8), np.eye(4)

    wrapped = LabelSubsetPredictor(Inner(), [0, 2])
    assert wrapped.invert(None, None)[0].tolist() == [0, 0, 2, 0] and wrapped.device == "cpu"

    model_rule = {"name": "from_model", "per_study": "one", "match": {"all": [{"name": "m", "modality": "CT"}]}}
    default = {"use_model_rule": True, "name": None, "per_study": None, "match": None, "qc": None}
    assert resolve_rule(default, model_rule).name == "from_model"  # type: ignore[union-attr]
    assert resolve_rule({**default, "per_study": "all"}, model_rule).per_study == "all"  # type: ignore[union-attr]
    assert resolve_rule(default, None) is None  # no rule anywhere: the old behaviour
    own = {"name": "mine", "match": {"all": [{"name": "m", "modality": "MR"}]}}
    assert resolve_rule(own, model_rule).name == "mine"  # type: ignore[union-attr]
    with pytest.raises(RuleError, match=r"^select \(the model's rule\)\.per_study"):
        resolve_rule({**default, "per_study": "three"}, model_rule)
