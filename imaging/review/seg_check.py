"""Confirm that a DICOM SEG lands on its source series, read back with highdicom.

Checks, each reported with its evidence:

1. every SEG frame lies on a source slice (ImagePositionPatient within ``tol_mm``)
   with the source's orientation;
2. every frame references a source instance (directly, or through the keyed
   pseudonyms when the SEG was written de-identified and the pseudonymizer is
   given), and that instance is the one at the frame's position;
3. the SEG's frame of reference is the source's;
4. optionally, the pixels: each frame equals the NIfTI prediction sampled on the
   referenced source frame, and no source frame with foreground is missing.

Source headers are read without pixel data. Nothing here prints source paths
or identifiers: the result holds counts, distances and segment names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom

from imaging.dicom.source_frames import FrameGeometry, frame_geometry, sample_labels
from imaging.keys import Pseudonymizer
from imaging.review.dataset import load_nifti


@dataclass
class _SourceFrame:
    sop_uid: str
    frame: int
    geom: FrameGeometry
    frame_of_reference: str


@dataclass
class SegCheck:
    """The outcome of :func:`seg_agrees_with_source`; ``ok`` when ``problems`` is empty."""

    n_frames: int
    n_source_frames: int
    segments: dict[int, str]
    identity: str  # source | deidentified | unknown (UIDs could not be matched)
    frames_on_source: int  # SEG frames within tol of a source frame position
    max_offset_mm: float
    orientation_matches: bool
    references_resolve: bool | None  # None: pseudonymised UIDs and no pseudonymizer given
    references_match_positions: bool | None
    frame_of_reference_matches: bool | None
    mask_frames_equal: int | None = None  # frames equal to the resampled NIfTI (None: not checked)
    missing_frames: int | None = None  # source frames with foreground but no SEG frame
    segment_volumes_ml: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> pd.DataFrame:
        """One row per check: what was checked, the result, the evidence."""
        def res(v: bool | None) -> str:
            return "n/a" if v is None else ("pass" if v else "FAIL")

        rows = [
            ("frames lie on source slices", res(self.frames_on_source == self.n_frames),
             f"{self.frames_on_source}/{self.n_frames} frames, max offset {self.max_offset_mm:.3g} mm"),
            ("orientation = source", res(self.orientation_matches), "ImageOrientationPatient"),
            ("referenced instances exist in source", res(self.references_resolve), f"identity: {self.identity}"),
            ("referenced instance is the one at the frame position", res(self.references_match_positions), ""),
            ("frame of reference = source", res(self.frame_of_reference_matches), "FrameOfReferenceUID"),
        ]
        if self.mask_frames_equal is not None:
            rows.append(("pixels = NIfTI sampled on source frames", res(self.mask_frames_equal == self.n_frames),
                         f"{self.mask_frames_equal}/{self.n_frames} frames equal"))
            rows.append(("no source frame with foreground missing", res(self.missing_frames == 0),
                         f"{self.missing_frames} missing"))
        return pd.DataFrame(rows, columns=["check", "result", "evidence"])


def source_files_for(private_dir: str | os.PathLike[str], series_key: str) -> list[Path]:
    """The source DICOM files of a series, from ingest's private ``sources/<series_key>.json``.

    Raises:
        FileNotFoundError: no sources index for the series (names the file).
    """
    path = Path(private_dir) / "sources" / f"{series_key}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no sources index '{path}': the private side of the ingest is needed")
    return [Path(p) for p in json.loads(path.read_text(encoding="utf-8"))["files"]]


def _source_frames(files: Sequence[str | os.PathLike[str]]) -> list[_SourceFrame]:
    out = []
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for f in range(1, int(ds.get("NumberOfFrames", 1) or 1) + 1):
            out.append(_SourceFrame(str(ds.SOPInstanceUID), f, frame_geometry(ds, f, f"source[{i}]"),
                                    str(ds.get("FrameOfReferenceUID", ""))))
    return out


def _seg_frames(seg: hd.seg.Segmentation) -> list[tuple[np.ndarray, np.ndarray, str, int, int]]:
    """(position, orientation, referenced SOP UID, referenced frame, segment number) per SEG frame."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    out = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        ori_src = item if "PlaneOrientationSequence" in item else shared
        src = item.DerivationImageSequence[0].SourceImageSequence[0]
        ref_frame = src.get("ReferencedFrameNumber")
        ref_frame = int(ref_frame[0] if isinstance(ref_frame, pydicom.multival.MultiValue) else ref_frame or 1)
        seg_id = item.get("SegmentIdentificationSequence")
        out.append((np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float),
                    np.asarray(ori_src.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float),
                    str(src.ReferencedSOPInstanceUID), ref_frame,
                    int(seg_id[0].ReferencedSegmentNumber) if seg_id else 0))
    return out


def _uid_map(sources: list[_SourceFrame], referenced: set[str], pseudo: Pseudonymizer | None
             ) -> tuple[str, dict[str, str]]:
    """(identity, UID as written in the SEG -> source UID) for SOP instance UIDs."""
    raw = {s.sop_uid for s in sources}
    if referenced & raw:
        return "source", {u: u for u in raw}
    if pseudo is not None:
        mapped = {pseudo.uid(u): u for u in raw}
        if referenced & set(mapped):
            return "deidentified", mapped
    return "unknown", {}


def _slice_spacing(sources: list[_SourceFrame]) -> float:
    normal = np.cross(sources[0].geom.iop[:3], sources[0].geom.iop[3:])
    along = np.sort(np.unique(np.round([float(np.dot(s.geom.ipp, normal)) for s in sources], 4)))
    return float(np.median(np.diff(along))) if len(along) > 1 else 1.0


def seg_agrees_with_source(seg_path: str | os.PathLike[str], source_files: Sequence[str | os.PathLike[str]], *,
                           pseudonymizer: Pseudonymizer | None = None,
                           labels_nifti: str | os.PathLike[str] | None = None,
                           label_names: Mapping[int, str] | None = None, tol_mm: float = 0.01) -> SegCheck:
    """Check a SEG against its source instances (see the module docstring).

    Args:
        seg_path: the DICOM SEG (``<out>/<series_key>/seg.dcm``).
        source_files: the source series' files (:func:`source_files_for`).
        pseudonymizer: the project secret's pseudonymizer, to resolve a de-identified SEG's references.
        labels_nifti: the prediction (``seg.nii.gz``) to compare pixels with; needs ``label_names``.
        label_names: label value in ``labels_nifti`` -> name (the SEG's segment labels).
        tol_mm: the largest distance between a frame and its source slice that counts as on it.

    Raises:
        ValueError: no source file, or ``labels_nifti`` without ``label_names``.
        FileNotFoundError: the SEG or a source file is missing.
        imaging.dicom.source_frames.SegGeometryError: a source frame lacks position/orientation/spacing.
    """
    if not source_files:
        raise ValueError(f"no source files given for SEG '{seg_path}'")
    if labels_nifti is not None and not label_names:
        raise ValueError("labels_nifti needs label_names (label value -> segment label)")
    seg = hd.seg.segread(str(seg_path))
    segments = {int(n): str(seg.get_segment_description(n).SegmentLabel) for n in seg.segment_numbers}
    sources = _source_frames(source_files)
    frames = _seg_frames(seg)
    problems: list[str] = []
    positions = np.stack([s.geom.ipp for s in sources])
    nearest, offsets = [], []
    for pos, *_ in frames:
        dist = np.linalg.norm(positions - pos, axis=1)
        nearest.append(int(dist.argmin()))
        offsets.append(float(dist.min()))
    on_source = sum(o <= tol_mm for o in offsets)
    if on_source < len(frames):
        problems.append(f"{len(frames) - on_source} SEG frame(s) are not on a source slice (max {max(offsets):.3g} mm)")
    orientation_ok = all(np.allclose(o, sources[k].geom.iop, atol=1e-4) for (_, o, *_), k in zip(frames, nearest, strict=True))
    if not orientation_ok:
        problems.append("a SEG frame's orientation differs from its source slice")

    referenced = {f[2] for f in frames}
    identity, to_source = _uid_map(sources, referenced, pseudonymizer)
    resolve: bool | None = None
    match_pos: bool | None = None
    for_match: bool | None = None
    if identity != "unknown":
        resolve = referenced <= set(to_source)
        index = {(s.sop_uid, s.frame): k for k, s in enumerate(sources)}
        match_pos = all(index.get((to_source.get(f[2], ""), f[3])) == k for f, k in zip(frames, nearest, strict=True))
        src_for = sources[0].frame_of_reference
        expected_for = src_for if identity == "source" else (pseudonymizer.uid(src_for) if pseudonymizer else "")
        for_match = str(seg.get("FrameOfReferenceUID", "")) == expected_for
        problems += [msg for ok, msg in ((resolve, "a referenced SOP instance is not in the source series"),
                                         (match_pos, "a frame references another instance than the one at its position"),
                                         (for_match, "FrameOfReferenceUID differs from the source's")) if not ok]
    elif pseudonymizer is not None:
        resolve = False
        problems.append("no referenced SOP instance matches the source (raw or pseudonymised)")

    pixels = np.asarray(seg.pixel_array).reshape(len(frames), int(seg.Rows), int(seg.Columns))
    pixel_mm2 = float(np.prod(sources[0].geom.spacing))
    dz = _slice_spacing(sources)
    labelmap = str(seg.SegmentationType) == "LABELMAP"
    volumes: dict[str, float] = {}
    for number, name in segments.items():
        count = sum(int((px == number).sum() if labelmap else (px > 0).sum())
                    for px, f in zip(pixels, frames, strict=True) if labelmap or f[4] == number)
        volumes[name] = round(count * pixel_mm2 * dz / 1000.0, 4)

    check = SegCheck(len(frames), len(sources), segments, identity, on_source, max(offsets, default=0.0),
                     orientation_ok, resolve, match_pos, for_match, segment_volumes_ml=volumes, problems=problems)
    if labels_nifti is not None:
        _check_pixels(check, labels_nifti, label_names or {}, sources, frames, nearest, pixels, labelmap)
    return check


def _check_pixels(check: SegCheck, labels_nifti: str | os.PathLike[str], label_names: Mapping[int, str],
                  sources: list[_SourceFrame], frames: list[tuple[np.ndarray, np.ndarray, str, int, int]],
                  nearest: list[int], pixels: np.ndarray, labelmap: bool) -> None:
    img = load_nifti(labels_nifti)
    labels = np.asarray(img.dataobj)
    value_of = {name: v for v, name in label_names.items()}
    if missing := sorted(set(check.segments.values()) - set(value_of)):
        check.problems.append(f"segment label(s) {missing} are not model labels {sorted(value_of)}")
        return
    sampled = {k: sample_labels(labels, img.affine, sources[k].geom) for k in set(nearest) | set(range(len(sources)))}
    equal = 0
    for px, f, k in zip(pixels, frames, nearest, strict=True):
        if labelmap:
            expected = np.zeros_like(px)
            for number, name in check.segments.items():
                expected[sampled[k] == value_of[name]] = number
            equal += int(np.array_equal(px, expected))
        else:
            equal += int(np.array_equal(px > 0, sampled[k] == value_of[check.segments[f[4]]]))
    have = {(k, f[4]) for f, k in zip(frames, nearest, strict=True)}
    need = {(k, 0 if labelmap else number) for k, plane in sampled.items() for number, name in check.segments.items()
            if (plane == value_of[name]).any()}
    check.mask_frames_equal, check.missing_frames = equal, len(need - have)
    if equal < check.n_frames:
        check.problems.append(f"{check.n_frames - equal} SEG frame(s) differ from the NIfTI prediction")
    if need - have:
        check.problems.append(f"{len(need - have)} source frame(s) with foreground have no SEG frame")
