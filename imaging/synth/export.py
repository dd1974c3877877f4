"""The export being written: folder layout, subjects, series bookkeeping, manifest.

:class:`Export` hands out opaque, DICOM File-ID compatible paths (nested
``DICOM/P0000001/S0000001/SE000001/IM000001`` or flat ``DICOM/IM000001``), and
collects one manifest entry per series plus every PHI value and UID written.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary

from imaging.synth import phantom as ph
from imaging.synth.canaries import SubjectPhi, patient_folder, subject_canaries, subject_phi
from imaging.synth.geometry import Grid, axial_grid
from imaging.synth.seg import write_label_nifti, write_seg
from imaging.synth.writer import SeriesInfo, SliceOptions, make_uid, write_slices

log = logging.getLogger(__name__)

# Geometry presets: (rows/cols, pixel mm, slices, slice step mm).
SIZES: dict[str, dict[str, tuple[int, float, int, float]]] = {
    "small": {"CT": (96, 4.0, 36, 5.0), "MR": (80, 4.8, 24, 7.0), "case": (64, 6.0, 20, 6.0)},
    "full": {"CT": (256, 1.5, 120, 2.0), "MR": (192, 2.0, 48, 5.0), "case": (128, 3.0, 40, 4.0)},
}
LAYOUTS = ("nested", "flat")
_CLASSIC_IMAGES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"}
_TOP_LEVEL_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


@dataclass
class Subject:
    """One synthetic patient: canaries, anatomy, vendor, study UIDs."""

    index: int
    patient_dir: str
    phi: SubjectPhi
    phantom: ph.Phantom
    vendor: int
    rng: np.random.Generator
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)

    def study(self, export: Export, name: str) -> dict[str, Any]:
        """Study ``name`` ("CT", "MR", ...) of this subject, created on first use."""
        if name not in self.studies:
            n = len(self.studies) + 1
            self.studies[name] = {
                "uid": make_uid(export.seed, self.index, "study", name),
                "frame_uid": make_uid(export.seed, self.index, "frame", name),
                "dir": f"S{n:07d}",
                "next_series": 1,
                "next_dir": 1,
            }
        return self.studies[name]


@dataclass
class Export:
    """State of one export being written."""

    root: Path
    seed: int
    size: str
    layout: str
    series: list[dict[str, Any]] = field(default_factory=list)
    canaries: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    dicom_files: list[str] = field(default_factory=list)
    other_files: list[str] = field(default_factory=list)
    flat_counter: int = 0
    folder_counts: dict[str, int] = field(default_factory=dict)
    subjects: list[Subject] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

    def subject(self, index: int) -> Subject:
        """Build subject ``index`` (1-based); everything derives from (seed, index)."""
        rng = np.random.default_rng([self.seed, index])
        phi = subject_phi(index, self.seed, float(rng.uniform()))
        subject = Subject(index, patient_folder(phi), phi, ph.make_phantom(rng), (index - 1) % 3, rng)
        self.subjects.append(subject)
        return subject

    def all_canaries(self) -> list[str]:
        """Every PHI value written: subjects' canaries (incl. ones added by cases) + descriptions."""
        out = set(self.canaries)
        for subject in self.subjects:
            out.update(subject_canaries(subject.phi))
        return sorted(out)

    def new_series(self, subject: Subject, study_name: str, shared_dir: str | None = None) -> tuple[int, str, str]:
        """Allocate (SeriesNumber, SeriesInstanceUID, folder relative to root)."""
        st = subject.study(self, study_name)
        number = st["next_series"]
        st["next_series"] += 1
        uid = make_uid(self.seed, subject.index, study_name, "series", number)
        if shared_dir is not None:
            folder = shared_dir
        elif self.layout == "flat":
            folder = "DICOM"
        else:
            folder = f"DICOM/{subject.patient_dir}/{st['dir']}/SE{st['next_dir']:06d}"
            st["next_dir"] += 1
        return number, uid, folder

    def file_names(self, folder: str, n: int) -> list[str]:
        """``n`` new relative file paths in ``folder`` (IM000001..., or a global counter when flat)."""
        if self.layout == "flat" or folder == "DICOM":
            start = self.flat_counter
            self.flat_counter += n
            return [f"{folder}/IM{start + i + 1:06d}" for i in range(n)]
        existing = self.folder_counts.get(folder, 0)
        self.folder_counts[folder] = existing + n
        return [f"{folder}/IM{existing + i + 1:06d}" for i in range(n)]

    def add_entry(self, entry: dict[str, Any], in_dicomdir: bool = True) -> dict[str, Any]:
        """Record a series in the manifest (and its files for the DICOMDIR)."""
        self.series.append(entry)
        if in_dicomdir:
            self.dicom_files.extend(entry["files"])
        else:
            self.other_files.extend(entry["files"])
        self.uids.update(u for u in (entry["series_instance_uid"], entry["study_instance_uid"]) if u)
        return entry

    def note_uids(self, ds: Dataset) -> None:
        """Add every instance-specific UID of a written header (any depth) to ``uids``.

        Well-known UIDs (SOP classes, transfer syntaxes, coding schemes) are not PHI.
        """
        if ds.SOPClassUID in _CLASSIC_IMAGES:
            # Classic images hold instance UIDs only at the top level: skip the costly walk.
            self.uids.update(str(ds.get(k)) for k in _TOP_LEVEL_UIDS if ds.get(k))
            return
        for elem in ds.iterall():
            if elem.VR != "UI" or elem.value is None:
                continue
            for value in elem.value if elem.VM > 1 else [elem.value]:
                if value and str(value) not in UID_dictionary:
                    self.uids.add(str(value))

    def collect_uids(self, rel_paths: list[str]) -> None:
        """:meth:`note_uids` of every file in ``rel_paths`` (when no DICOMDIR pass reads them)."""
        for rel in rel_paths:
            self.note_uids(dcmread(self.root / rel, stop_before_pixels=True))


def expected_ok(shape: list[int], **extra: Any) -> dict[str, Any]:
    return {"status": "ok", "reason_contains": None, "n_volumes": 1, "shape": shape, "timepoints": 1, **extra}


def grid_for(export: Export, subject: Subject, kind: str, **kwargs: Any) -> Grid:
    """A preset-size axial grid centred on the subject's anatomy (kwargs override)."""
    n, pixel, slices, step = SIZES[export.size][kind]
    args: dict[str, Any] = {"rows": n, "cols": n, "n_slices": slices, "pixel": pixel, "step": step,
                            "center": (subject.phantom.center[0], subject.phantom.center[1], 0.0)}
    args.update(kwargs)
    return axial_grid(**args)


def new_info(
    export: Export,
    subject: Subject,
    study_name: str,
    modality: str,
    contrast: str,
    what: str,
    grid: Grid,
    *,
    position: str = "HFS",
    shared_dir: str | None = None,
    extra: dict[str, Any] | None = None,
    image_type: list[str] | None = None,
    table: np.ndarray | None = None,
) -> tuple[SeriesInfo, str]:
    """Allocate a series in ``study_name`` of ``subject``: its :class:`SeriesInfo` and folder."""
    number, uid, folder = export.new_series(subject, study_name, shared_dir)
    st = subject.study(export, study_name)
    info = SeriesInfo(modality, contrast, st["uid"], uid, st["frame_uid"], number, what, grid,
                      position, subject.vendor, subject.phi, export.seed, extra=dict(extra or {}),
                      table=table)
    if image_type:
        info.image_type = image_type
    export.canaries.add(subject.phi.series_description(what))
    return info, folder


def series_rng(export: Export, info: SeriesInfo, *parts: int) -> np.random.Generator:
    """The noise generator of one series (independent of the order series are written in)."""
    return np.random.default_rng([export.seed, zlib.crc32(info.series_uid.encode()), *parts])


def record_series(
    export: Export,
    info: SeriesInfo,
    folder: str,
    files: list[str],
    *,
    flags: list[str] | None = None,
    expected: dict[str, Any] | None = None,
    modality: str | None = None,
    sop_class: str | None = None,
    geometry: bool = True,
    **more: Any,
) -> dict[str, Any]:
    """Add the manifest entry of a written series (``files`` in volume k order)."""
    grid = info.grid
    entry: dict[str, Any] = {
        "subject": info.phi.index,
        "patient_id": info.phi.patient_id,
        "study_instance_uid": info.study_uid,
        "series_instance_uid": info.series_uid,
        "series_number": info.series_number,
        "modality": modality or info.modality,
        "sop_class_uid": str(sop_class or info.sop_class),
        "description": info.what,
        "folder": folder,
        "files": list(files),
        "flags": list(flags or []),
        "expected": expected or expected_ok([grid.cols, grid.rows, grid.n_slices]),
        "geometry": {
            "position": info.position,
            "orientation": grid.iop,
            "pixel_spacing": list(grid.spacing),
            "slice_thickness": grid.thickness,
            "tilt": grid.tilt,
            "affine_ras": grid.affine_ras().round(6).tolist() if grid.is_uniform else None,
        } if geometry else None,
        "labels": None,
        **more,
    }
    return export.add_entry(entry)


def volume_series(
    export: Export,
    subject: Subject,
    study_name: str,
    modality: str,
    contrast: str,
    what: str,
    grid: Grid,
    *,
    position: str = "HFS",
    flags: list[str] | None = None,
    expected: dict[str, Any] | None = None,
    labels: bool = False,
    seg: bool = False,
    options: SliceOptions | None = None,
    shared_dir: str | None = None,
    file_order: list[int] | None = None,
    extra: dict[str, Any] | None = None,
    image_type: list[str] | None = None,
    table: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write one classic single-frame series and record it in the manifest.

    Args:
        file_order: optional permutation: slice k is written to file name
            ``file_order[k]`` (shuffled file names).
        Other args: see :class:`~imaging.synth.writer.SeriesInfo` and
            :class:`~imaging.synth.writer.SliceOptions`.

    Returns:
        the manifest entry; ``files`` lists the files in volume k order (sorted
        along the slice normal).
    """
    info, folder = new_info(export, subject, study_name, modality, contrast, what, grid,
                            position=position, shared_dir=shared_dir, extra=extra, image_type=image_type,
                            table=table)
    names = export.file_names(folder, grid.n_slices)
    if file_order is not None:
        names = [names[i] for i in file_order]
    label_vol = write_slices(info, subject.phantom, [export.root / n for n in names],
                             series_rng(export, info), options)
    entry = record_series(export, info, folder, [names[i] for i in grid.sorted_order()],
                          flags=flags, expected=expected)
    if labels:
        entry["labels"] = write_labels(export, subject, info, names, label_vol, seg)
    return entry


def write_labels(export: Export, subject: Subject, info: SeriesInfo, names: list[str],
                 label_vol: np.ndarray, seg: bool = False) -> dict[str, Any]:
    """Write the label NIfTI (and optionally a SEG series in the same study) of a series.

    Args:
        names: the series' files in acquisition order (SEG frames follow them).
        label_vol: (cols, rows, n) labels in sorted (k) order.
    """
    nifti = f"labels/{info.series_uid}.nii.gz"
    write_label_nifti(export.root / nifti, label_vol, info.grid.affine_ras())
    out: dict[str, Any] = {"nifti": nifti, "seg": None, "values": {str(k): v for k, v in ph.LABELS.items()}}
    if not seg:
        return out
    headers = [dcmread(export.root / n, stop_before_pixels=True) for n in names]
    # label_vol is in sorted order (cols, rows, n); the SEG wants frames in header order.
    inv = np.argsort(info.grid.sorted_order())
    frames = np.stack([label_vol[..., inv[k]].T for k in range(len(names))])
    study_name = next(k for k, v in subject.studies.items() if v["uid"] == info.study_uid)
    number, uid, folder = export.new_series(subject, study_name)
    (seg_name,) = export.file_names(folder, 1)
    sop = make_uid(export.seed, uid, "sop", 0)
    write_seg(export.root / seg_name, headers, frames, uid, sop, number, subject.phi)
    export.canaries.add(subject.phi.series_description("GROUND TRUTH SEG"))
    export.add_entry({
        "subject": subject.index, "patient_id": subject.phi.patient_id,
        "study_instance_uid": info.study_uid, "series_instance_uid": uid, "series_number": number,
        "modality": "SEG", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4", "description": "GROUND TRUTH SEG",
        "folder": folder, "files": [seg_name], "flags": ["seg", "ground_truth"],
        "expected": {"status": "skipped", "reason_contains": "seg", "n_volumes": 0, "shape": None,
                     "timepoints": None},
        "geometry": None, "labels": None, "references_series": info.series_uid,
    })
    out["seg"] = seg_name
    return out
